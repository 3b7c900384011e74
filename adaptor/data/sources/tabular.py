"""Users' own data as CSV or JSONL: one row per record.

Columns (CSV) or top-level keys (JSONL):

- ``id`` and ``image`` (required); ``report``, ``split``, ``patient_id``, ``mask``;
- ``labels``: an object of label name → value (a JSON string in CSV), always labels;
- ``metadata``: an object of name → value (a JSON string in CSV), always metadata;
- every other column is
  - a **label** when named in ``?labels=a,b`` or, without that option, when every
    non-empty value it has in the whole file is a label spelling (1/0/-1, yes/no, …);
  - a **one-hot category** when named in ``?onehot=c``: one label ``c=VALUE`` per value
    seen in the file, 1 for the row's value and 0 for the others (all missing where
    the cell is empty); ``adaptor finetune --kind multiclass --labels c=0,c=1,…``
    trains a softmax head on such a set;
  - otherwise **metadata**: kept as text in ``Record.metadata`` (empty cells left out).

A column with a blank name (a pandas index) is ignored. The file is read twice: once
to decide what each column is, so every row gets the same columns, and once for the
records. A named label or one-hot column that rejects more than half of the rows is a
:class:`SourceError` before any record comes out, rather than most of the set skipped.
A CSV may be gzipped (``.csv.gz``) and its fields any length; a row with more or fewer
fields than the header is that row's error. Relative paths resolve against the file's folder.
"""

from __future__ import annotations

import csv
import json
import reprlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptor.data.masks import MaskError, check_boxes
from adaptor.data.records import (
    Record,
    RecordError,
    is_mask_path,
    parse_label_value,
    validate_split,
)
from adaptor.data.sources.base import SourceError, SourceItem, reject_unknown_options
from adaptor.data.sources.csvfile import open_csv

OPTIONS = {
    "labels": "comma-separated label columns (default: columns whose values are all 1/0/-1 "
    "spellings; empty for none)",
    "onehot": "comma-separated categorical columns, each one label NAME=VALUE (1/0) per value",
}
REQUIRED = ("id", "image")
RESERVED = ("id", "image", "report", "labels", "metadata", "mask", "split", "patient_id")
MAX_REJECTED_FRACTION = 0.5  # a named column refusing more rows than this fails the source
MAX_ONEHOT_VALUES = 1000  # more distinct values than this is not a category
EXAMPLES = 5  # bad values quoted in a SourceError

RowItem = tuple[str, dict[str, Any] | RecordError]


@dataclass(frozen=True)
class Columns:
    """What a file's non-reserved columns are; a column in neither field is metadata."""

    labels: tuple[str, ...] = ()
    onehot: dict[str, tuple[str, ...]] = field(default_factory=dict)  # column -> its values


def open_tabular(path: Path, fmt: str, options: Mapping[str, str]) -> TabularSource:
    """A ``csv:FILE`` / ``jsonl:FILE`` source with its options (see :data:`OPTIONS`)."""
    reject_unknown_options(fmt, dict(options), OPTIONS)
    labels = options.get("labels")
    return TabularSource(
        path,
        fmt,
        labels=None if labels is None else _names(labels),
        onehot=_names(options.get("onehot", "")),
    )


