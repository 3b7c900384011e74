"""The common paired record every source yields, and the rules it must follow.

A :class:`Record` is one image–report pair. Nothing downstream knows which
dataset it came from. Label values follow the CheXpert convention:
``1`` positive, ``0`` negative, ``-1`` uncertain; a label that is absent from
``labels`` (or ``None``) is missing.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adaptor.atomic import atomic_open
from adaptor.errors import AdaptorError

SPLITS = ("train", "val", "test")
LABEL_VALUES = (1, 0, -1)

# Accepted spellings of label values in users' files, mapped to the canonical value.
_LABEL_SPELLINGS: dict[str, int | None] = {
    "1": 1,
    "1.0": 1,
    "true": 1,
    "yes": 1,
    "positive": 1,
    "pos": 1,
    "0": 0,
    "0.0": 0,
    "false": 0,
    "no": 0,
    "negative": 0,
    "neg": 0,
    "-1": -1,
    "-1.0": -1,
    "uncertain": -1,
    "u": -1,
    "": None,
    "nan": None,
    "none": None,
    "null": None,
    "missing": None,
    "na": None,
}


class RecordError(AdaptorError, ValueError):
    """A record that cannot be used; the message names the record and what is wrong."""

    def __init__(self, record_id: str, reason: str, path: str | Path | None = None):
        self.record_id = record_id
        self.reason = reason
        self.path = str(path) if path is not None else None
        where = f" ({self.path})" if self.path else ""
        super().__init__(f"record {record_id!r}{where}: {reason}")


@dataclass
class Record:
    """One paired example.

    ``image`` and ``mask`` (when it is a file) are absolute paths once a source
    has resolved them. ``mask`` may also be an RLE string or a list of boxes
    ``[[x0, y0, x1, y1], ...]`` in pixel units of the image. ``metadata`` holds a
    source's other columns as text (sex, age, view, …); it is neither label nor input.
    """

    id: str
    image: Path
    report: str = ""
    labels: dict[str, int | None] = field(default_factory=dict)
    mask: str | list[list[float]] | None = None
    split: str = "train"
    patient_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        """Plain JSON-able dict, no empty ``metadata``; paths made relative to ``relative_to``."""
        out = asdict(self)
        if not self.metadata:
            del out["metadata"]
        out["image"] = relative_path(self.image, relative_to)
        if isinstance(self.mask, (str, Path)) and _looks_like_path(str(self.mask)):
            out["mask"] = relative_path(Path(self.mask), relative_to)
        return out


def parse_label_value(value: Any, *, record_id: str, label: str) -> int | None:
    """Map a user's label value to 1, 0, -1 or None (missing); raise RecordError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and math.isnan(value):
            return None
        if value in LABEL_VALUES:
            return int(value)
    elif isinstance(value, str):
        key = value.strip().lower()
        if key in _LABEL_SPELLINGS:
            return _LABEL_SPELLINGS[key]
    raise RecordError(
        record_id,
        f"unknown value {reprlib.repr(value)} for label {label!r} (expected 1, 0, -1 or empty)",
    )


def validate_split(split: Any, *, record_id: str) -> str:
    """Return the split name, raising RecordError for anything but train/val/test."""
    name = str(split or "train").strip().lower()
    aliases = {"valid": "val", "validation": "val", "validate": "val", "dev": "val"}
    name = aliases.get(name, name)
    if name not in SPLITS:
        raise RecordError(
            record_id, f"unknown split {reprlib.repr(split)} (expected one of {SPLITS})"
        )
    return name


def is_mask_path(mask: Any) -> bool:
    """True when a record's mask names a file rather than holding RLE or boxes."""
    return isinstance(mask, (str, Path)) and _looks_like_path(str(mask))


def _looks_like_path(text: str) -> bool:
    return text.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"))


def relative_path(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` when it lies below it, else unchanged, as a string."""
    if root is None:
        return str(path)
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def write_records_jsonl(records: list[Record], path: Path) -> None:
    """Write records as JSONL with paths relative to the file's folder (atomically)."""
    path = Path(path)
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record.to_json(relative_to=path.parent), ensure_ascii=False) + "\n")
