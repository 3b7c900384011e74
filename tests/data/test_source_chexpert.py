"""CheXpert layout: path resolution, views, uncertainty policies, splits and bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptor.data.image_io import load_image
from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import SourceError
from adaptor.data.sources.chexpert import CHEXPERT_LABELS, COLUMNS, hash_split, open_chexpert

SMALL = "CheXpert-v1.0-small"


def _labels(**values: str) -> list[str]:
    return [values.get(label.replace(" ", "_"), "") for label in CHEXPERT_LABELS]


TRAIN_ROWS = [
    # patient00001: frontal with uncertain labels and its lateral view
    [f"{SMALL}/train/patient00001/study1/view1_frontal.jpg", "Female", "68", "Frontal", "AP"]
    + _labels(Cardiomegaly="-1.0", Edema="1.0", Pleural_Effusion="0.0", Support_Devices="1.0"),
    [f"{SMALL}/train/patient00001/study1/view2_lateral.jpg", "Female", "68", "Lateral", ""]
    + _labels(Cardiomegaly="-1.0", Edema="1.0"),
    [f"{SMALL}/train/patient00002/study2/view1_frontal.jpg", "Female", "87", "Frontal", "AP"]
    + _labels(No_Finding="1.0"),
    [f"{SMALL}/train/patient00003/study1/view1_frontal.jpg", "Male", "41", "Frontal", "PA"]
    + _labels(Lung_Opacity="-1.0", Pneumonia="-1.0", Atelectasis="0.0"),
]
VALID_ROWS = [
    [f"{SMALL}/valid/patient64541/study1/view1_frontal.jpg", "Male", "73", "Frontal", "AP"]
    + ["0.0"] * 2
    + ["1.0"]
    + ["0.0"] * 11,
]


def _write_csv(path: Path, rows: list[list[str]], header: tuple[str, ...] = COLUMNS) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _make_tree(parent: Path, *, skip_image: str | None = None) -> Path:
    root = parent / SMALL
    root.mkdir(parents=True)
    _write_csv(root / "train.csv", TRAIN_ROWS)
    _write_csv(root / "valid.csv", VALID_ROWS)
    for row in TRAIN_ROWS + VALID_ROWS:
        if row[0] == skip_image:
            continue
        image = parent / row[0]
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 20), 128, np.uint8)).save(image)
    return root


def _records(root: Path, **options: str) -> list[Record]:
    items = list(open_chexpert(root, options).items())
    assert all(isinstance(item, Record) for item in items), items
    return items  # type: ignore[return-value]


def test_frontal_default_ids_labels_and_splits(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    records = _records(root)
    assert [r.id for r in records] == [
        f"{SMALL}/train/patient00001/study1/view1_frontal",
        f"{SMALL}/train/patient00002/study2/view1_frontal",
        f"{SMALL}/train/patient00003/study1/view1_frontal",
        f"{SMALL}/valid/patient64541/study1/view1_frontal",
    ]
    first = records[0]
    assert first.image == tmp_path.resolve() / TRAIN_ROWS[0][0]
    assert first.report == ""
    assert first.patient_id == "patient00001"
    assert list(first.labels) == list(CHEXPERT_LABELS)
    assert first.labels["Cardiomegaly"] == -1
    assert first.labels["Edema"] == 1
    assert first.labels["Pleural Effusion"] == 0
    assert first.labels["Fracture"] is None
    assert records[-1].split == "test"
    assert records[-1].labels["Cardiomegaly"] == 1
    assert records[-1].labels["No Finding"] == 0
    for record in records[:3]:
        assert record.split == hash_split(record.patient_id or "", 0.10)
        assert record.split in ("train", "val")


def test_load_image_reads_a_record(tmp_path: Path) -> None:
    record = _records(_make_tree(tmp_path))[0]
    image = load_image(record.image)
    assert image.shape == (16, 20)
    assert np.allclose(image, 128 / 255, atol=1e-3)


@pytest.mark.parametrize(
    ("policy", "expected"), [("keep", -1), ("ones", 1), ("zeros", 0), ("ignore", None)]
)
def test_uncertain_policies(tmp_path: Path, policy: str, expected: int | None) -> None:
    records = _records(_make_tree(tmp_path), uncertain=policy)
    assert records[0].labels["Cardiomegaly"] == expected
    assert records[2].labels["Lung Opacity"] == expected
    assert records[2].labels["Atelectasis"] == 0  # certain labels untouched
    assert records[0].labels["Edema"] == 1
    assert records[0].labels["Fracture"] is None


def test_views_option(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    lateral = _records(root, views="lateral")
    assert [r.id for r in lateral] == [f"{SMALL}/train/patient00001/study1/view2_lateral"]
    assert len(_records(root, views="all")) == 5


def test_paths_resolve_against_root_when_folder_is_renamed(tmp_path: Path) -> None:
    _make_tree(tmp_path)
    renamed = tmp_path / "chexpert"
    (tmp_path / SMALL).rename(renamed)
    records = _records(renamed)
    assert records[0].image == renamed.resolve() / "train/patient00001/study1/view1_frontal.jpg"
    assert records[0].id == f"{SMALL}/train/patient00001/study1/view1_frontal"


def test_paths_resolve_against_root_holding_the_folder(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    for name in ("train.csv", "valid.csv"):
        (root / name).rename(tmp_path / name)
    records = _records(tmp_path)
    assert records[0].image == tmp_path.resolve() / TRAIN_ROWS[0][0]


def test_patients_never_cross_splits() -> None:
    patients = [f"patient{i:05d}" for i in range(1, 2001)]
    splits = [hash_split(p, 0.10) for p in patients]
    assert splits == [hash_split(p, 0.10) for p in patients]
    assert 0.06 < splits.count("val") / len(splits) < 0.14
    assert set(splits) == {"train", "val"}


def test_missing_image_is_a_record_error(tmp_path: Path) -> None:
    root = _make_tree(tmp_path, skip_image=TRAIN_ROWS[2][0])
    items = list(open_chexpert(root, {}).items())
    errors = [i for i in items if isinstance(i, RecordError)]
    assert len(items) == 4 and len(errors) == 1
    assert errors[0].record_id == f"{SMALL}/train/patient00002/study2/view1_frontal"
    assert "image file not found" in str(errors[0])
    assert errors[0].path == str(tmp_path.resolve() / TRAIN_ROWS[2][0])


def test_unknown_label_and_view_values_are_record_errors(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    rows = [list(r) for r in TRAIN_ROWS]
    rows[0][COLUMNS.index("Edema")] = "maybe"
    rows[2][COLUMNS.index("Frontal/Lateral")] = "Oblique"
    _write_csv(root / "train.csv", rows)
    items = list(open_chexpert(root, {}).items())
    errors = [i for i in items if isinstance(i, RecordError)]
    assert len(errors) == 2
    assert "line 2" in errors[0].reason and "'maybe'" in errors[0].reason
    assert errors[0].path == str(root.resolve() / "train.csv")
    assert "line 4" in errors[1].reason and "Frontal/Lateral" in errors[1].reason


def test_missing_csv_and_columns_are_source_errors(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    (root / "valid.csv").unlink()
    with pytest.raises(SourceError, match="valid.csv"):
        open_chexpert(root, {})
    _write_csv(root / "valid.csv", [], header=tuple(c for c in COLUMNS if c != "Edema"))
    with pytest.raises(SourceError, match=r"missing column\(s\) \['Edema'\]"):
        open_chexpert(root, {})


def test_bad_options(tmp_path: Path) -> None:
    root = _make_tree(tmp_path)
    with pytest.raises(SourceError, match="does not take"):
        open_chexpert(root, {"sections": "full"})
    with pytest.raises(SourceError, match="uncertain"):
        open_chexpert(root, {"uncertain": "half"})
    with pytest.raises(SourceError, match="views"):
        open_chexpert(root, {"views": "oblique"})