class TabularSource:
    """Records from a CSV or JSONL file (``csv:FILE`` / ``jsonl:FILE``).

    ``labels`` names the label columns (``None``: infer them from the values);
    ``onehot`` names categorical columns turned into one-hot labels.
    """

    has_reports = True  # an image-only set (``adaptor synth --no-reports``) sets False

    def __init__(
        self,
        path: Path,
        fmt: str,
        *,
        labels: Sequence[str] | None = None,
        onehot: Sequence[str] = (),
    ):
        self.path = Path(path).resolve()
        self.root = self.path.parent
        self.fmt = fmt
        self.labels = None if labels is None else tuple(dict.fromkeys(labels))
        self.onehot = tuple(dict.fromkeys(onehot))
        query = [f"labels={','.join(self.labels)}"] if self.labels is not None else []
        query += [f"onehot={','.join(self.onehot)}"] if self.onehot else []
        self.spec = f"{fmt}:{self.path}" + ("?" + "&".join(query) if query else "")
        if not self.path.is_file():
            raise SourceError(f"{fmt} source file not found: {self.path}")
        named = [*(self.labels or ()), *self.onehot]
        reserved = [c for c in named if c in RESERVED]
        if reserved:
            raise SourceError(f"{self.spec}: {reserved} are reserved columns, not labels")
        both = sorted(set(self.labels or ()) & set(self.onehot))
        if both:
            raise SourceError(f"{self.spec}: {both} named in both labels= and onehot=")

    def items(self) -> Iterator[SourceItem]:
        columns = self.columns()
        for where, row in self._rows():
            if isinstance(row, RecordError):
                yield row
                continue
            try:
                yield row_to_record(row, base_dir=self.root, where=where, columns=columns)
            except RecordError as err:
                yield err

    def columns(self) -> Columns:
        """Read the whole file once and decide every column; SourceError for a failing named one."""
        seen: dict[str, None] = {}  # non-reserved columns in first-seen order
        not_labels: set[str] = set()
        informative: set[str] = set()  # columns with at least one 1/0/-1 value
        categories: dict[str, set[str]] = {c: set() for c in self.onehot}
        rejected: dict[str, int] = dict.fromkeys((*(self.labels or ()), *self.onehot), 0)
        examples: dict[str, list[str]] = {c: [] for c in rejected}
        rows = 0
        for _, row in self._rows():
            if isinstance(row, RecordError):
                continue
            rows += 1
            for key, value in row.items():
                if key in RESERVED:
                    continue
                seen.setdefault(key)
                try:
                    if key in categories:
                        text = _category(value, key, "")
                        if text is not None:
                            categories[key].add(text)
                            self._check_categories(key, categories[key])
                    elif _label(value, key, "") is not None:
                        informative.add(key)
                except RecordError:
                    not_labels.add(key)
                    if key in rejected:
                        rejected[key] += 1
                        bad = reprlib.repr(value)
                        if len(examples[key]) < EXAMPLES and bad not in examples[key]:
                            examples[key].append(bad)
        absent = [c for c in rejected if rows and c not in seen]
        if absent:
            raise SourceError(f"{self.spec}: no column(s) {absent}; found {list(seen)}")
        for column, count in rejected.items():
            if count > MAX_REJECTED_FRACTION * rows:
                role = "one-hot" if column in self.onehot else "label"
                hint = (
                    ""
                    if column in self.onehot
                    else f"; use ?onehot={column} for a category, or leave it out of ?labels= "
                    "to keep it as metadata"
                )
                raise SourceError(
                    f"{self.path}: {role} column {column!r} rejects {count} of {rows} rows "
                    f"(values such as {', '.join(examples[column])}){hint}"
                )
        labels = self.labels
        if labels is None:
            labels = tuple(c for c in seen if c in informative and c not in not_labels)
        return Columns(
            labels=labels,
            onehot={c: tuple(sorted(v, key=_category_order(v))) for c, v in categories.items()},
        )

    def _check_categories(self, column: str, values: set[str]) -> None:
        if len(values) > MAX_ONEHOT_VALUES:
            raise SourceError(
                f"{self.path}: one-hot column {column!r} has over {MAX_ONEHOT_VALUES} distinct "
                "values; is it a category?"
            )

    def _rows(self) -> Iterator[RowItem]:
        try:
            yield from self._csv_rows() if self.fmt == "csv" else self._jsonl_rows()
        except (OSError, EOFError) as err:  # unreadable, or a .csv.gz cut short or not gzip
            raise SourceError(f"{self.path}: cannot read the file: {err}") from None

    def _csv_rows(self) -> Iterator[RowItem]:
        # surrogateescape keeps undecodable bytes so one bad row does not sink the file
        with open_csv(self.path, errors="surrogateescape") as fh:
            reader = csv.DictReader(fh)
            try:
                header = [str(name).strip() for name in reader.fieldnames or []]
            except csv.Error as err:
                raise SourceError(f"{self.path}: the header is not readable CSV: {err}") from None
            if _bad_text(header) is not None:
                raise SourceError(f"{self.path}: the header is not valid UTF-8: {header}")
            named = [name for name in header if name]
            twice = sorted({name for name in named if named.count(name) > 1})
            if twice:
                raise SourceError(f"{self.path}: column(s) {twice} appear more than once")
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise SourceError(
                    f"{self.path}: missing required column(s) {missing}; found {header}"
                )
            reader.fieldnames = header
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as err:
                    where = f"{self.path.name}:{reader.line_num}"
                    reason = f"line {reader.line_num} is not valid CSV: {err}"
                    yield where, RecordError(where, reason, self.path)
                    continue
                yield f"{self.path.name}:{reader.line_num}", self._csv_row(row, reader.line_num)

    def _csv_row(self, row: dict[Any, Any], line_no: int) -> dict[str, Any] | RecordError:
        rid = _printable(str(row.get("id") or f"{self.path.name}:{line_no}"))
        if None in row:
            return RecordError(
                rid,
                f"line {line_no} has more fields than the header (an unquoted comma?)",
                self.path,
            )
        if None in row.values():
            return RecordError(rid, f"line {line_no} has fewer fields than the header", self.path)
        row = {key: value for key, value in row.items() if key}
        for key, value in row.items():
            at = _bad_text(value)
            if at is not None:
                return RecordError(
                    rid,
                    f"column {key!r} on line {line_no} is not valid UTF-8 (at character {at})",
                    self.path,
                )
        return row

    def _jsonl_rows(self) -> Iterator[RowItem]:
        with open(self.path, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                where = f"{self.path.name}:{line_no}"
                row = _json_row(raw, line_no, where, self.path)
                if isinstance(row, dict):
                    row = {key: value for key, value in row.items() if key.strip()}
                yield where, row


def _json_row(raw: bytes, line_no: int, where: str, path: Path) -> dict[str, Any] | RecordError:
    """One JSONL line as an object, or the RecordError saying why it is not one."""
    try:
        text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as err:
        reason = f"line {line_no} is not valid UTF-8 ({err.reason} at byte {err.start})"
        return RecordError(_guess_id(raw) or where, reason, path)
    try:
        row = json.loads(text)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, over-long ints, deep nesting
        reason = getattr(err, "msg", None) or f"{type(err).__name__}: {err}"
        return RecordError(where, f"line {line_no} is not valid JSON: {reason}", path)
    if not isinstance(row, dict):
        return RecordError(where, f"line {line_no} is not a JSON object", path)
    for key, value in row.items():
        at = _bad_text([key, value])
        if at is not None:
            rid = _printable(str(row.get("id") or where))
            reason = f"key {key!r} on line {line_no} holds text that is not valid Unicode"
            return RecordError(rid, reason, path)
    return row


def row_to_record(
    row: Mapping[str, Any], *, base_dir: Path, where: str, columns: Columns
) -> Record:
    """Build a Record from one CSV/JSONL row; raise RecordError naming the row when it is bad."""
    rid = _text(row.get("id"), where)
    if not rid:
        raise RecordError(where, "empty or missing 'id'")
    image = _text(row.get("image"), rid)
    if not image:
        raise RecordError(rid, "empty or missing 'image'")
    if "\x00" in rid + image:
        raise RecordError(rid, "'id' or 'image' holds a NUL character")
    report = row.get("report")
    if report is not None and not isinstance(report, str):
        raise RecordError(rid, f"'report' must be text, got {reprlib.repr(report)}")
    mask = row.get("mask") or None
    if mask is not None and not isinstance(mask, (str, list)):
        raise RecordError(
            rid,
            f"'mask' must be a path, an RLE string or a list of boxes, got {reprlib.repr(mask)}",
        )
    if isinstance(mask, list):
        try:
            check_boxes(mask)
        except MaskError as err:
            raise RecordError(rid, f"bad mask: {err}") from None
    if isinstance(mask, str) and is_mask_path(mask):
        mask = str(_resolve(mask, base_dir))
    labels, metadata = _labels_and_metadata(row, rid, columns)
    return Record(
        id=rid,
        image=_resolve(image, base_dir),
        report=report or "",
        labels=labels,
        mask=mask,
        split=validate_split(row.get("split"), record_id=rid),
        patient_id=_text(row.get("patient_id"), rid) or None,
        metadata=metadata,
    )


def _labels_and_metadata(
    row: Mapping[str, Any], rid: str, columns: Columns
) -> tuple[dict[str, int | None], dict[str, str]]:
    labels = {str(k): _label(v, str(k), rid) for k, v in _object(row, "labels", rid).items()}
    metadata: dict[str, str] = {}
    for key, value in _object(row, "metadata", rid).items():
        text = _text(value, rid)
        if text:
            metadata[str(key)] = text
    for key, value in row.items():
        if key in RESERVED:
            continue
        if key in columns.labels:
            labels[key] = _label(value, key, rid)
        elif key in columns.onehot:
            chosen = _category(value, key, rid)
            for option in columns.onehot[key]:
                labels[f"{key}={option}"] = None if chosen is None else int(option == chosen)
        else:
            text = _text(value, rid)
            if text:
                metadata[key] = text
    return labels, metadata


def _object(row: Mapping[str, Any], key: str, rid: str) -> Mapping[str, Any]:
    """Row field ``key`` as a mapping (a JSON object, or its text in CSV); empty when absent."""
    raw = row.get(key)
    if isinstance(raw, str) and raw.strip():
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError) as err:
            raise RecordError(rid, f"{key!r} is not a JSON object: {err}") from None
    if raw in (None, ""):
        return {}
    if not isinstance(raw, Mapping):
        raise RecordError(
            rid, f"{key!r} must be an object of name to value, got {reprlib.repr(raw)}"
        )
    return raw


