"""CheXpert (``chexpert:ROOT``): Stanford chest radiographs with 14 report-derived labels.

Data: Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty
Labels and Expert Comparison", AAAI 2019; https://stanfordmlgroup.github.io/competitions/chexpert/
(also on the Stanford AIMI shared datasets portal). Use is governed by the
Stanford University School of Medicine CheXpert Dataset Research Use Agreement
(non-commercial research use; no redistribution).

Layout (``CheXpert-v1.0-small`` or ``CheXpert-v1.0``): ROOT holds ``train.csv`` and
``valid.csv`` with the columns ``Path, Sex, Age, Frontal/Lateral, AP/PA`` and the 14
observations (``No Finding`` … ``Support Devices``) valued ``1.0``, ``0.0``, ``-1.0``
(uncertain) or empty (not mentioned). ``Path`` looks like
``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``; it is resolved
against, in order, ROOT's parent (ROOT is the ``CheXpert-v1.0-small`` folder itself),
ROOT, and ROOT with the first path component dropped (the folder was renamed); the
first candidate that exists wins.

Records: id = ``Path`` without its extension (slashes kept); patient_id from the
path (``patient00001``); report = "" (image-only: ``has_reports`` is False, so the embed stage
keeps the records without ``--allow-empty-reports``). Splits: the official ``valid.csv``
(200 studies, radiologist-labelled) is ``test``; ``train.csv`` patients go to
``train``/``val`` 90/10 by a sha256 hash of the patient id, so no patient crosses splits.

Options: ``uncertain=keep|ones|zeros|ignore`` (-1 kept, U-ones, U-zeros, or
missing; default keep) and ``views=frontal|lateral|all`` (default frontal).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from adaptor.data.records import Record, RecordError, parse_label_value
from adaptor.data.sources.base import (
    SourceError,
    SourceItem,
    patient_fraction,
    reject_unknown_options,
)
from adaptor.data.sources.csvfile import open_csv

KIND = "chexpert"

CHEXPERT_LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)

# what an uncertain (-1) label becomes under each policy
UNCERTAIN_POLICIES: dict[str, int | None] = {"keep": -1, "ones": 1, "zeros": 0, "ignore": None}
VIEWS = ("frontal", "lateral", "all")
VAL_FRACTION = 0.10

OPTIONS = {
    "uncertain": "keep|ones|zeros|ignore: what an uncertain (-1) label becomes (default keep)",
    "views": "frontal|lateral|all: which views to keep (default frontal)",
}

_PATIENT_RE = re.compile(r"(?:^|/)(patient\d+)(?:/|$)")


def choose_option(
    kind: str, options: Mapping[str, str], name: str, allowed: tuple[str, ...]
) -> str:
    """The value of option ``name`` (first of ``allowed`` when absent); SourceError if not allowed."""
    value = options.get(name, allowed[0]).strip().lower()
    if value not in allowed:
        raise SourceError(f"{kind} option {name}={value!r} is not one of {list(allowed)}")
    return value


def apply_uncertain(value: int | None, policy: str) -> int | None:
    """Map an uncertain (-1) label by ``policy``; other values pass through."""
    return UNCERTAIN_POLICIES[policy] if value == -1 else value


def hash_split(patient_id: str, val_fraction: float) -> str:
    """``val`` for a ``val_fraction`` share of patients (by sha256 of the id), else ``train``."""
    return "val" if patient_fraction(patient_id) < val_fraction else "train"


class CheXpertSource:
    """Records from CheXpert's ``train.csv`` (train/val) and ``valid.csv`` (test)."""

    has_reports = False

    def __init__(self, root: Path, *, uncertain: str = "keep", views: str = "frontal"):
        self.root = Path(root).resolve()
        self.uncertain = uncertain
        self.views = views
        self.spec = f"{KIND}:{self.root}?uncertain={uncertain}&views={views}"
        if not self.root.is_dir():
            raise SourceError(f"chexpert root is not a folder: {self.root}")
        for name in ("train.csv", "valid.csv"):  # fail now on a missing file or column
            rows = self._rows(self.root / name)
            next(rows, None)
            rows.close()

    def items(self) -> Iterator[SourceItem]:
        seen: set[str] = set()
        for name in ("train.csv", "valid.csv"):
            csv_path = self.root / name
            for line_no, row in self._rows(csv_path):
                try:
                    record = self._record(row, csv_path, line_no)
                except RecordError as err:
                    yield err
                    continue
                if record is None:
                    continue
                if record.id in seen:
                    yield RecordError(record.id, f"duplicate Path on line {line_no}", csv_path)
                    continue
                seen.add(record.id)
                yield record

    @staticmethod
    def _rows(csv_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
        """(line number, row) after checking the file exists and has the published columns."""
        if not csv_path.is_file():
            raise SourceError(f"{KIND}: required file {csv_path} not found")
        with open_csv(csv_path) as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise SourceError(f"{csv_path}: missing column(s) {missing}")
            yield from enumerate(reader, start=2)

    def _record(self, row: Mapping[str, str], csv_path: Path, line_no: int) -> Record | None:
        where = f"{csv_path.name}:{line_no}"
        rel = (row.get("Path") or "").strip()
        if not rel:
            raise RecordError(where, f"empty Path on line {line_no}", csv_path)
        rid = str(PurePosixPath(rel).with_suffix(""))
        view = (row.get("Frontal/Lateral") or "").strip().lower()
        if view not in ("frontal", "lateral"):
            raise RecordError(
                rid, f"line {line_no}: unknown Frontal/Lateral value {view!r}", csv_path
            )
        if self.views != "all" and view != self.views:
            return None
        found = _PATIENT_RE.search(rel)
        if found is None:
            raise RecordError(rid, f"line {line_no}: no patientNNNNN folder in Path", csv_path)
        patient = found.group(1)
        labels: dict[str, int | None] = {}
        for label in CHEXPERT_LABELS:
            try:
                value = parse_label_value(row.get(label), record_id=rid, label=label)
            except RecordError as err:
                raise RecordError(rid, f"line {line_no}: {err.reason}", csv_path) from err
            labels[label] = apply_uncertain(value, self.uncertain)
        image = self._resolve(rel)
        if not image.is_file():
            raise RecordError(rid, "image file not found", image)
        split = "test" if csv_path.name == "valid.csv" else hash_split(patient, VAL_FRACTION)
        return Record(
            id=rid, image=image, report="", labels=labels, split=split, patient_id=patient
        )

    def _resolve(self, rel: str) -> Path:
        """The first existing of ROOT.parent/rel, ROOT/rel, ROOT/rel-minus-first-part."""
        parts = PurePosixPath(rel).parts
        candidates = [self.root.parent / rel, self.root / rel]
        if len(parts) > 1:
            candidates.append(self.root.joinpath(*parts[1:]))
        for path in candidates:
            if path.is_file():
                return path
        return candidates[0] if parts[0] == self.root.name else candidates[1]


def open_chexpert(root: Path, options: dict[str, str]) -> CheXpertSource:
    """Factory for ``chexpert:ROOT?uncertain=...&views=...``."""
    reject_unknown_options(KIND, options, OPTIONS)
    return CheXpertSource(
        root,
        uncertain=choose_option(KIND, options, "uncertain", tuple(UNCERTAIN_POLICIES)),
        views=choose_option(KIND, options, "views", VIEWS),
    )
