"""Users' own data as CSV or JSONL: one row per record.

Columns (CSV) or keys (JSONL): ``id``, ``image``, ``report``, labels either as
one column per label or a ``labels`` object (a JSON string in CSV), and
optional ``mask``, ``split``, ``patient_id``. Relative paths resolve against
the file's folder.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from adaptor.data.records import (
    Record,
    RecordError,
    is_mask_path,
    parse_label_value,
    validate_split,
)
from adaptor.data.sources.base import SourceError, SourceItem

REQUIRED = ("id", "image")
RESERVED = ("id", "image", "report", "labels", "mask", "split", "patient_id")


class TabularSource:
    """Records from a CSV or JSONL file (``csv:FILE`` / ``jsonl:FILE``)."""

    def __init__(self, path: Path, fmt: str):
        self.path = Path(path).resolve()
        self.root = self.path.parent
        self.fmt = fmt
        self.spec = f"{fmt}:{self.path}"
        if not self.path.is_file():
            raise SourceError(f"{fmt} source file not found: {self.path}")

    def items(self) -> Iterator[SourceItem]:
        rows = self._csv_rows() if self.fmt == "csv" else self._jsonl_rows()
        for where, row in rows:
            if isinstance(row, RecordError):
                yield row
                continue
            try:
                yield row_to_record(row, base_dir=self.root, where=where)
            except RecordError as err:
                yield err

    def _csv_rows(self) -> Iterator[tuple[str, dict[str, Any] | RecordError]]:
        # surrogateescape keeps undecodable bytes so one bad row does not sink the file
        with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise SourceError(
                    f"{self.path}: missing required column(s) {missing}; "
                    f"found {reader.fieldnames or []}"
                )
            for line_no, row in enumerate(reader, start=2):
                yield f"{self.path.name}:{line_no}", _check_utf8(row, self.path, line_no)

    def _jsonl_rows(self) -> Iterator[tuple[str, dict[str, Any] | RecordError]]:
        with open(self.path, "rb") as fh:
            for line_no, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                where = f"{self.path.name}:{line_no}"
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    rid = _guess_id(raw) or where
                    yield (
                        where,
                        RecordError(
                            rid,
                            f"line {line_no} is not valid UTF-8 ({err.reason} at byte {err.start})",
                            self.path,
                        ),
                    )
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as err:
                    yield (
                        where,
                        RecordError(
                            where, f"line {line_no} is not valid JSON: {err.msg}", self.path
                        ),
                    )
                    continue
                if not isinstance(row, dict):
                    yield (
                        where,
                        RecordError(where, f"line {line_no} is not a JSON object", self.path),
                    )
                    continue
                yield where, row


def row_to_record(row: Mapping[str, Any], *, base_dir: Path, where: str) -> Record:
    """Build a Record from one CSV/JSONL row; raise RecordError naming the row when it is bad."""
    rid = str(row.get("id") or "").strip()
    if not rid:
        raise RecordError(where, "empty or missing 'id'")
    image = str(row.get("image") or "").strip()
    if not image:
        raise RecordError(rid, "empty or missing 'image'")
    labels = _labels(row, rid)
    report = row.get("report")
    mask = row.get("mask") or None
    if isinstance(mask, str) and is_mask_path(mask):
        mask = str(_resolve(mask, base_dir))
    return Record(
        id=rid,
        image=_resolve(image, base_dir),
        report="" if report is None else str(report),
        labels=labels,
        mask=mask,
        split=validate_split(row.get("split"), record_id=rid),
        patient_id=str(row["patient_id"]) if row.get("patient_id") not in (None, "") else None,
    )


def _labels(row: Mapping[str, Any], rid: str) -> dict[str, int | None]:
    raw = row.get("labels")
    if isinstance(raw, str) and raw.strip():
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as err:
            raise RecordError(rid, f"'labels' is not a JSON object: {err.msg}") from err
    if raw not in (None, "") and not isinstance(raw, Mapping):
        raise RecordError(
            rid, f"'labels' must be an object mapping label name to value, got {raw!r}"
        )
    merged = dict(raw or {})
    merged.update({k: v for k, v in row.items() if k not in RESERVED and k is not None})
    return {str(k): parse_label_value(v, record_id=rid, label=str(k)) for k, v in merged.items()}


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base_dir / p)


def _check_utf8(row: dict[str, Any], path: Path, line_no: int) -> dict[str, Any] | RecordError:
    for key, value in row.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as err:
                rid = str(row.get("id") or f"{path.name}:{line_no}")
                rid = rid.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                return RecordError(
                    rid,
                    f"column {key!r} on line {line_no} is not valid UTF-8 "
                    f"(at character {err.start})",
                    path,
                )
    return row


def _guess_id(raw: bytes) -> str | None:
    try:
        obj = json.loads(raw.decode("utf-8", "replace"))
    except json.JSONDecodeError:
        return None
    return str(obj.get("id")) if isinstance(obj, dict) and obj.get("id") else None
