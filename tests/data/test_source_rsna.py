"""The RSNA Pneumonia Detection Challenge layout (``rsna-pneumonia:ROOT``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_files import write_radiograph

from adaptor.data.image_io import load_image
from adaptor.data.masks import load_mask
from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import SourceError
from adaptor.data.sources.rsna import hash_split, open_rsna

NEG = "0004cfab-14fd-4e49-80ba-63a80b6bddd6"
TWO_BOXES = "00436515-870c-4b36-a041-de91049b9ab4"
ONE_BOX = "00704310-78a8-4b38-8475-49f4573b2dbb"
NOT_NORMAL = "00313ee0-9eaa-42f4-b0ab-c148ed3241cd"

LABELS_HEADER = "patientId,x,y,width,height,Target"
GOOD_LABELS = [
    f"{NEG},,,,,0",
    f"{TWO_BOXES},2.0,3.0,4.0,5.0,1",
    f"{TWO_BOXES},20.0,10.0,6.0,12.0,1",
    f"{ONE_BOX},10.5,0.0,3.0,2.0,1",
    f"{NOT_NORMAL},,,,,0",
]
CLASS_HEADER = "patientId,class"
GOOD_CLASSES = [
    f"{NEG},Normal",
    f"{TWO_BOXES},Lung Opacity",
    f"{TWO_BOXES},Lung Opacity",
    f"{ONE_BOX},Lung Opacity",
    f"{NOT_NORMAL},No Lung Opacity / Not Normal",
]


def make_tree(
    root: Path, labels: list[str], classes: list[str] | None = None, images: bool = True
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "stage_2_train_labels.csv").write_text("\n".join([LABELS_HEADER, *labels]) + "\n")
    if classes is not None:
        (root / "stage_2_detailed_class_info.csv").write_text(
            "\n".join([CLASS_HEADER, *classes]) + "\n"
        )
    if images:
        for pid in dict.fromkeys(line.split(",")[0] for line in labels):
            write_radiograph(root / "stage_2_train_images" / f"{pid}.dcm", patient_id=pid)
    return root


def items(root: Path, **options: str) -> list[Record | RecordError]:
    return list(open_rsna(root, dict(options)).items())


def by_id(found: list[Record | RecordError]) -> dict[str, Record]:
    assert all(isinstance(r, Record) for r in found), found
    return {r.id: r for r in found if isinstance(r, Record)}


def test_records_labels_and_boxes(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rsna", GOOD_LABELS)
    found = items(root)
    assert [r.id for r in found] == [NEG, TWO_BOXES, ONE_BOX, NOT_NORMAL]
    recs = by_id(found)
    assert recs[NEG].labels == {"pneumonia": 0}
    assert recs[NEG].mask is None
    assert recs[TWO_BOXES].labels == {"pneumonia": 1}
    assert recs[TWO_BOXES].mask == [[2.0, 3.0, 6.0, 8.0], [20.0, 10.0, 26.0, 22.0]]
    assert recs[ONE_BOX].mask == [[10.5, 0.0, 13.5, 2.0]]
    for rec in recs.values():
        assert rec.report == ""
        assert rec.patient_id == rec.id
        assert rec.image == root.resolve() / "stage_2_train_images" / f"{rec.id}.dcm"
        assert rec.split == hash_split(rec.id)


def test_box_masks_match_hand_drawn(tmp_path: Path) -> None:
    recs = by_id(items(make_tree(tmp_path / "rsna", GOOD_LABELS)))
    expected = np.zeros((32, 32), dtype=np.uint8)
    expected[3:8, 2:6] = 1  # x 2..6, y 3..8
    expected[10:22, 20:26] = 1
    np.testing.assert_array_equal(load_mask(recs[TWO_BOXES].mask, 32, 32), expected)
    one = np.zeros((32, 32), dtype=np.uint8)
    one[0:2, 10:14] = 1  # x 10.5..13.5 touches columns 10..13
    np.testing.assert_array_equal(load_mask(recs[ONE_BOX].mask, 32, 32), one)
    assert load_mask(recs[NEG].mask, 32, 32) is None


def test_detailed_class_labels(tmp_path: Path) -> None:
    recs = by_id(items(make_tree(tmp_path / "rsna", GOOD_LABELS, GOOD_CLASSES)))
    assert recs[NEG].labels == {"pneumonia": 0, "lung_opacity": 0, "not_normal": 0, "normal": 1}
    assert recs[TWO_BOXES].labels == {
        "pneumonia": 1,
        "lung_opacity": 1,
        "not_normal": 0,
        "normal": 0,
    }
    assert recs[NOT_NORMAL].labels == {
        "pneumonia": 0,
        "lung_opacity": 0,
        "not_normal": 1,
        "normal": 0,
    }


def test_patient_missing_from_class_file_keeps_pneumonia_only(tmp_path: Path) -> None:
    classes = [c for c in GOOD_CLASSES if not c.startswith(ONE_BOX)]
    recs = by_id(items(make_tree(tmp_path / "rsna", GOOD_LABELS, classes)))
    assert recs[ONE_BOX].labels == {"pneumonia": 1}


def test_split_by_patient_hash(tmp_path: Path) -> None:
    pids = [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(60)]
    found = items(make_tree(tmp_path / "rsna", [f"{p},,,,,0" for p in pids]))
    splits = {r.id: r.split for r in by_id(found).values()}
    assert set(splits.values()) == {"train", "val", "test"}
    assert sum(s == "train" for s in splits.values()) > 30
    again = {r.id: r.split for r in by_id(items(tmp_path / "rsna")).values()}
    assert splits == again


def test_load_image_reads_a_record(tmp_path: Path) -> None:
    rec = by_id(items(make_tree(tmp_path / "rsna", GOOD_LABELS)))[TWO_BOXES]
    img = load_image(rec.image)
    assert img.shape == (32, 32) and img.dtype == np.float32
    assert 0.0 <= img.min() < img.max() <= 1.0


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ([f"{TWO_BOXES},2.0,3.0,4.0,5.0,1", f"{TWO_BOXES},,,,,0"], "inconsistent Target"),
        ([f"{TWO_BOXES},2.0,abc,4.0,5.0,1"], "not numeric"),
        ([f"{TWO_BOXES},,,,,1"], "not numeric"),
        ([f"{TWO_BOXES},2.0,3.0,-4.0,5.0,1"], "not a finite box"),
        ([f"{TWO_BOXES},2.0,3.0,4.0,5.0,2"], "is not 0 or 1"),
        ([f"{TWO_BOXES},2.0,3.0,4.0,5.0,0"], "negative row"),
    ],
)
def test_bad_rows_are_record_errors(tmp_path: Path, rows: list[str], reason: str) -> None:
    found = items(make_tree(tmp_path / "rsna", [*rows, f"{NEG},,,,,0"]))
    err, ok = found
    assert isinstance(err, RecordError) and err.record_id == TWO_BOXES
    assert reason in err.reason and "stage_2_train_labels.csv" in err.reason
    assert isinstance(ok, Record) and ok.id == NEG


@pytest.mark.parametrize(
    ("classes", "reason"),
    [
        ([f"{TWO_BOXES},Pneumonia"], "unknown class"),
        ([f"{TWO_BOXES},Normal"], "contradicts Target 1"),
        ([f"{TWO_BOXES},Lung Opacity", f"{TWO_BOXES},Normal"], "inconsistent class"),
    ],
)
def test_bad_classes_are_record_errors(tmp_path: Path, classes: list[str], reason: str) -> None:
    found = items(make_tree(tmp_path / "rsna", GOOD_LABELS[1:3], classes))
    assert len(found) == 1
    assert isinstance(found[0], RecordError) and reason in found[0].reason


def test_missing_image_is_a_record_error(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rsna", GOOD_LABELS)
    (root / "stage_2_train_images" / f"{ONE_BOX}.dcm").unlink()
    found = items(root)
    err = found[2]
    assert isinstance(err, RecordError) and err.record_id == ONE_BOX
    assert err.reason == "image file not found" and err.path.endswith(f"{ONE_BOX}.dcm")
    assert sum(isinstance(r, Record) for r in found) == 3


def test_missing_labels_csv(tmp_path: Path) -> None:
    (tmp_path / "rsna").mkdir()
    with pytest.raises(SourceError, match="stage_2_train_labels.csv"):
        open_rsna(tmp_path / "rsna", {})


def test_wrong_columns(tmp_path: Path) -> None:
    root = tmp_path / "rsna"
    root.mkdir()
    (root / "stage_2_train_labels.csv").write_text("patientId,x,y,w,h,Target\n")
    with pytest.raises(SourceError, match=r"missing column\(s\) \['width', 'height'\]"):
        open_rsna(root, {})
    (root / "stage_2_train_labels.csv").write_text(LABELS_HEADER + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text("patientId,label\n")
    with pytest.raises(SourceError, match=r"detailed_class_info.csv.*\['class'\]"):
        open_rsna(root, {})


def test_unknown_option(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "rsna", GOOD_LABELS, images=False)
    with pytest.raises(SourceError, match="rsna-pneumonia source does not take"):
        open_rsna(root, {"view": "pa"})
