"""SIIM-ACR Pneumothorax Segmentation (2019): chest radiographs with pneumothorax masks.

Data: https://www.kaggle.com/c/siim-acr-pneumothorax-segmentation (stage 1
training data, mirrored on Kaggle as ``jesperdramsch/siim-acr-pneumothorax-segmentation-data``).
The images come from the NIH ChestX-ray14 set; masks were drawn by SIIM, ACR and
the Society of Thoracic Radiology. Licence: the Kaggle competition rules and
SIIM's data-use terms (non-commercial research); check them before use.

Layout under ROOT (as published):

- ``train-rle.csv`` — ``ImageId, EncodedPixels`` (the published header has a
  leading space in `` EncodedPixels``; both spellings are accepted): one row per
  pneumothorax region, several rows for an image with several regions, and a
  single row with ``-1`` for an image without pneumothorax. The run-length
  code is SIIM's relative format over the column-major flattened image.
- ``dicom-images-train/<StudyInstanceUID>/<SeriesInstanceUID>/<ImageId>.dcm``
  — found by file name anywhere below ``dicom-images-train``.

One record per ``ImageId`` (the record id): labels ``{"pneumothorax": 0 | 1}``,
mask the union of the image's regions as one relative RLE string (decoded with
the size in the DICOM header and re-encoded) or ``None`` for a negative, patient
id the DICOM ``PatientID`` (the ``ImageId`` when empty), and a split from a
hash of the patient id (70/15/15; the stage 1 training set has no official
validation split). There are no reports: ``report`` is ``""`` and ``has_reports`` is
False, so the embed stage keeps the records without ``--allow-empty-reports``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom

from adaptor.data.masks import MaskError, rle_decode, rle_encode
from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import Source, SourceError, SourceItem, reject_unknown_options
from adaptor.data.sources.csvfile import open_csv
from adaptor.data.sources.rsna import hash_split

KIND = "siim-acr"
RLE_CSV = "train-rle.csv"
IMAGE_DIR = "dicom-images-train"
COLUMNS = ("ImageId", "EncodedPixels")
NO_REGION = "-1"

Rows = list[tuple[int, str]]


def open_siim(root: Path, options: dict[str, str]) -> Source:
    """Open a SIIM-ACR Pneumothorax Segmentation folder (``siim-acr:ROOT``)."""
    reject_unknown_options(KIND, options, {})
    return SiimAcrSource(root)


class SiimAcrSource:
    """One record per ``ImageId`` of ``train-rle.csv``, in file order."""

    has_reports = False

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.spec = f"{KIND}:{self.root}"
        self.rle_csv = self.root / RLE_CSV
        self.image_dir = self.root / IMAGE_DIR
        if not self.rle_csv.is_file():
            raise SourceError(f"{KIND} source {self.root}: required file {RLE_CSV} not found")
        with open_csv(self.rle_csv) as fh:
            header = [c.strip() for c in next(csv.reader(fh), [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise SourceError(f"{self.rle_csv}: missing column(s) {missing}; found {header}")
        if not self.image_dir.is_dir():
            raise SourceError(f"{KIND} source {self.root}: image folder {IMAGE_DIR}/ not found")

    def items(self) -> Iterator[SourceItem]:
        index: dict[str, list[Path]] = {}
        for path in sorted(self.image_dir.rglob("*.dcm")):
            index.setdefault(path.stem, []).append(path)
        for image_id, rows in self._rows().items():
            try:
                yield self._record(image_id, rows, index.get(image_id, []))
            except RecordError as err:
                yield err

    def _rows(self) -> dict[str, Rows]:
        """``EncodedPixels`` values keyed by ``ImageId`` in first-seen order, with line numbers."""
        groups: dict[str, Rows] = {}
        with open_csv(self.rle_csv) as fh:
            reader = csv.DictReader(fh)
            reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
            for line_no, row in enumerate(reader, start=2):
                image_id = (row.get("ImageId") or "").strip()
                groups.setdefault(image_id, []).append(
                    (line_no, (row.get("EncodedPixels") or "").strip())
                )
        return groups

    def _record(self, image_id: str, rows: Rows, paths: list[Path]) -> Record:
        lines = ", ".join(str(n) for n, _ in rows)
        if not image_id:
            raise RecordError(f"{RLE_CSV}:{rows[0][0]}", f"empty ImageId (line {lines})")
        if not paths:
            raise RecordError(image_id, "image file not found", self.image_dir / f"{image_id}.dcm")
        if len(paths) > 1:
            names = ", ".join(str(p.relative_to(self.root)) for p in paths)
            raise RecordError(image_id, f"several DICOM files for one ImageId: {names}", paths[0])
        image = paths[0]
        try:
            header = pydicom.dcmread(image, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for malformed files
            raise RecordError(image_id, f"cannot read DICOM header ({exc})", image) from exc
        patient_id = str(header.get("PatientID") or "").strip() or image_id
        mask = self._mask(image_id, rows, header, image)
        return Record(
            id=image_id,
            image=image,
            report="",
            labels={"pneumothorax": int(mask is not None)},
            mask=mask,
            split=hash_split(patient_id),
            patient_id=patient_id,
        )

    def _mask(self, image_id: str, rows: Rows, header: pydicom.Dataset, image: Path) -> str | None:
        """Union of the image's regions as one relative RLE string; ``None`` for a negative."""
        regions = [(n, rle) for n, rle in rows if rle != NO_REGION]
        if not regions:
            return None
        if len(regions) < len(rows):
            lines = ", ".join(str(n) for n, _ in rows)
            raise RecordError(
                image_id,
                f"both {NO_REGION} and regions on lines {lines} of {RLE_CSV}",
                self.rle_csv,
            )
        height, width = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
        if not height or not width:
            raise RecordError(image_id, "DICOM has no Rows/Columns to decode the mask with", image)
        union = np.zeros((height, width), dtype=np.uint8)
        for line_no, rle in regions:
            where = f"line {line_no} of {RLE_CSV}"
            if not rle:
                raise RecordError(image_id, f"empty EncodedPixels on {where}", self.rle_csv)
            try:
                region = rle_decode(rle, height, width)
            except MaskError as exc:
                raise RecordError(
                    image_id, f"malformed RLE on {where}: {exc}", self.rle_csv
                ) from None
            if not region.any():
                raise RecordError(image_id, f"RLE on {where} marks no pixel", self.rle_csv)
            union |= region
        return rle_encode(union)
