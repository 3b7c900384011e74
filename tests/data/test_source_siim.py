"""The SIIM-ACR Pneumothorax Segmentation layout (``siim-acr:ROOT``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_files import write_radiograph
from pydicom.uid import generate_uid

from adaptor.data.image_io import load_image
from adaptor.data.masks import load_mask
from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import SourceError
from adaptor.data.sources.rsna import hash_split
from adaptor.data.sources.siim import open_siim

UID = "1.2.276.0.7230010.3.1.4.8323329"
NEG = f"{UID}.1034.1517875166.8504"
ONE = f"{UID}.14508.1517875252.443873"
TWO = f"{UID}.5597.1517875188.959090"
SAME_PATIENT = f"{UID}.5598.1517875188.959091"
NO_PID = f"{UID}.6000.1517875190.100000"

# Column-major (flat index k is row k % 32, column k // 32), relative offsets.
RLE_A = "5 3 30 2"  # pixels 5-7 (column 0, rows 5-7), then 38-39 (column 1, rows 6-7)
RLE_B = "6 4"  # pixels 6-9: column 0, rows 6-9 (overlaps RLE_A)
RLE_C = "70 4"  # pixels 70-73: column 2, rows 6-9

GOOD_ROWS = [
    (NEG, "-1"),
    (ONE, RLE_C),
    (TWO, RLE_A),
    (TWO, RLE_B),
    (SAME_PATIENT, "-1"),
    (NO_PID, "-1"),
]
PATIENTS = {NEG: "p-neg", ONE: "p-one", TWO: "p-two", SAME_PATIENT: "p-two", NO_PID: ""}


def _write(path: Path, patient_id: str) -> None:
    """A layout's DICOM: its SOP instance UID is its file name, as in SIIM."""
    write_radiograph(path, patient_id, sop_uid=path.stem)


def dicom_path(root: Path, image_id: str) -> Path:
    """Where the published layout puts an image: ``<study>/<series>/<ImageId>.dcm``."""
    study, series = generate_uid(), generate_uid()
    return root / "dicom-images-train" / study / series / f"{image_id}.dcm"


