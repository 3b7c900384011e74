"""Sources: every dataset layout yields the common :class:`~adaptor.data.records.Record`.

``open_source("KIND:PATH")`` picks the layout by kind. Built in:

- ``synthetic:DIR`` — a folder written by ``adaptor synth`` (its ``records.jsonl``); one
  written without reports is image-only (``has_reports`` False)
- ``jsonl:FILE`` and ``csv:FILE`` — users' own data (see :mod:`.tabular`;
  ``?labels=a,b&onehot=c`` name label and categorical columns)
- published dataset layouts, one module each: ``mimic-cxr``, ``chexpert``,
  ``rsna-pneumonia``, ``siim-acr``, ``covidx``, ``chestxray14``, ``iu-xray``
  (``KIND:ROOT[?option=value&…]``)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from adaptor.data.sources.base import (
    Source,
    SourceError,
    SourceItem,
    SourceSpec,
    reject_unknown_options,
)
from adaptor.data.sources.chestxray14 import open_chestxray14
from adaptor.data.sources.chexpert import open_chexpert
from adaptor.data.sources.covidx import open_covidx
from adaptor.data.sources.iu_xray import open_iu_xray
from adaptor.data.sources.mimic_cxr import open_mimic_cxr
from adaptor.data.sources.rsna import open_rsna
from adaptor.data.sources.siim import open_siim
from adaptor.data.sources.tabular import TabularSource, open_tabular

__all__ = ["Source", "SourceError", "SourceItem", "SourceSpec", "open_source", "source_kinds"]


def _synthetic(path: Path, options: dict[str, str]) -> Source:
    reject_unknown_options("synthetic", options, {})
    records = path / "records.jsonl"
    if not records.is_file():
        raise SourceError(
            f"synthetic source {path} has no records.jsonl; create one with "
            f"`adaptor synth --out {path}`"
        )
    source = TabularSource(records, "jsonl")
    source.spec = f"synthetic:{path.resolve()}"
    source.has_reports = _any_report(records)  # `adaptor synth --no-reports`: image-only
    return source


def _any_report(records: Path) -> bool:
    """Whether any line of a synthetic ``records.jsonl`` holds a report (stops at the first)."""
    with open(records, "rb") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the source reports the bad line itself
            report = row.get("report") if isinstance(row, dict) else None
            if isinstance(report, str) and report.strip():
                return True
    return False


def _tabular(fmt: str) -> Callable[[Path, dict[str, str]], Source]:
    def factory(path: Path, options: dict[str, str]) -> Source:
        return open_tabular(path, fmt, options)

    return factory


# kind -> factory(root, options); each dataset layout registers one here
_KINDS: dict[str, Callable[[Path, dict[str, str]], Source]] = {
    "synthetic": _synthetic,
    "jsonl": _tabular("jsonl"),
    "csv": _tabular("csv"),
    "mimic-cxr": open_mimic_cxr,
    "chexpert": open_chexpert,
    "rsna-pneumonia": open_rsna,
    "siim-acr": open_siim,
    "covidx": open_covidx,
    "chestxray14": open_chestxray14,
    "iu-xray": open_iu_xray,
}


def source_kinds() -> list[str]:
    """The KIND names ``open_source`` accepts."""
    return sorted(_KINDS)


def open_source(spec: str) -> Source:
    """Open a ``KIND:PATH`` source; raise SourceError with the accepted kinds when unknown."""
    parsed = SourceSpec.parse(spec)
    factory = _KINDS.get(parsed.kind)
    if factory is None:
        raise SourceError(
            f"unknown source kind {parsed.kind!r} in {spec!r}; known: {source_kinds()}"
        )
    return factory(parsed.path, parsed.options)
