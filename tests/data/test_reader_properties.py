"""Property tests: any CSV/JSONL file or mask ends in records or per-record errors, never a crash.

A whole-file problem (no ``id`` column, a duplicated column) may be one SourceError; every
other bad input is a RecordError (readers) or MaskError (mask parsers) with a message.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adaptor.data.masks import MaskError, boxes_to_mask, load_mask, rle_decode
from adaptor.data.records import LABEL_VALUES, Record, RecordError
from adaptor.data.sources import SourceError, open_source

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

COLUMNS = ["id", "image", "report", "split", "patient_id", "mask", "labels", "metadata"]
COLUMNS += ["effusion", "digit", "sex", "", " age ", "id"]
# cells full of what breaks CSV: separators, quotes, line ends, NUL, BOM, label spellings
CELL = st.one_of(
    st.sampled_from(["", "1", "0", "-1", "yes", "u", "nan", "2", "train", "val", "holdout"]),
    st.sampled_from(['{"a": 1}', "[1, 2]", "img.png", "m.png", "1 2 3 4", "\ufeff", "\x00"]),
    st.text(alphabet=st.sampled_from(list(',"\n\r\t x1é\x00\ufeff{}[]:')), max_size=12),
    st.text(max_size=8),
)
JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["1", "0", "-1", "yes", "train", "test", "a.png", "1 2", "\ud800x"]),
    st.text(st.characters(categories=["Cs", "Ll", "Nd"]), max_size=4),  # lone surrogates too
)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
# rows that mostly have an id and an image, so they get as far as being records
JSON_ROW = st.fixed_dictionaries(
    {"id": st.one_of(st.text(min_size=1, max_size=6), JSON_VALUE), "image": st.just("a.png")},
    optional={c: JSON_VALUE for c in COLUMNS if c.strip() and c not in ("id", "image")},
)
HEADER = st.one_of(
    st.lists(st.sampled_from(COLUMNS), max_size=8),
    st.lists(st.sampled_from(COLUMNS[2:]), max_size=6).map(lambda c: ["id", "image", *c]),
)
OPTIONS = st.sampled_from(
    ["", "?labels=effusion", "?labels=", "?onehot=digit", "?labels=effusion&onehot=sex,digit"]
)


def _check_reads(path: Path, spec: str) -> None:
    """Every item is a Record or a RecordError, each storable as UTF-8 JSON; or a SourceError."""
    try:
        items = list(open_source(spec).items())
    except SourceError as err:
        str(err).encode("utf-8")
        return
    for item in items:
        if isinstance(item, RecordError):
            str(item).encode("utf-8")  # printed as a skip line
            json.dumps({"id": item.record_id, "reason": item.reason}).encode("utf-8")
            continue
        assert isinstance(item, Record)
        assert item.id and str(item.image)
        assert item.split in ("train", "val", "test")
        assert all(v is None or v in LABEL_VALUES for v in item.labels.values())
        assert all(isinstance(v, str) and v for v in item.metadata.values())
        json.dumps(item.to_json(relative_to=path.parent), ensure_ascii=False).encode("utf-8")


@PROPERTY
@given(
    header=HEADER,
    rows=st.lists(st.lists(CELL, max_size=9), max_size=6),
    options=OPTIONS,
)
def test_csv_rows_of_anything(header: list[str], rows: list[list[str]], options: str) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.csv"
        path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        _check_reads(path, f"csv:{path}{options}")


@PROPERTY
@example(head=b"id,image", body=b",\xff\na,a.png,1\n", options="")  # a header that is not UTF-8
@given(
    head=st.sampled_from([b"id,image", b"id,image,report,effusion,digit,sex\n"]),
    body=st.binary(max_size=400),
    options=OPTIONS,
)
def test_csv_bytes_of_anything(head: bytes, body: bytes, options: str) -> None:
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.csv"
        path.write_bytes(head + body)
        _check_reads(path, f"csv:{path}{options}")


@PROPERTY
@example(rows=[{"id": "\ud800", "image": "a.png", "report": "ok"}], options="")
@given(
    rows=st.lists(
        st.one_of(JSON_ROW, st.dictionaries(st.sampled_from(COLUMNS), JSON_VALUE), JSON_VALUE),
        max_size=6,
    ),
    options=OPTIONS,
)
def test_jsonl_values_of_anything(rows: list[Any], options: str) -> None:
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        _check_reads(path, f"jsonl:{path}{options}")


@PROPERTY
@given(lines=st.lists(st.binary(max_size=80), max_size=6), options=OPTIONS)
def test_jsonl_bytes_of_anything(lines: list[bytes], options: str) -> None:
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.jsonl"
        path.write_bytes(b"\n".join(lines))
        _check_reads(path, f"jsonl:{path}{options}")


def test_jsonl_extremes(tmp_path: Path) -> None:
    """Nesting past the recursion limit, a 5,000-digit number, a lone surrogate, a BOM, a bad box."""
    path = tmp_path / "r.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    nested = "[" * 900 + "]" * 900
    path.write_text(
        "\ufeff" + json.dumps({"id": "bom", "image": "a.png", "report": "ok"}) + "\n"
        '{"id": "deep", "image": "a.png", "x": ' + deep + "}\n"
        '{"id": "big", "image": "a.png", "x": ' + "9" * 5000 + "}\n"
        '{"id": "sur\\ud800", "image": "a.png"}\n'
        '{"id": "box", "image": "a.png", "mask": [[0, 0, "x", 1]]}\n'
        '{"id": ' + nested + ', "image": "a.png", "mask": ' + nested + ', "x": ' + nested + "}\n",
        encoding="utf-8",
    )
    items = list(open_source(f"jsonl:{path}").items())
    assert isinstance(items[0], Record) and items[0].id == "bom"
    assert all(isinstance(i, RecordError) for i in items[1:5])
    assert "not valid JSON" in items[1].reason and "not valid JSON" in items[2].reason
    assert "not valid Unicode" in items[3].reason
    assert "bad mask: box 0" in items[4].reason and "non-numeric" in items[4].reason
    assert isinstance(items[5], (Record, RecordError))


@PROPERTY
@given(
    rle=st.one_of(
        st.text(max_size=40),
        st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=8).map(
            lambda v: " ".join(map(str, v))
        ),
        st.lists(st.integers(min_value=-2, max_value=40), max_size=8).map(
            lambda v: " ".join(map(str, v))
        ),
    ),
    height=st.integers(min_value=-1, max_value=9),
    width=st.integers(min_value=1, max_value=9),
    relative=st.booleans(),
    order=st.sampled_from(["F", "C"]),
)
def test_rle_of_anything(rle: str, height: int, width: int, relative: bool, order: str) -> None:
    try:
        mask = rle_decode(rle, height, width, order=order, relative=relative)
    except MaskError as err:
        str(err).encode("utf-8")
        return
    assert mask.shape == (height, width) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}


BOX_NUMBER = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 0.5, 3]),
)
BOX = st.one_of(
    st.lists(BOX_NUMBER, min_size=3, max_size=5),
    st.dictionaries(st.sampled_from(["x", "y", "width", "height", "z"]), BOX_NUMBER),
    JSON_VALUE,
)


@PROPERTY
@given(
    boxes=st.lists(BOX, max_size=4),
    height=st.integers(min_value=1, max_value=9),
    width=st.integers(min_value=1, max_value=9),
)
def test_boxes_of_anything(boxes: list[Any], height: int, width: int) -> None:
    try:
        mask = boxes_to_mask(boxes, height, width)
    except MaskError as err:
        str(err).encode("utf-8")
        return
    assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 1}


@PROPERTY
@given(mask=JSON_VALUE)
def test_a_records_mask_of_anything(mask: Any) -> None:
    """What a JSONL record may hold as ``mask``: decoded, ``None``, or a MaskError."""
    if isinstance(mask, str) and mask.lower().endswith((".png", ".dcm", ".jpg")):
        mask = mask + "x"  # a file name is read from disk, which is not what this tests
    try:
        out = load_mask(mask, 6, 5)
    except MaskError:
        return
    assert out is None or out.shape == (6, 5)
