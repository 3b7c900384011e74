"""Recall against exact search, and choosing efSearch / nprobe for a target recall.

An approximate FAISS index trades recall for speed through one search-time knob: ``nprobe``
(inverted lists visited, IVF) or ``efSearch`` (candidate list size, HNSW). :func:`tune`
sweeps that knob upwards on sample queries whose exact top-k is known and keeps the
smallest (fastest) value that reaches the target recall@k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np

EF_SEARCH_VALUES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048)


def search_knob(index: faiss.Index) -> tuple[str, list[int]] | None:
    """The knob trading speed for recall and the values to try, or None for an exact index."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:  # not an IVF index
        ivf = None
    if ivf is not None:
        values = [1 << i for i in range(32) if (1 << i) < ivf.nlist] + [int(ivf.nlist)]
        return "nprobe", values
    if any(isinstance(layer, faiss.IndexHNSW) for layer in layers(index)):
        return "efSearch", list(EF_SEARCH_VALUES)
    return None


def is_exact(index: faiss.Index) -> bool:
    """True when ``index`` (under any id map) is a plain flat index: search is exhaustive."""
    return all(isinstance(layer, (faiss.IndexFlat, faiss.IndexIDMap)) for layer in layers(index))


def set_search_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Apply search-time parameters (``nprobe``, ``efSearch``) through any id-map wrapper."""
    space = faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, int(value))


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found top-k ∩ true top-k| / k (labels; -1 marks no result)."""
    k = truth.shape[1]
    hits = [
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
        for f, t in zip(found[:, :k], truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


class ExactTopK:
    """Exact inner-product top-k of fixed queries, accumulated over database batches."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self._heap = faiss.ResultHeap(len(self.queries), k, keep_max=True)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Take one batch of database vectors with their FAISS labels into account."""
        if len(vectors) == 0 or len(self.queries) == 0:
            return
        kk = min(self.k, len(vectors))
        scores, local = faiss.knn(
            self.queries,
            np.ascontiguousarray(vectors, dtype=np.float32),
            kk,
            metric=faiss.METRIC_INNER_PRODUCT,
        )
        self._heap.add_result(scores, np.asarray(labels, dtype=np.int64)[local])

    def labels(self) -> np.ndarray:
        """[n_queries, k] labels, best first."""
        self._heap.finalize()
        return self._heap.I


@dataclass
class TuneResult:
    """The chosen parameters, the recall@k they reach, and every point of the sweep."""

    params: dict[str, int]
    recall: float
    reached: bool
    sweep: list[tuple[int, float]] = field(default_factory=list)


def tune(
    index: faiss.Index,
    query_groups: list[np.ndarray],
    truth_groups: list[np.ndarray],
    target_recall: float,
) -> TuneResult:
    """Set the smallest knob value whose recall@k reaches ``target_recall`` in every group.

    ``query_groups[i]`` are queries of one kind (say, text queries of an image index) and
    ``truth_groups[i]`` their exact top-k labels; the worst group decides. When no value
    reaches the target (a coarse PQ code caps recall whatever the knob), the sweep stops
    once recall has plateaued, the best value is kept and ``reached`` is False. An exact
    index is left as it is with recall 1.
    """
    knob = search_knob(index)
    if knob is None:
        return TuneResult({}, 1.0, True)
    name, values = knob
    sweep: list[tuple[int, float]] = []
    for value in values:
        set_search_params(index, {name: value})
        recall = min(
            recall_at_k(index.search(q, t.shape[1])[1], t)
            for q, t in zip(query_groups, truth_groups, strict=True)
            if len(q)
        )
        sweep.append((value, recall))
        if recall >= target_recall:
            return TuneResult({name: value}, recall, True, sweep)
        if plateaued([r for _, r in sweep]):
            break
    best_value, best_recall = max(sweep, key=lambda p: (p[1], -p[0]))
    set_search_params(index, {name: best_value})
    return TuneResult({name: best_value}, best_recall, False, sweep)


def plateaued(recalls: list[float], steps: int = 2, gain: float = 0.002) -> bool:
    """True when the last ``steps`` knob increases each gained less than ``gain`` recall."""
    if len(recalls) <= steps:
        return False
    tail = recalls[-steps - 1 :]
    return all(b - a < gain for a, b in zip(tail, tail[1:], strict=False))


def layers(index: faiss.Index) -> list[faiss.Index]:
    """The index and the indexes it wraps (id maps, refinement, pre-transforms), outermost first."""
    out = []
    layer: faiss.Index | None = faiss.downcast_index(index)
    while layer is not None:
        out.append(layer)
        inner = getattr(layer, "index", None) or getattr(layer, "base_index", None)
        layer = faiss.downcast_index(inner) if inner is not None else None
    return out
