"""MIMIC-CXR-JPG images with MIMIC-CXR free-text reports (``mimic-cxr:ROOT``).

Data: Johnson et al., MIMIC-CXR-JPG v2.0.0 (https://physionet.org/content/mimic-cxr-jpg/2.0.0/)
and MIMIC-CXR v2.0.0 reports (https://physionet.org/content/mimic-cxr/2.0.0/),
Beth Israel Deaconess Medical Center 2011–2016. Credentialed access only: the
PhysioNet Credentialed Health Data License 1.5.0 and its Data Use Agreement
(no re-identification, no sharing, no sending the text to third-party services).

Layout: ROOT holds ``mimic-cxr-2.0.0-metadata.csv`` (``dicom_id, subject_id,
study_id, PerformedProcedureStepDescription, ViewPosition, Rows, Columns,
StudyDate, …``), ``mimic-cxr-2.0.0-split.csv`` (``dicom_id, study_id,
subject_id, split`` with train/validate/test) and ``mimic-cxr-2.0.0-chexpert.csv``
(``subject_id, study_id`` and the 14 CheXpert observations valued 1.0/0.0/-1.0/empty);
each may also be the published ``.csv.gz``. Images are
``ROOT/files/p10/p10000032/s50414267/<dicom_id>.jpg`` and reports
``files/p10/p10000032/s50414267.txt`` under ROOT, or under ``reports=PATH`` (the folder
that holds ``files/``, or that ``files`` folder itself).

Reports: the FINDINGS and IMPRESSION sections are kept (``sections=findings,impression``;
also ``findings``, ``impression`` or ``full`` for the whole text), in report order,
whitespace collapsed. A section header is a line starting with a known name
(FINDINGS, IMPRESSION, INDICATION, COMPARISON, TECHNIQUE, EXAMINATION, HISTORY, WET READ,
…, any case) or any ALL-CAPS name, followed by a colon; its body runs to the next
header, across lines. CONCLUSION counts as impression and FINDINGS AND IMPRESSION as
both. A report with none of the wanted sections yields a RecordError (use
``sections=full`` to keep such reports).

Records: id = dicom_id, patient_id = subject_id, split from the official split file
(validate → val). Studies absent from the CheXpert file get every label missing.
Options ``views=frontal|all|lateral`` (frontal = ViewPosition PA/AP; lateral =
LATERAL/LL/XTABLE LATERAL; default frontal) and ``uncertain=keep|ones|zeros|ignore``
as for :mod:`.chexpert`.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

from adaptor.data.records import Record, RecordError, parse_label_value, validate_split
from adaptor.data.sources.base import SourceError, SourceItem, reject_unknown_options
from adaptor.data.sources.chexpert import (
    CHEXPERT_LABELS,
    UNCERTAIN_POLICIES,
    apply_uncertain,
    choose_option,
)
from adaptor.data.sources.csvfile import open_csv

KIND = "mimic-cxr"

METADATA = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
LABELS = "mimic-cxr-2.0.0-chexpert.csv"
REQUIRED_COLUMNS = {
    METADATA: ("dicom_id", "subject_id", "study_id", "ViewPosition"),
    SPLIT: ("dicom_id", "study_id", "subject_id", "split"),
    LABELS: ("subject_id", "study_id", *CHEXPERT_LABELS),
}

VIEW_POSITIONS = {
    "frontal": frozenset({"PA", "AP"}),
    "lateral": frozenset({"LATERAL", "LL", "XTABLE LATERAL"}),
}
SECTION_CHOICES = ("findings", "impression")

OPTIONS = {
    "sections": "findings,impression (default) | findings | impression | full",
    "views": "frontal|all|lateral: which ViewPositions to keep (default frontal = PA/AP)",
    "uncertain": "keep|ones|zeros|ignore: what an uncertain (-1) label becomes (default keep)",
    "reports": "folder holding the report files/ tree (default ROOT)",
}

# known section names (any case) and the wanted sections each one counts as
_SECTION_KEYS: dict[str, frozenset[str]] = {
    **dict.fromkeys(("findings", "finding"), frozenset({"findings"})),
    **dict.fromkeys(
        ("impression", "impressions", "conclusion", "conclusions"), frozenset({"impression"})
    ),
    **dict.fromkeys(
        ("findings and impression", "impression and findings", "findings/impression"),
        frozenset({"findings", "impression"}),
    ),
    **dict.fromkeys(
        (
            "indication",
            "indications",
            "clinical indication",
            "history",
            "clinical history",
            "clinical information",
            "reason for exam",
            "reason for examination",
            "comparison",
            "comparisons",
            "technique",
            "examination",
            "exam",
            "type of examination",
            "procedure",
            "wet read",
            "notification",
            "recommendation",
            "recommendations",
            "addendum",
            "final report",
        ),
        frozenset(),
    ),
}
_HEADER_RE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z /&()-]{0,40}?)[ \t]*:", re.MULTILINE)


def parse_sections(value: str) -> frozenset[str] | None:
    """The wanted section names, or None for the full report; SourceError if invalid."""
    names = {part.strip().lower() for part in value.split(",") if part.strip()}
    if names == {"full"}:
        return None
    if not names or not names <= set(SECTION_CHOICES):
        raise SourceError(
            f"{KIND} option sections={value!r}: expected 'full' or a comma list of "
            f"{list(SECTION_CHOICES)}"
        )
    return frozenset(names)


def extract_sections(text: str, wanted: frozenset[str] | None) -> str:
    """The bodies of the wanted sections in report order, whitespace collapsed ('' if none)."""
    if wanted is None:
        return " ".join(text.split())
    headers = []
    for match in _HEADER_RE.finditer(text):
        name = " ".join(match.group(1).split()).lower()
        if name in _SECTION_KEYS:
            headers.append((match, _SECTION_KEYS[name]))
        elif match.group(1).isupper():
            headers.append((match, frozenset()))
    bodies = []
    for i, (match, keys) in enumerate(headers):
        if keys & wanted:
            end = headers[i + 1][0].start() if i + 1 < len(headers) else len(text)
            body = " ".join(text[match.end() : end].split())
            if body:
                bodies.append(body)
    return " ".join(bodies)


def _open_table(root: Path, name: str) -> tuple[Path, IO[str]]:
    """Open ``name`` or ``name.gz`` under root as text; SourceError naming the file if absent."""
    plain, packed = root / name, root / f"{name}.gz"
    if plain.is_file():
        return plain, open_csv(plain)
    if packed.is_file():
        return packed, open_csv(packed)
    raise SourceError(f"{KIND}: required file {plain} (or {packed.name}) not found")


def _rows(root: Path, name: str) -> Iterator[tuple[Path, int, dict[str, str]]]:
    """(file, line number, row) for each row, after checking the published columns."""
    path, fh = _open_table(root, name)
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS[name] if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(f"{path}: missing column(s) {missing}")
        for line_no, row in enumerate(reader, start=2):
            yield path, line_no, row


class MimicCxrSource:
    """MIMIC-CXR-JPG images paired with their study's report sections and CheXpert labels."""

    def __init__(
        self,
        root: Path,
        *,
        reports: Path | None = None,
        sections: frozenset[str] | None = frozenset(SECTION_CHOICES),
        views: str = "frontal",
        uncertain: str = "keep",
    ):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise SourceError(f"{KIND} root is not a folder: {self.root}")
        reports_root = self.root if reports is None else Path(reports).expanduser().resolve()
        if not reports_root.is_dir():
            raise SourceError(f"{KIND} reports folder not found: {reports_root}")
        self.reports_root = reports_root if reports_root.name == "files" else reports_root / "files"
        self.sections = sections
        self.views = views
        self.uncertain = uncertain
        wanted = "full" if sections is None else ",".join(sorted(sections))
        self.spec = (
            f"{KIND}:{self.root}?sections={wanted}&views={views}&uncertain={uncertain}"
            f"&reports={reports_root}"
        )
        for name in REQUIRED_COLUMNS:  # fail now on a missing file or column
            rows = _rows(self.root, name)
            next(rows, None)
            rows.close()

    def items(self) -> Iterator[SourceItem]:
        splits = {row["dicom_id"].strip(): row["split"] for _, _, row in _rows(self.root, SPLIT)}
        labels = {
            row["study_id"].strip(): (path, line_no, row)
            for path, line_no, row in _rows(self.root, LABELS)
        }
        seen: set[str] = set()
        last_report: tuple[Path, str | RecordError] | None = None
        for path, line_no, row in _rows(self.root, METADATA):
            dicom = (row.get("dicom_id") or "").strip()
            rid = dicom or f"{path.name}:{line_no}"
            view = (row.get("ViewPosition") or "").strip().upper()
            if self.views != "all" and view not in VIEW_POSITIONS[self.views]:
                continue
            subject = (row.get("subject_id") or "").strip()
            study = (row.get("study_id") or "").strip()
            if not (dicom and subject.isdigit() and study.isdigit()):
                yield RecordError(
                    rid, f"line {line_no}: empty dicom_id or non-numeric subject/study id", path
                )
                continue
            if dicom in seen:
                yield RecordError(rid, f"duplicate dicom_id on line {line_no}", path)
                continue
            seen.add(dicom)
            study_dir = Path(f"p{subject}"[:3], f"p{subject}", f"s{study}")
            report_path = self.reports_root / study_dir.with_suffix(".txt")
            if last_report is None or last_report[0] != report_path:
                last_report = (report_path, self._report(rid, report_path))
            try:
                yield self._record(
                    dicom, subject, study_dir, last_report[1], splits, labels.get(study)
                )
            except RecordError as err:
                yield err

    def _record(
        self,
        dicom: str,
        subject: str,
        study_dir: Path,
        report: str | RecordError,
        splits: Mapping[str, str],
        label_row: tuple[Path, int, dict[str, str]] | None,
    ) -> Record:
        image = self.root / "files" / study_dir / f"{dicom}.jpg"
        if not image.is_file():
            raise RecordError(dicom, "image file not found", image)
        if isinstance(report, RecordError):
            raise RecordError(dicom, report.reason, report.path)
        if dicom not in splits:
            raise RecordError(dicom, f"dicom_id not listed in {SPLIT}", self.root / SPLIT)
        return Record(
            id=dicom,
            image=image,
            report=report,
            labels=self._labels(dicom, label_row),
            split=validate_split(splits[dicom], record_id=dicom),
            patient_id=subject,
        )

    def _report(self, rid: str, path: Path) -> str | RecordError:
        """The wanted report text, or a RecordError (read once per study)."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return RecordError(rid, "report file not found", path)
        except (OSError, UnicodeDecodeError) as err:
            return RecordError(rid, f"cannot read report: {err}", path)
        report = extract_sections(text, self.sections)
        if not report:
            what = (
                "report is empty"
                if self.sections is None
                else (
                    f"report has no {'/'.join(s.upper() for s in sorted(self.sections))} section "
                    "(use sections=full to keep it)"
                )
            )
            return RecordError(rid, what, path)
        return report

    def _labels(
        self, dicom: str, label_row: tuple[Path, int, dict[str, str]] | None
    ) -> dict[str, int | None]:
        if label_row is None:
            return dict.fromkeys(CHEXPERT_LABELS)
        path, line_no, row = label_row
        labels: dict[str, int | None] = {}
        for label in CHEXPERT_LABELS:
            try:
                value = parse_label_value(row.get(label), record_id=dicom, label=label)
            except RecordError as err:
                raise RecordError(dicom, f"line {line_no}: {err.reason}", path) from err
            labels[label] = apply_uncertain(value, self.uncertain)
        return labels


def open_mimic_cxr(root: Path, options: dict[str, str]) -> MimicCxrSource:
    """Factory for ``mimic-cxr:ROOT?sections=...&views=...&uncertain=...&reports=PATH``."""
    reject_unknown_options(KIND, options, OPTIONS)
    reports = options.get("reports", "").strip()
    return MimicCxrSource(
        root,
        reports=Path(reports) if reports else None,
        sections=parse_sections(options.get("sections", "findings,impression")),
        views=choose_option(KIND, options, "views", ("frontal", "all", "lateral")),
        uncertain=choose_option(KIND, options, "uncertain", tuple(UNCERTAIN_POLICIES)),
    )
