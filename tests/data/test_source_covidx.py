"""COVIDx CXR layout: list parsing, label schemes, splits and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptor.data.image_io import load_image
from adaptor.data.records import Record, RecordError
from adaptor.data.sources.base import SourceError
from adaptor.data.sources.covidx import open_covidx


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, dtype=np.uint8)).save(path)


def _write(root: Path, name: str, lines: list[str], *, images: bool = True) -> None:
    (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    if images:
        for line in lines:
            fields = line.split()
            if len(fields) == 4:
                _png(root / name / fields[1])


def _split(items: list) -> tuple[list[Record], list[RecordError]]:
    return [i for i in items if isinstance(i, Record)], [
        i for i in items if isinstance(i, RecordError)
    ]


def test_binary_labels_splits_and_overlap(tmp_path: Path) -> None:
    train = [
        f"p{i:03d} p{i:03d}-a.png {'positive' if i % 3 else 'negative'} bimcv" for i in range(40)
    ]
    train += ["p001 p001-b.jpg positive bimcv", "shared shared-train.png negative rsna"]
    _write(tmp_path, "train", train)
    _write(tmp_path, "test", ["t1 t1.png positive ricord", "shared shared-test.png positive rsna"])
    records, errors = _split(list(open_covidx(tmp_path, {}).items()))

    by_id = {r.id: r for r in records}
    assert by_id["p001-a"].labels == {"covid": 1}
    assert by_id["p000-a"].labels == {"covid": 0}
    assert by_id["t1"].split == "test" and by_id["t1"].report == ""
    assert by_id["p001-b"].image == tmp_path.resolve() / "train" / "p001-b.jpg"
    # the train-side row of a patient also in test.txt is refused; the test row stays
    assert by_id["shared-test"].split == "test"
    assert [e.record_id for e in errors] == ["shared-train"]
    assert "also in test.txt" in str(errors[0])
    splits = {r.split for r in records if r.patient_id != "t1"}
    assert {"train", "val"} <= splits
    patient_split: dict[str, set[str]] = {}
    for r in records:
        patient_split.setdefault(r.patient_id, set()).add(r.split)
    assert all(len(s) == 1 for s in patient_split.values())
    assert [r.id for r in open_covidx(tmp_path, {}).items() if isinstance(r, Record)] == [
        r.id for r in records
    ]
    assert load_image(by_id["t1"].image).shape == (16, 16)


def test_three_class_version(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "train",
        ["1 a.png normal rsna", "2 b.png pneumonia rsna", "3 c.jpeg COVID-19 cohen"],
    )
    _write(tmp_path, "test", ["4 d.png COVID-19 actualmed"])
    records, errors = _split(list(open_covidx(tmp_path, {}).items()))
    assert not errors
    labels = {r.id: r.labels for r in records}
    assert labels["a"] == {"normal": 1, "pneumonia": 0, "covid_19": 0}
    assert labels["c"] == {"normal": 0, "pneumonia": 0, "covid_19": 1}
    assert labels["d"]["covid_19"] == 1


def test_official_val_list(tmp_path: Path) -> None:
    _write(tmp_path, "train", [f"p{i} p{i}.png negative bimcv" for i in range(30)])
    _write(tmp_path, "val", ["v1 v1.png positive bimcv", "p3 p3-val.png negative bimcv"])
    _write(tmp_path, "test", ["t1 t1.png negative bimcv"])
    records, errors = _split(list(open_covidx(tmp_path, {}).items()))
    splits = {r.id: r.split for r in records}
    assert splits["v1"] == "val" and splits["t1"] == "test"
    assert {splits[f"p{i}"] for i in range(30) if i != 3} == {"train"}
    assert [e.record_id for e in errors] == ["p3"]  # train row of a val patient


def test_bad_lines(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "train",
        ["1 a.png positive rsna", "2 b.png positive", "3 c.png maybe rsna", "4 a.png negative x"],
    )
    _write(tmp_path, "test", ["5 missing.png negative rsna"], images=False)
    records, errors = _split(list(open_covidx(tmp_path, {}).items()))
    assert [r.id for r in records] == ["a"]
    messages = {e.record_id: str(e) for e in errors}
    assert "train.txt line 2" in messages["train.txt:2"] and "3 fields" in messages["train.txt:2"]
    assert "unknown class 'maybe'" in messages["c"]
    assert "duplicate record id" in messages["a"]
    assert messages["missing"].endswith("image file not found")


def test_source_errors(tmp_path: Path) -> None:
    _write(tmp_path, "train", ["1 a.png positive rsna"])
    with pytest.raises(SourceError, match="test.txt"):
        open_covidx(tmp_path, {})
    _write(tmp_path, "test", ["2 b.png normal rsna"])
    with pytest.raises(SourceError, match="mix"):
        list(open_covidx(tmp_path, {}).items())
    with pytest.raises(SourceError, match="does not take"):
        open_covidx(tmp_path, {"views": "all"})
