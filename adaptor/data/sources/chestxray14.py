"""NIH ChestX-ray14 (``chestxray14:ROOT``): 112,120 frontal chest X-rays, image only.

Data: NIH Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC (also Kaggle
``nih-chest-xrays/data``); Wang et al., "ChestX-ray8", CVPR 2017. NIH states the data
may be used without restriction but asks users to cite the paper and acknowledge the
NIH Clinical Center; labels were text-mined from reports and are noisy.

Expected layout::

    ROOT/Data_Entry_2017.csv   (or Data_Entry_2017_v2020.csv)
    ROOT/train_val_list.txt  ROOT/test_list.txt   (one image name per line)
    ROOT/images/*.png  or  ROOT/images_001/images/*.png ...   (found by one rglob)

``Data_Entry_2017.csv`` columns: ``Image Index, Finding Labels, Follow-up #, Patient ID,
Patient Age, Patient Gender, View Position, OriginalImage[Width, Height],
OriginalImagePixelSpacing[x, y]`` (the original file has a trailing empty column;
extra columns are ignored). ``Finding Labels`` is ``|``-separated from the 14 classes
or ``No Finding``; labels are 1/0 over the 14 (lower-cased: ``atelectasis`` …
``pleural_thickening``, ``hernia``) plus ``no_finding``.

Splits: ``test_list.txt`` → test (official); ``train_val_list.txt`` → train/val by a
sha256 hash of the patient id (90/10). Record id = image name stem. Reports are
empty and ``has_reports`` is False, so ``adaptor embed`` keeps the records without
``--allow-empty-reports``.
"""

from __future__ import annotations

import csv
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

KIND = "chestxray14"
ENTRY_FILES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")
REQUIRED = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)
FINDINGS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"


class ChestXray14Source:
    """Records from an NIH ChestX-ray14 folder."""

    has_reports = False

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.spec = f"{KIND}:{self.root}"
        entries = [self.root / name for name in ENTRY_FILES if (self.root / name).is_file()]
        if not entries:
            raise SourceError(f"chestxray14 source {self.root}: missing {ENTRY_FILES[0]}")
        self.entry_file = entries[0]
        self.test = self._read_list("test_list.txt")
        self.train_val = self._read_list("train_val_list.txt")

    def _read_list(self, name: str) -> set[str]:
        path = self.root / name
        if not path.is_file():
            raise SourceError(f"chestxray14 source {self.root}: missing {name}")
        return {line.strip() for line in path.read_text(encoding="utf-8").splitlines()} - {""}

    def items(self) -> Iterator[SourceItem]:
        images = self._index_images()
        with open_csv(self.entry_file) as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise SourceError(
                    f"{self.entry_file}: missing column(s) {missing}; "
                    f"found {reader.fieldnames or []}"
                )
            for line_no, row in enumerate(reader, start=2):
                try:
                    yield self._record(row, line_no, images)
                except RecordError as err:
                    yield err

    def _index_images(self) -> dict[str, Path]:
        images: dict[str, Path] = {}
        for path in sorted(self.root.rglob("*.png")):
            images.setdefault(path.name, path)
        return images

    def _record(self, row: dict[str, str], line_no: int, images: dict[str, Path]) -> Record:
        where = f"{self.entry_file.name} line {line_no}"
        name = (row.get("Image Index") or "").strip()
        if not name:
            raise RecordError(f"{self.entry_file.name}:{line_no}", f"{where}: empty Image Index")
        rid = Path(name).stem
        patient = (row.get("Patient ID") or "").strip()
        if not patient:
            raise RecordError(rid, f"{where}: empty Patient ID", self.entry_file)
        labels = _labels(row.get("Finding Labels") or "", rid, where, self.entry_file)
        if name in self.test and name in self.train_val:
            raise RecordError(
                rid, f"{where}: listed in both test_list.txt and train_val_list.txt", self.root
            )
        if name in self.test:
            split = "test"
        elif name in self.train_val:
            split = "val" if patient_fraction(patient) >= 0.90 else "train"
        else:
            raise RecordError(
                rid, f"{where}: in neither test_list.txt nor train_val_list.txt", self.root
            )
        image = images.get(name)
        if image is None:
            raise RecordError(rid, "image file not found", self.root / "images" / name)
        return Record(id=rid, image=image, labels=labels, split=split, patient_id=patient)


def _labels(text: str, rid: str, where: str, path: Path) -> dict[str, int | None]:
    names = {part.strip() for part in text.split("|")} - {""}
    unknown = sorted(names - set(FINDINGS) - {NO_FINDING})
    if unknown:
        raise RecordError(rid, f"{where}: unknown finding label(s) {unknown}", path)
    if not names:
        raise RecordError(rid, f"{where}: empty Finding Labels", path)
    if NO_FINDING in names and len(names) > 1:
        raise RecordError(rid, f"{where}: 'No Finding' together with findings {text!r}", path)
    labels: dict[str, int | None] = {f.lower(): int(f in names) for f in FINDINGS}
    labels["no_finding"] = int(NO_FINDING in names)
    return labels


def open_chestxray14(root: Path, options: dict[str, str]) -> ChestXray14Source:
    """Open an NIH ChestX-ray14 folder (no options)."""
    reject_unknown_options(KIND, options, {})
    return ChestXray14Source(root)
