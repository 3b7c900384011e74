"""What every source is: something that yields records (or per-record errors) in a fixed order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from adaptor.data.records import Record, RecordError


class SourceError(ValueError):
    """The source as a whole cannot be read (missing file, wrong columns); names the file."""


SourceItem = Record | RecordError


class Source(Protocol):
    """A dataset layout on disk. ``items()`` yields every record in a deterministic order.

    A record that cannot be built yields a :class:`RecordError` in its place, so
    the caller can report, count and skip it without losing its position.
    """

    spec: str
    root: Path

    def items(self) -> Iterator[SourceItem]: ...


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``KIND:PATH`` string."""

    kind: str
    path: Path

    @classmethod
    def parse(cls, spec: str) -> SourceSpec:
        kind, sep, path = spec.partition(":")
        if not sep or not kind or not path:
            raise SourceError(
                f"source {spec!r} is not of the form KIND:PATH (e.g. jsonl:data.jsonl)"
            )
        return cls(kind.strip().lower(), Path(path).expanduser())