def _label(value: Any, column: str, rid: str) -> int | None:
    return parse_label_value(value, record_id=rid, label=column)


def _category(value: Any, column: str, rid: str) -> str | None:
    """A one-hot column's value as text (``None`` when empty); RecordError when not a scalar."""
    if isinstance(value, (dict, list)):
        raise RecordError(
            rid, f"one-hot column {column!r} holds {reprlib.repr(value)}, not a value"
        )
    text = _text(value, rid)
    return text or None


def _category_order(values: set[str]) -> Any:
    """Sort key for a category's values: numeric when every value is a number, else text."""
    try:
        for value in values:
            float(value)
    except ValueError:
        return str
    return lambda value: (float(value), value)


def _text(value: Any, rid: str) -> str:
    """A value as stripped text: strings as they are, anything else as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:
        raise RecordError(rid, f"value {reprlib.repr(value)} is nested too deeply") from None


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base_dir / p)


def _bad_text(value: Any) -> int | None:
    """Where the first string inside ``value`` stops being encodable as UTF-8 (a lone
    surrogate: an undecodable CSV byte or a JSON ``\\udXXX`` escape); ``None`` if nowhere."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                return err.start
        elif isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _guess_id(raw: bytes) -> str | None:
    try:
        obj = json.loads(raw.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    return _printable(str(obj.get("id"))) if isinstance(obj, dict) and obj.get("id") else None


def _printable(text: str) -> str:
    """``text`` with every character UTF-8 cannot encode (lone surrogates) replaced."""
    return text.encode("utf-8", "replace").decode("utf-8")
