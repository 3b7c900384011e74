"""IU X-ray / Open-i (``iu-xray:ROOT``): Indiana University chest X-rays with reports.

Data: Demner-Fushman et al., "Preparing a collection of radiology examinations for
distribution and retrieval", JAMIA 2016; distributed by the NLM Open-i service
(https://openi.nlm.nih.gov/faq#collection) under CC BY-NC-ND 4.0. This layout reads
the CSV/PNG form published on Kaggle as ``raddar/chest-xrays-indiana-university``;
the original Open-i XML reports are not read.

Expected layout::

    ROOT/indiana_reports.csv      uid, MeSH, Problems, image, indication, comparison,
                                  findings, impression
    ROOT/indiana_projections.csv  uid, filename, projection (Frontal / Lateral)
    ROOT/images/images_normalized/<filename>   (or option images=PATH)

One record per projection row. Report = the chosen sections, joined by a space
(option ``sections``: ``findings,impression`` (default), ``findings`` or
``impression``); a record whose chosen sections are all empty is a RecordError
("empty report"). Views: option ``views`` = ``frontal`` (default), ``lateral`` or
``all``. Labels: the ``Problems`` terms (``;``-separated), lower-cased with spaces
as ``_``, ``normal`` → ``no_finding``; 1/0 over every term found in the reports file.
Record id = file name without ``.png``/``.dcm`` suffixes; patient id = uid (one
study per patient); split by a sha256 hash of the uid, 70/15/15.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import (
    SourceError,
    SourceItem,
    patient_fraction,
    reject_unknown_options,
)
from adaptor.data.sources.csvfile import open_csv

KIND = "iu-xray"
REPORTS = "indiana_reports.csv"
PROJECTIONS = "indiana_projections.csv"
REPORT_COLUMNS = (
    "uid",
    "MeSH",
    "Problems",
    "image",
    "indication",
    "comparison",
    "findings",
    "impression",
)
PROJECTION_COLUMNS = ("uid", "filename", "projection")
SECTIONS = {
    "findings,impression": ("findings", "impression"),
    "findings": ("findings",),
    "impression": ("impression",),
}
VIEWS = {"frontal": {"frontal"}, "lateral": {"lateral"}, "all": {"frontal", "lateral"}}
OPTIONS = {
    "images": "image folder, relative to ROOT or absolute (default images/images_normalized)",
    "sections": "findings,impression | findings | impression",
    "views": "frontal | lateral | all",
}


class IUXraySource:
    """Records from the Kaggle CSV form of the IU X-ray collection."""

    def __init__(self, root: Path, *, images: Path, sections: str, views: str):
        self.root = Path(root).resolve()
        self.images = (self.root / images).resolve()
        if sections not in SECTIONS:
            raise SourceError(f"iu-xray option sections={sections!r}; expected {list(SECTIONS)}")
        if views not in VIEWS:
            raise SourceError(f"iu-xray option views={views!r}; expected {list(VIEWS)}")
        self.sections = SECTIONS[sections]
        self.views = VIEWS[views]
        self.spec = f"{KIND}:{self.root}?sections={sections}&views={views}"
        for name in (REPORTS, PROJECTIONS):
            if not (self.root / name).is_file():
                raise SourceError(f"iu-xray source {self.root}: missing {name}")

    def items(self) -> Iterator[SourceItem]:
        reports = [row for _, row in _read_csv(self.root / REPORTS, REPORT_COLUMNS)]
        by_uid = {(row.get("uid") or "").strip(): row for row in reports}
        vocab = sorted({t for row in reports for t in _terms(row.get("Problems") or "")})
        seen: set[str] = set()
        for line_no, row in _read_csv(self.root / PROJECTIONS, PROJECTION_COLUMNS):
            try:
                record = self._record(row, line_no, by_uid, vocab, seen)
            except RecordError as err:
                yield err
                continue
            if record is not None:
                yield record

    def _record(
        self,
        row: dict[str, str],
        line_no: int,
        by_uid: dict[str, dict[str, str]],
        vocab: list[str],
        seen: set[str],
    ) -> Record | None:
        where = f"{PROJECTIONS} line {line_no}"
        path = self.root / PROJECTIONS
        filename = (row.get("filename") or "").strip()
        if not filename:
            raise RecordError(f"{PROJECTIONS}:{line_no}", f"{where}: empty filename", path)
        rid = re.sub(r"(\.dcm)?\.png$", "", filename, flags=re.IGNORECASE)
        view = (row.get("projection") or "").strip().lower()
        if view not in VIEWS["all"]:
            raise RecordError(rid, f"{where}: unknown projection {row.get('projection')!r}", path)
        if view not in self.views:
            return None
        uid = (row.get("uid") or "").strip()
        report_row = by_uid.get(uid)
        if report_row is None:
            raise RecordError(rid, f"{where}: uid {uid!r} has no row in {REPORTS}", path)
        if rid in seen:
            raise RecordError(rid, f"{where}: duplicate record id", path)
        seen.add(rid)
        texts = [(report_row.get(s) or "").strip() for s in self.sections]
        report = " ".join(t for t in texts if t)
        if not report:
            raise RecordError(
                rid, f"empty report ({' and '.join(self.sections)} empty for uid {uid})", path
            )
        terms = set(_terms(report_row.get("Problems") or ""))
        image = self.images / filename
        if not image.is_file():
            raise RecordError(rid, "image file not found", image)
        fraction = patient_fraction(uid)
        split = "train" if fraction < 0.70 else "val" if fraction < 0.85 else "test"
        return Record(
            id=rid,
            image=image,
            report=report,
            labels={t: int(t in terms) for t in vocab},
            split=split,
            patient_id=uid,
        )


def _read_csv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with open_csv(path) as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(
                f"{path}: missing column(s) {missing}; found {reader.fieldnames or []}"
            )
        yield from enumerate(reader, start=2)


def _terms(problems: str) -> list[str]:
    """Problems terms as label names: lower-cased, spaces as ``_``, normal → no_finding."""
    out = []
    for part in problems.split(";"):
        term = "_".join(part.lower().split())
        if term:
            out.append("no_finding" if term == "normal" else term)
    return out


def open_iu_xray(root: Path, options: dict[str, str]) -> IUXraySource:
    """Open the Kaggle CSV form of IU X-ray (options: images, sections, views)."""
    reject_unknown_options(KIND, options, OPTIONS)
    return IUXraySource(
        root,
        images=Path(options.get("images") or "images/images_normalized").expanduser(),
        sections=options.get("sections", "findings,impression").replace(" ", "").lower(),
        views=options.get("views", "frontal").lower(),
    )
