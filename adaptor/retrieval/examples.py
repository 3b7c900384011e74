"""Example searches that ``adaptor run`` prints once its index is built."""

from __future__ import annotations

from pathlib import Path

from adaptor.retrieval.searcher import Searcher
from adaptor.retrieval.table import format_hits

EXAMPLE_TEXTS = (
    "left lower lobe opacity with effusion",
    "large right pneumothorax",
    "no acute cardiopulmonary process",
)


def example_searches(searcher: Searcher, texts: tuple[str, ...] = EXAMPLE_TEXTS, k: int = 3) -> str:
    """Tables of the top-``k`` images for each text, then the top-``k`` reports for one
    indexed test image (read from disk and run through the image encoder, as a query is)."""
    blocks = [
        format_hits(hits, title=f"text {text!r} -> images")
        for text, hits in zip(texts, searcher.search_text(list(texts), k=k), strict=True)
    ]
    root = searcher.manifest.get("image_root")
    record = searcher.store.first_with_image("test") or searcher.store.first_with_image()
    if root and record:
        hits = searcher.search_image([Path(root) / record["image"]], k=k, target="report")[0]
        own = " ".join(record["report"].split())
        own = own if len(own) <= 60 else own[:59] + "…"
        title = f"image of {record['id']} -> reports (its own: {own!r})"
        blocks.append(format_hits(hits, title=title))
    return "\n\n".join(blocks)
