"""The readable table of search results that ``adaptor search`` and ``adaptor run`` print."""

from __future__ import annotations

from typing import Any

from adaptor.retrieval.searcher import Hit


def label_summary(labels: dict[str, Any]) -> str:
    """Positive findings by name (uncertain ones with ``?``), or ``-`` when there are none."""
    positive = [name for name, value in labels.items() if value == 1]
    uncertain = [f"{name}?" for name, value in labels.items() if value == -1]
    return ", ".join(positive + uncertain) or "-"


def format_hits(hits: list[Hit], *, title: str | None = None, report_chars: int = 70) -> str:
    """Rank, score, id, split, positive labels and the start of the report, one hit a line."""
    rows = [
        (
            str(hit.rank + 1),
            f"{hit.score:.3f}",
            hit.id,
            str(hit.metadata.get("split") or "-"),
            label_summary(hit.metadata.get("labels") or {}),
            _clip(" ".join(str(hit.metadata.get("report") or "").split()), report_chars),
        )
        for hit in hits
    ]
    header = ("#", "score", "id", "split", "labels", "report")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = [title] if title else []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    if not rows:
        lines.append("(no results)")
    return "\n".join(lines)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"
