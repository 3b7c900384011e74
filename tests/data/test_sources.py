"""CSV / JSONL sources: relative paths, label columns, and per-record errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptor.data.records import Record, RecordError, parse_label_value
from adaptor.data.sources import SourceError, open_source


def _items(spec: str) -> list[Record | RecordError]:
    return list(open_source(spec).items())


def test_csv_relative_paths_and_label_columns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    csv_file = data / "records.csv"
    csv_file.write_text(
        "id,image,report,effusion,nodule,split,patient_id,mask\n"
        "a,img/a.png,Small left effusion.,1,0,train,p1,img/a_mask.png\n"
        "b,img/b.png,No nodule.,,-1,valid,p2,\n",
        encoding="utf-8",
    )
    a, b = _items(f"csv:{csv_file}")
    assert isinstance(a, Record) and isinstance(b, Record)
    assert a.image == data.resolve() / "img" / "a.png"
    assert a.mask == str(data.resolve() / "img" / "a_mask.png")
    assert a.labels == {"effusion": 1, "nodule": 0}
    assert b.labels == {"effusion": None, "nodule": -1}
    assert (a.split, b.split) == ("train", "val")
    assert (a.patient_id, b.patient_id) == ("p1", "p2")


def test_jsonl_labels_object_and_absolute_path(tmp_path: Path) -> None:
    jsonl = tmp_path / "r.jsonl"
    rows = [
        {
            "id": "x1",
            "image": "/abs/x1.png",
            "report": "ok",
            "labels": {"opacity": 1},
            "split": "test",
        },
        {"id": "x2", "image": "sub/x2.dcm", "report": "ok", "labels": {"opacity": "uncertain"}},
    ]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    x1, x2 = _items(f"jsonl:{jsonl}")
    assert x1.image == Path("/abs/x1.png") and x1.split == "test"
    assert x2.image == tmp_path.resolve() / "sub" / "x2.dcm"
    assert x2.labels == {"opacity": -1} and x2.split == "train"


def test_bad_rows_become_record_errors_in_place(tmp_path: Path) -> None:
    jsonl = tmp_path / "r.jsonl"
    lines = [
        json.dumps({"id": "good", "image": "g.png", "report": "fine"}).encode(),
        json.dumps({"id": "badlabel", "image": "b.png", "labels": {"x": "maybe"}}).encode(),
        b'{"id": "latin1", "image": "l.png", "report": "caf\xe9"}',
        b"{not json",
        json.dumps({"id": "badsplit", "image": "s.png", "split": "holdout"}).encode(),
    ]
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    items = _items(f"jsonl:{jsonl}")
    assert isinstance(items[0], Record)
    errors = items[1:]
    assert all(isinstance(e, RecordError) for e in errors)
    assert "unknown value 'maybe' for label 'x'" in str(errors[0])
    assert errors[1].record_id == "latin1" and "not valid UTF-8" in errors[1].reason
    assert "not valid JSON" in errors[2].reason and "r.jsonl:4" in errors[2].record_id
    assert "unknown split 'holdout'" in errors[3].reason


def test_csv_non_utf8_row_is_isolated(tmp_path: Path) -> None:
    csv_file = tmp_path / "r.csv"
    csv_file.write_bytes(
        b"id,image,report\nok,a.png,fine\nbad,b.png,na\xefve\nok2,c.png,also fine\n"
    )
    items = _items(f"csv:{csv_file}")
    assert [type(i).__name__ for i in items] == ["Record", "RecordError", "Record"]
    assert items[1].record_id == "bad" and "column 'report'" in items[1].reason


def test_missing_file_and_columns_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        open_source(f"csv:{tmp_path / 'nope.csv'}")
    bad = tmp_path / "bad.csv"
    bad.write_text("identifier,path\n1,a.png\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"missing required column\(s\) \['id', 'image'\]"):
        list(open_source(f"csv:{bad}").items())
    with pytest.raises(SourceError, match="unknown source kind"):
        open_source(f"parquet:{bad}")
    with pytest.raises(SourceError, match="KIND:PATH"):
        open_source(str(bad.name))
    with pytest.raises(SourceError, match="adaptor synth"):
        open_source(f"synthetic:{tmp_path}")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), ("0", 0), ("-1.0", -1), ("", None), (float("nan"), None), ("Positive", 1), (True, 1)],
)
def test_label_spellings(value: object, expected: int | None) -> None:
    assert parse_label_value(value, record_id="r", label="l") == expected


def test_label_out_of_range_is_an_error() -> None:
    with pytest.raises(RecordError, match="unknown value 2"):
        parse_label_value(2, record_id="r", label="l")
