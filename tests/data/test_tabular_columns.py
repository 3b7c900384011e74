"""CSV / JSONL columns: labels named or inferred, one-hot categories, metadata, long fields."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from adaptor.cli import app
from adaptor.data.records import Record, RecordError, write_records_jsonl
from adaptor.data.sources import SourceError, csvfile, open_source, tabular
from adaptor.heads.classification import label_matrix, multiclass_rows
from adaptor.shards import Manifest, ShardReader

CSV_LIMIT = 131_072  # Python's default csv field size limit
LONG_REPORT = "The lungs are clear. " * 10_000  # 210,000 characters


def _items(spec: str) -> list[Record | RecordError]:
    return list(open_source(spec).items())


def _digits_csv(folder: Path, *, images: bool = False, long_report: bool = False) -> Path:
    """Ten rows: a 0–9 class column, a binary column, sex/age/view metadata, one empty cell."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(10):
        if images:
            pixels = np.random.default_rng(i).integers(0, 255, (48, 48), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"d{i}.png")
        rows.append(
            {
                "id": f"d{i}",
                "image": f"d{i}.png",
                "report": LONG_REPORT if long_report and i == 3 else f"digit {i}",
                "digit": str(i),
                "effusion": ["1", "0", "", "yes"][i % 4],
                "sex": "" if i == 9 else "MF"[i % 2],
                "age": "" if i == 9 else str(40 + i),
                "view": "" if i == 9 else ["PA", "AP", "LATERAL"][i % 3],
            }
        )
    path = folder / "digits.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_binary_columns_are_inferred_labels_and_the_rest_metadata(tmp_path: Path) -> None:
    items = _items(f"csv:{_digits_csv(tmp_path)}")
    assert all(isinstance(r, Record) for r in items) and len(items) == 10
    first, last = items[0], items[9]
    assert first.labels == {"effusion": 1}
    assert [r.labels["effusion"] for r in items[:4]] == [1, 0, None, 1]
    assert first.metadata == {"digit": "0", "sex": "M", "age": "40", "view": "PA"}
    assert last.metadata == {"digit": "9"}  # empty cells are left out


def test_named_labels_and_onehot_category(tmp_path: Path) -> None:
    path = _digits_csv(tmp_path)
    items = _items(f"csv:{path}?labels=effusion&onehot=digit")
    names = [f"digit={i}" for i in range(10)]
    for i, record in enumerate(items):
        assert isinstance(record, Record)
        assert list(record.labels) == [*names, "effusion"]  # in column order
        assert [record.labels[n] for n in names] == [int(i == k) for k in range(10)]
        assert "digit" not in record.metadata and ("sex" in record.metadata) == (i != 9)
    # the one-hot set is what `--kind multiclass` trains on: class index = the digit
    targets, valid = label_matrix([{"labels": r.labels} for r in items], names, "ignore")
    classes, usable = multiclass_rows(targets, valid)
    assert usable.all() and classes.tolist() == list(range(10))
    # labels= empty: no label columns; only named ones otherwise
    none = _items(f"csv:{path}?labels=")
    assert all(r.labels == {} and "effusion" in r.metadata for r in none[:2])


def test_onehot_orders_numbers_numerically_and_empty_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("id,image,grade\na,a.png,10\nb,b.png,9\nc,c.png,\n", encoding="utf-8")
    a, b, c = _items(f"csv:{path}?onehot=grade")
    assert list(a.labels) == ["grade=9", "grade=10"]
    assert a.labels == {"grade=9": 0, "grade=10": 1}
    assert c.labels == {"grade=9": None, "grade=10": None}


def test_named_label_column_rejecting_most_rows_is_one_source_error(tmp_path: Path) -> None:
    path = _digits_csv(tmp_path)
    source = open_source(f"csv:{path}?labels=effusion,digit")
    with pytest.raises(SourceError) as caught:
        next(source.items())  # before any record comes out
    message = str(caught.value)
    assert str(path) in message and "'digit'" in message and "8 of 10 rows" in message
    assert "'2'" in message and "onehot=digit" in message
    # a minority of bad values stays per-record errors
    few = tmp_path / "few.csv"
    few.write_text("id,image,x\na,a.png,1\nb,b.png,0\nc,c.png,maybe\n", encoding="utf-8")
    items = _items(f"csv:{few}?labels=x")
    assert [type(i).__name__ for i in items] == ["Record", "Record", "RecordError"]
    assert "unknown value 'maybe' for label 'x'" in items[2].reason


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("?label=x", r"does not take option\(s\) \['label'\]; accepted: labels"),
        ("?labels=nope", r"no column\(s\) \['nope'\]"),
        ("?onehot=split", "reserved"),
        ("?labels=digit&onehot=digit", "both"),
    ],
)
def test_bad_options_are_source_errors(tmp_path: Path, query: str, match: str) -> None:
    with pytest.raises(SourceError, match=match):
        _items(f"csv:{_digits_csv(tmp_path)}{query}")


