"""NIH ChestX-ray14 layout: Data_Entry_2017.csv, official test list, labels and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptor.data.image_io import load_image
from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import SourceError
from adaptor.data.sources.chestxray14 import FINDINGS, open_chestxray14

# the published header, trailing empty column included
HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(path)


def _tree(
    root: Path, rows: list[tuple[str, str, int]], test: set[str], missing: set[str] = frozenset()
) -> None:
    lines = [HEADER]
    for i, (name, labels, patient) in enumerate(rows):
        lines.append(f"{name},{labels},{i},{patient},58,M,PA,2682,2749,0.143,0.143,")
        if name not in missing:
            # images spread over the images_001/images, images_002/images folders
            _png(root / f"images_{1 + i % 2:03d}" / "images" / name)
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "test_list.txt").write_text("\n".join(sorted(test)) + "\n")
    names = [r[0] for r in rows if r[0] not in test]
    (root / "train_val_list.txt").write_text("\n".join(names) + "\n")


def _items(root: Path) -> tuple[dict[str, Record], dict[str, RecordError]]:
    items = list(open_chestxray14(root, {}).items())
    return (
        {i.id: i for i in items if isinstance(i, Record)},
        {i.record_id: i for i in items if isinstance(i, RecordError)},
    )


def test_labels_and_official_test_split(tmp_path: Path) -> None:
    rows = [
        ("00000001_000.png", "Cardiomegaly", 1),
        ("00000001_001.png", "Cardiomegaly|Emphysema", 1),
        ("00000002_000.png", "No Finding", 2),
        ("00000003_000.png", "Hernia|Pleural_Thickening|Effusion", 3),
    ] + [(f"{100 + p:08d}_000.png", "Infiltration", 100 + p) for p in range(40)]
    _tree(tmp_path, rows, test={"00000003_000.png"})
    records, errors = _items(tmp_path)
    assert not errors and len(records) == len(rows)

    r = records["00000001_001"]
    assert r.report == "" and r.patient_id == "1"
    assert r.labels == {f.lower(): int(f in {"Cardiomegaly", "Emphysema"}) for f in FINDINGS} | {
        "no_finding": 0
    }
    assert records["00000002_000"].labels["no_finding"] == 1
    assert sum(records["00000002_000"].labels.values()) == 1
    hernia = records["00000003_000"]
    assert hernia.split == "test"
    assert {k for k, v in hernia.labels.items() if v} == {
        "hernia",
        "pleural_thickening",
        "effusion",
    }
    assert hernia.image == tmp_path.resolve() / "images_002" / "images" / "00000003_000.png"
    others = {r.split for r in records.values() if r.id != "00000003_000"}
    assert others == {"train", "val"}
    by_patient: dict[str, set[str]] = {}
    for rec in records.values():
        by_patient.setdefault(rec.patient_id, set()).add(rec.split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert load_image(hernia.image).shape == (16, 16)


def test_bad_rows(tmp_path: Path) -> None:
    rows = [
        ("00000001_000.png", "Cardiomegaly|Covid", 1),
        ("00000002_000.png", "No Finding|Mass", 2),
        ("00000003_000.png", "Mass", 3),
        ("00000004_000.png", "Nodule", 4),
        ("00000005_000.png", "Nodule", 5),
    ]
    _tree(tmp_path, rows, test=set(), missing={"00000003_000.png"})
    lists = (tmp_path / "train_val_list.txt").read_text().replace("00000004_000.png\n", "")
    (tmp_path / "train_val_list.txt").write_text(lists)
    records, errors = _items(tmp_path)
    assert list(records) == ["00000005_000"]
    assert "unknown finding label(s) ['Covid']" in str(errors["00000001_000"])
    assert "Data_Entry_2017.csv line 2" in str(errors["00000001_000"])
    assert "'No Finding' together" in str(errors["00000002_000"])
    assert str(errors["00000003_000"]).endswith("image file not found")
    assert "neither test_list.txt nor train_val_list.txt" in str(errors["00000004_000"])


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="Data_Entry_2017.csv"):
        open_chestxray14(tmp_path, {})
    _tree(tmp_path, [("00000001_000.png", "Mass", 1)], test=set())
    (tmp_path / "test_list.txt").unlink()
    with pytest.raises(SourceError, match="test_list.txt"):
        open_chestxray14(tmp_path, {})
    (tmp_path / "test_list.txt").write_text("")
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Labels,Patient ID\nx.png,Mass,1\n")
    with pytest.raises(SourceError, match="Finding Labels"):
        list(open_chestxray14(tmp_path, {}).items())
    with pytest.raises(SourceError, match="does not take"):
        open_chestxray14(tmp_path, {"split": "x"})
