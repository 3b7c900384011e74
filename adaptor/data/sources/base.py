"""What every source is: something that yields records (or per-record errors) in a fixed order."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from adaptor.data.records import Record, RecordError
from adaptor.errors import AdaptorError


class SourceError(AdaptorError, ValueError):
    """The source as a whole cannot be read (missing file, wrong columns); names the file."""


SourceItem = Record | RecordError


class Source(Protocol):
    """A dataset layout on disk. ``items()`` yields every record in a deterministic order.

    A record that cannot be built yields a :class:`RecordError` in its place, so
    the caller can report, count and skip it without losing its position.

    An image-only layout (no reports at all) sets ``has_reports = False``; see
    :func:`has_reports`.
    """

    spec: str
    root: Path

    def items(self) -> Iterator[SourceItem]: ...


def has_reports(source: Source) -> bool:
    """False for a layout that declares it has no reports (its records are image-only, so an
    empty report is expected rather than a defect); True for every other source."""
    return bool(getattr(source, "has_reports", True))


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``KIND:PATH[?key=value&key=value]`` string (options are per layout)."""

    kind: str
    path: Path
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> SourceSpec:
        kind, sep, rest = spec.partition(":")
        path, _, query = rest.partition("?")
        if not sep or not kind or not path:
            raise SourceError(
                f"source {spec!r} is not of the form KIND:PATH (e.g. jsonl:data.jsonl)"
            )
        options: dict[str, str] = {}
        for pair in filter(None, query.split("&")):
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise SourceError(f"source option {pair!r} in {spec!r} is not KEY=VALUE")
            options[key.strip().lower()] = value.strip()
        return cls(kind.strip().lower(), Path(path).expanduser(), options)


def reject_unknown_options(kind: str, options: dict[str, str], known: dict[str, str]) -> None:
    """Raise SourceError naming any option a layout does not take, with the ones it does."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        accepted = ", ".join(f"{k} ({v})" for k, v in known.items()) or "none"
        raise SourceError(f"{kind} source does not take option(s) {unknown}; accepted: {accepted}")


def patient_fraction(patient_id: str) -> float:
    """A stable number in [0, 1) from a patient id (sha256), for seeded patient-level splits."""
    digest = hashlib.sha256(patient_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