def test_jsonl_keys_follow_the_same_rules_and_metadata_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    rows = [
        {"id": "a", "image": "a.png", "flag": True, "cls": 2, "site": {"x": 1}, "labels": {"y": 0}},
        {"id": "b", "image": "b.png", "flag": 0, "cls": 3, "site": None},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    a, b = _items(f"jsonl:{path}?onehot=cls")
    assert a.labels == {"y": 0, "flag": 1, "cls=2": 1, "cls=3": 0}
    assert b.labels == {"flag": 0, "cls=2": 0, "cls=3": 1}
    assert a.metadata == {"site": '{"x": 1}'} and b.metadata == {}
    # records written back (as `adaptor synth` does) read back the same
    out = tmp_path / "copy.jsonl"
    write_records_jsonl([a, b], out)
    assert "metadata" not in json.loads(out.read_text().splitlines()[1])
    a2, b2 = _items(f"jsonl:{out}")
    assert (a2.metadata, b2.metadata) == (a.metadata, b.metadata)
    assert a2.labels == a.labels


def test_malformed_rows_are_their_own_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes(
        "\ufeffid, image ,report,\n"  # BOM, padded names, a blank (pandas index) column
        "a,a.png,fine,0\n"
        "b,b.png,unquoted, comma,1\n"
        "c,c.png\n"
        "d,d.png,\x00nul,3\n"
        "e\x00,e.png,ok,4\n".encode()
    )
    a, b, c, d, e = _items(f"csv:{path}")
    assert isinstance(a, Record) and a.labels == {} and a.metadata == {}
    assert isinstance(b, RecordError) and "more fields than the header" in b.reason
    assert isinstance(c, RecordError) and "fewer fields" in c.reason
    assert isinstance(d, Record) and d.report == "\x00nul"
    assert isinstance(e, RecordError) and "NUL" in e.reason
    twice = tmp_path / "twice.csv"
    twice.write_text("id,image,x,x\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"\['x'\] appear more than once"):
        _items(f"csv:{twice}")


def test_a_csv_error_is_that_rows_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.csv"
    path.write_text(f"id,image,report\na,a.png,ok\nb,b.png,{'x' * 50}\nc,c.png,ok\n")
    previous = csv.field_size_limit()
    monkeypatch.setattr(csvfile, "FIELD_SIZE_LIMIT", 20)  # makes csv raise on row b
    try:
        items = _items(f"csv:{path}")
    finally:
        csv.field_size_limit(previous)
    assert [type(i).__name__ for i in items] == ["Record", "RecordError", "Record"]
    assert "not valid CSV" in items[1].reason and "field larger" in items[1].reason


def test_long_fields_read_in_every_csv_reader(tmp_path: Path) -> None:
    csv.field_size_limit(CSV_LIMIT)  # as a fresh process has it
    path = _digits_csv(tmp_path, long_report=True)
    record = _items(f"csv:{path}")[3]
    assert isinstance(record, Record) and record.report == LONG_REPORT
    csv.field_size_limit(CSV_LIMIT)
    root = tmp_path / "iu"  # a published layout with reports in its CSV
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "images" / "1.png")
    header = ["uid", "MeSH", "Problems", "image", "indication", "comparison", "findings"]
    tables = {
        "indiana_reports.csv": [
            [*header, "impression"],
            ["1", "", "normal", "", "", "", LONG_REPORT, ""],
        ],
        "indiana_projections.csv": [["uid", "filename", "projection"], ["1", "1.png", "Frontal"]],
    }
    for name, rows in tables.items():
        with open(root / name, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)
    (record,) = _items(f"iu-xray:{root}?images=images")
    assert isinstance(record, Record) and record.report == LONG_REPORT.strip()


def test_cli_embed_with_default_options_keeps_every_record(tmp_path: Path) -> None:
    csv.field_size_limit(CSV_LIMIT)
    path = _digits_csv(tmp_path / "data", images=True, long_report=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("plain,d0.png,no other columns,,,,,\n")
    out = tmp_path / "shards"
    result = CliRunner().invoke(app, ["embed", "--source", f"csv:{path}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert manifest.count == 11 and manifest.skipped == []
    assert manifest.truncated_reports == 1
    meta = ShardReader(out).load().meta
    assert [m["labels"] for m in meta[:4]] == [
        {"effusion": 1},
        {"effusion": 0},
        {"effusion": None},
        {"effusion": 1},
    ]
    assert meta[3]["report_truncated"] and meta[3]["report"] == LONG_REPORT
    assert meta[0]["metadata"] == {"digit": "0", "sex": "M", "age": "40", "view": "PA"}
    assert meta[9]["metadata"] == {"digit": "9"}
    assert "metadata" not in meta[10]  # shards of sets without metadata are as before


def test_whole_file_problems_are_source_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tabular, "MAX_ONEHOT_VALUES", 5)
    with pytest.raises(SourceError, match="one-hot column 'digit' has over 5 distinct values"):
        _items(f"csv:{_digits_csv(tmp_path)}?onehot=digit")
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(b"id,image\na,a.png\n")[:20])
    with pytest.raises(SourceError, match="cannot read the file"):
        _items(f"csv:{cut}")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"id,image,caf\xe9\na,a.png,1\n")
    with pytest.raises(SourceError, match="header is not valid UTF-8"):
        _items(f"csv:{latin}")
