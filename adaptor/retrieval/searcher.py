"""Answering queries from an index folder: text → images, image → reports, image → images."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from adaptor.encoders import ImageEncoder, TextEncoder
from adaptor.retrieval.errors import RetrievalError
from adaptor.retrieval.folder import load_faiss, load_index_adaptor, read_manifest
from adaptor.retrieval.query import ImageInput, QueryEncoder
from adaptor.retrieval.store import MetadataStore

Target = Literal["image", "report"]
TARGETS: dict[str, str] = {"image": "image", "report": "text"}  # target → index side


@dataclass
class Hit:
    """One result: the record id, its inner-product score, and its stored metadata."""

    id: str
    score: float
    rank: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


class Searcher:
    """An opened index folder: FAISS indexes, the metadata store and the query encoders."""

    def __init__(
        self,
        folder: Path,
        *,
        device: str = "cpu",
        image_encoder: ImageEncoder | None = None,
        text_encoder: TextEncoder | None = None,
    ):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.indexes = {
            side: load_faiss(self.folder, self.manifest, side) for side in TARGETS.values()
        }
        self.store = MetadataStore(self.folder)
        self.encoder = QueryEncoder(
            load_index_adaptor(self.folder, self.manifest),
            self.manifest["encoders"],
            device=device,
            image_encoder=image_encoder,
            text_encoder=text_encoder,
        )

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def search_text(self, texts: list[str], k: int = 10) -> list[list[Hit]]:
        """Images whose Adaptor embedding is closest to each text's, best first."""
        return self.search_vectors(self.encoder.texts(texts), k, "image")

    def search_image(
        self,
        images: list[ImageInput | torch.Tensor],
        k: int = 10,
        target: Target = "image",
    ) -> list[list[Hit]]:
        """Images (``target="image"``) or reports (``"report"``) closest to each query image."""
        return self.search_vectors(self.encoder.images(images), k, target)

    def search_vectors(self, vectors: np.ndarray, k: int, target: Target) -> list[list[Hit]]:
        """Top-``k`` records of the ``target`` index for each row of unit ``vectors``."""
        if target not in TARGETS:
            raise RetrievalError(f"unknown search target {target!r}: use one of {list(TARGETS)}")
        if k < 1:
            raise RetrievalError(f"k must be at least 1, got {k}")
        index = self.indexes[TARGETS[target]]
        if index.ntotal == 0:
            raise RetrievalError(f"the index in {self.folder} holds no {target}s to search")
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        scores, labels = index.search(queries, min(k, int(index.ntotal)))
        found = self.store.rows(sorted({int(x) for x in labels.ravel() if x >= 0}))
        return [
            [
                Hit(found[label]["id"], float(score), rank, _without_id(found[label]))
                for rank, (score, label) in enumerate(
                    (s, int(lab)) for s, lab in zip(row_s, row_l, strict=True) if lab >= 0
                )
            ]
            for row_s, row_l in zip(scores, labels, strict=True)
        ]

    def record(self, record_id: str) -> dict[str, Any] | None:
        """Metadata of one indexed record (None for an unknown id)."""
        return self.store.by_id(record_id)

    def thumbnail(self, record_id: str) -> bytes | None:
        """The JPEG thumbnail made at build time (None: unknown id or no image)."""
        return self.store.thumbnail(record_id)

    def stats(self) -> dict[str, Any]:
        """What the index holds and how it was built."""
        m = self.manifest
        return {
            "records": m["count"],
            "thumbnails": m.get("thumbnails", 0),
            "factory": m["factory"],
            "metric": m["metric"],
            "sides": {
                target: {
                    "count": m["sides"][side]["count"],
                    "params": m["sides"][side].get("params", {}),
                    "recall_at_10": m["sides"][side].get("recall_at_10"),
                }
                for target, side in TARGETS.items()
            },
            "encoders": m["encoders"],
            "adaptor_sha256": m["adaptor"]["sha256"],
            "split": m.get("split"),
        }

    def close(self) -> None:
        """Release the metadata store."""
        self.store.close()


def open_searcher(
    index_dir: Path,
    *,
    device: str = "cpu",
    image_encoder: ImageEncoder | None = None,
    text_encoder: TextEncoder | None = None,
) -> Searcher:
    """Open an index folder made by :func:`~adaptor.retrieval.index.build_index`.

    Encoders are built from the names in its manifest on first use; encoders passed in
    must have the fingerprints the index was built with.
    """
    return Searcher(
        Path(index_dir), device=device, image_encoder=image_encoder, text_encoder=text_encoder
    )


def _without_id(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "id"}
