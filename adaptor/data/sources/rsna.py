"""RSNA Pneumonia Detection Challenge (2018): chest radiographs with pneumonia boxes.

Data: https://www.kaggle.com/c/rsna-pneumonia-detection-challenge, also offered
by RSNA at https://www.rsna.org/education/ai-resources-and-training/ai-image-challenge/
rsna-pneumonia-detection-challenge-2018. The images are a subset of the NIH
ChestX-ray14 set, relabelled by RSNA and the Society of Thoracic Radiology.
Licence: RSNA's terms of use for the challenge data (academic, educational and
other use with the attribution RSNA asks for); on Kaggle, the competition rules.

Layout under ROOT (as published, stage 2):

- ``stage_2_train_labels.csv`` — ``patientId,x,y,width,height,Target``: one row
  per box for a positive image, one row with empty box fields and ``Target`` 0
  for a negative. ``x``/``y`` are the box's upper-left corner in pixels.
- ``stage_2_detailed_class_info.csv`` (optional) — ``patientId,class`` with
  ``Lung Opacity``, ``No Lung Opacity / Not Normal`` or ``Normal``, repeated
  once per box row. When present it adds the labels ``lung_opacity``,
  ``not_normal`` and ``normal`` (one of them 1, the others 0).
- ``stage_2_train_images/<patientId>.dcm`` — one DICOM image per ``patientId``.

One record per ``patientId`` (it names an image, so it is both the record id
and the patient id): labels ``{"pneumonia": Target}``, mask the list of boxes
``[[x0, y0, x1, y1], ...]`` or ``None`` for a negative. The challenge has no
public labelled validation or test set, so the split comes from a hash of the
patient id (70/15/15). There are no reports: ``report`` is ``""`` and ``has_reports``
is False, so the embed stage keeps the records without ``--allow-empty-reports``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import (
    Source,
    SourceError,
    SourceItem,
    patient_fraction,
    reject_unknown_options,
)
from adaptor.data.sources.csvfile import open_csv

KIND = "rsna-pneumonia"
LABELS_CSV = "stage_2_train_labels.csv"
CLASS_CSV = "stage_2_detailed_class_info.csv"
IMAGE_DIR = "stage_2_train_images"
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_COLUMNS = ("patientId", "class")
BOX_COLUMNS = ("x", "y", "width", "height")
# detailed class -> label set to 1 (the other two are 0)
CLASS_LABELS = {
    "Lung Opacity": "lung_opacity",
    "No Lung Opacity / Not Normal": "not_normal",
    "Normal": "normal",
}

Rows = list[tuple[int, dict[str, str]]]


def open_rsna(root: Path, options: dict[str, str]) -> Source:
    """Open an RSNA Pneumonia Detection Challenge folder (``rsna-pneumonia:ROOT``)."""
    reject_unknown_options(KIND, options, {})
    return RsnaPneumoniaSource(root)


class RsnaPneumoniaSource:
    """One record per ``patientId`` of ``stage_2_train_labels.csv``, in file order."""

    has_reports = False

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.spec = f"{KIND}:{self.root}"
        self.labels_csv = self.root / LABELS_CSV
        if not self.labels_csv.is_file():
            raise SourceError(f"{KIND} source {self.root}: required file {LABELS_CSV} not found")
        _check_header(self.labels_csv, LABEL_COLUMNS)
        self.class_csv: Path | None = self.root / CLASS_CSV
        if self.class_csv.is_file():
            _check_header(self.class_csv, CLASS_COLUMNS)
        else:
            self.class_csv = None

    def items(self) -> Iterator[SourceItem]:
        classes = _group_rows(self.class_csv) if self.class_csv else {}
        for pid, rows in _group_rows(self.labels_csv).items():
            try:
                yield self._record(pid, rows, classes.get(pid))
            except RecordError as err:
                yield err

    def _record(self, pid: str, rows: Rows, class_rows: Rows | None) -> Record:
        if not pid:
            lines = ", ".join(str(n) for n, _ in rows)
            raise RecordError(f"{LABELS_CSV}:{rows[0][0]}", f"empty patientId (line {lines})")
        target, boxes = _target_and_boxes(pid, rows, self.labels_csv)
        labels: dict[str, int | None] = {"pneumonia": target}
        if class_rows is not None and self.class_csv is not None:
            labels.update(_class_labels(pid, class_rows, target, self.class_csv))
        image = self.root / IMAGE_DIR / f"{pid}.dcm"
        if not image.is_file():
            raise RecordError(pid, "image file not found", image)
        return Record(
            id=pid,
            image=image,
            report="",
            labels=labels,
            mask=boxes or None,
            split=hash_split(pid),
            patient_id=pid,
        )


def hash_split(patient_id: str) -> str:
    """train/val/test (70/15/15) from the sha256 of the patient id."""
    fraction = patient_fraction(patient_id)
    return "train" if fraction < 0.70 else "val" if fraction < 0.85 else "test"


def _check_header(path: Path, required: tuple[str, ...]) -> None:
    with open_csv(path) as fh:
        header = [c.strip() for c in next(csv.reader(fh), [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; found {header}")


def _group_rows(path: Path) -> dict[str, Rows]:
    """Rows keyed by stripped ``patientId`` in first-seen order, with their line numbers."""
    groups: dict[str, Rows] = {}
    with open_csv(path) as fh:
        reader = csv.DictReader(fh)
        reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
        for line_no, row in enumerate(reader, start=2):
            clean = {k: (v or "").strip() for k, v in row.items() if k is not None}
            groups.setdefault(clean["patientId"], []).append((line_no, clean))
    return groups


def _target_and_boxes(pid: str, rows: Rows, path: Path) -> tuple[int, list[list[float]]]:
    targets = set()
    boxes = []
    for line_no, row in rows:
        where = f"line {line_no} of {path.name}"
        if row["Target"] not in ("0", "1"):
            raise RecordError(pid, f"Target {row['Target']!r} on {where} is not 0 or 1", path)
        target = int(row["Target"])
        targets.add(target)
        fields = [row[c] for c in BOX_COLUMNS]
        if target == 0:
            if any(fields):
                raise RecordError(pid, f"negative row ({where}) has box fields {fields}", path)
            continue
        try:
            x, y, w, h = (float(v) for v in fields)
        except ValueError:
            raise RecordError(pid, f"box {fields} on {where} is not numeric", path) from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
            raise RecordError(pid, f"box {fields} on {where} is not a finite box", path)
        boxes.append([x, y, x + w, y + h])
    if len(targets) > 1:
        lines = ", ".join(str(n) for n, _ in rows)
        raise RecordError(pid, f"inconsistent Target across lines {lines} of {path.name}", path)
    return targets.pop(), boxes


def _class_labels(pid: str, rows: Rows, target: int, path: Path) -> dict[str, int | None]:
    names = {row["class"] for _, row in rows}
    lines = ", ".join(str(n) for n, _ in rows)
    if len(names) > 1:
        raise RecordError(
            pid, f"inconsistent class {sorted(names)} across lines {lines} of {path.name}", path
        )
    name = names.pop()
    if name not in CLASS_LABELS:
        raise RecordError(
            pid,
            f"unknown class {name!r} on line {lines} of {path.name} "
            f"(expected one of {list(CLASS_LABELS)})",
            path,
        )
    if (name == "Lung Opacity") != (target == 1):
        raise RecordError(pid, f"class {name!r} in {path.name} contradicts Target {target}", path)
    return {label: int(label == CLASS_LABELS[name]) for label in CLASS_LABELS.values()}