def make_tree(
    root: Path,
    rows: list[tuple[str, str]],
    patients: dict[str, str] | None = None,
    header: str = "ImageId, EncodedPixels",
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    # the published file puts a space after each comma
    lines = [header, *(f"{image_id}, {rle}" for image_id, rle in rows)]
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")
    patients = PATIENTS if patients is None else patients
    (root / "dicom-images-train").mkdir(exist_ok=True)
    for image_id in dict.fromkeys(i for i, _ in rows):
        _write(dicom_path(root, image_id), patients.get(image_id, image_id))
    return root


def items(root: Path) -> list[Record | RecordError]:
    return list(open_siim(root, {}).items())


def by_id(found: list[Record | RecordError]) -> dict[str, Record]:
    assert all(isinstance(r, Record) for r in found), found
    return {r.id: r for r in found if isinstance(r, Record)}


def test_records_labels_and_patients(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "siim", GOOD_ROWS)
    found = items(root)
    assert [r.id for r in found] == [NEG, ONE, TWO, SAME_PATIENT, NO_PID]
    recs = by_id(found)
    assert {i: r.labels["pneumothorax"] for i, r in recs.items()} == {
        NEG: 0,
        ONE: 1,
        TWO: 1,
        SAME_PATIENT: 0,
        NO_PID: 0,
    }
    assert recs[NEG].mask is None
    assert recs[TWO].patient_id == recs[SAME_PATIENT].patient_id == "p-two"
    assert recs[NO_PID].patient_id == NO_PID  # empty PatientID falls back to the ImageId
    for rec in recs.values():
        assert rec.report == ""
        assert rec.split == hash_split(rec.patient_id)
        assert rec.image.name == f"{rec.id}.dcm" and rec.image.is_file()
        assert rec.image.parent.parent.parent == root.resolve() / "dicom-images-train"


def test_masks_match_hand_decoded_rle(tmp_path: Path) -> None:
    recs = by_id(items(make_tree(tmp_path / "siim", GOOD_ROWS)))
    one = np.zeros((32, 32), dtype=np.uint8)
    one[6:10, 2] = 1
    np.testing.assert_array_equal(load_mask(recs[ONE].mask, 32, 32), one)
    union = np.zeros((32, 32), dtype=np.uint8)
    union[5:10, 0] = 1  # RLE_A rows 5-7 and RLE_B rows 6-9
    union[6:8, 1] = 1  # RLE_A
    assert isinstance(recs[TWO].mask, str)
    np.testing.assert_array_equal(load_mask(recs[TWO].mask, 32, 32), union)
    assert recs[TWO].mask == "5 5 28 2"


def test_header_without_leading_space(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "siim", GOOD_ROWS, header="ImageId,EncodedPixels")
    assert len(by_id(items(root))) == 5


def test_split_by_patient(tmp_path: Path) -> None:
    rows = [(f"{UID}.{i}.1517875000.{i}", "-1") for i in range(48)]
    patients = {image_id: f"patient-{i // 3}" for i, (image_id, _) in enumerate(rows)}
    recs = by_id(items(make_tree(tmp_path / "siim", rows, patients)))
    split_of: dict[str, set[str]] = {}
    for rec in recs.values():
        split_of.setdefault(str(rec.patient_id), set()).add(rec.split)
    assert len(split_of) == 16
    assert all(len(s) == 1 for s in split_of.values())
    assert {s for ss in split_of.values() for s in ss} == {"train", "val", "test"}


def test_load_image_reads_a_record(tmp_path: Path) -> None:
    rec = by_id(items(make_tree(tmp_path / "siim", GOOD_ROWS)))[TWO]
    img = load_image(rec.image)
    assert img.shape == (32, 32) and img.dtype == np.float32
    assert 0.0 <= img.min() < img.max() <= 1.0


@pytest.mark.parametrize(
    ("rles", "reason"),
    [
        (["5 3 30"], "odd number of values"),
        (["5 x"], "not an integer"),
        (["1000 100"], "past the end"),
        (["5 -3"], "negative run length"),
        (["5 0"], "marks no pixel"),
        ([RLE_A, "-1"], "both -1 and regions"),
        ([RLE_A, ""], "empty EncodedPixels"),
    ],
)
def test_bad_rle_is_a_record_error(tmp_path: Path, rles: list[str], reason: str) -> None:
    found = items(make_tree(tmp_path / "siim", [(NEG, "-1"), *((ONE, r) for r in rles)]))
    ok, err = found
    assert isinstance(ok, Record) and ok.id == NEG
    assert isinstance(err, RecordError) and err.record_id == ONE
    assert reason in err.reason and "train-rle.csv" in err.reason


def test_missing_duplicate_and_unreadable_dicoms(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "siim", GOOD_ROWS)
    next((root / "dicom-images-train").rglob(f"{ONE}.dcm")).unlink()
    _write(dicom_path(root, TWO), "p-two")
    bad = next((root / "dicom-images-train").rglob(f"{NEG}.dcm"))
    bad.write_bytes(b"not a dicom file")
    found = {r.record_id if isinstance(r, RecordError) else r.id: r for r in items(root)}
    missing, duplicate, unreadable = found[ONE], found[TWO], found[NEG]
    assert isinstance(missing, RecordError) and missing.reason == "image file not found"
    assert isinstance(duplicate, RecordError) and "several DICOM files" in duplicate.reason
    assert isinstance(unreadable, RecordError) and "cannot read DICOM header" in unreadable.reason
    assert unreadable.path == str(bad)
    assert isinstance(found[SAME_PATIENT], Record)


def test_missing_csv_and_folder(tmp_path: Path) -> None:
    root = tmp_path / "siim"
    root.mkdir()
    with pytest.raises(SourceError, match="train-rle.csv"):
        open_siim(root, {})
    (root / "train-rle.csv").write_text("ImageId, EncodedPixels\n")
    with pytest.raises(SourceError, match="dicom-images-train"):
        open_siim(root, {})


def test_wrong_columns(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "siim", GOOD_ROWS, header="ImageId, Mask")
    with pytest.raises(SourceError, match=r"missing column\(s\) \['EncodedPixels'\]"):
        open_siim(root, {})


def test_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="siim-acr source does not take"):
        open_siim(tmp_path, {"size": "1024"})
