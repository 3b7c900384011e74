"""Cross-modal retrieval recall@k on paired embeddings (row i of each side is a pair)."""

from __future__ import annotations

import torch
from torchmetrics.functional.retrieval import retrieval_recall

KS = (1, 5, 10)


def paired_recall(
    image: torch.Tensor, text: torch.Tensor, ks: tuple[int, ...] = KS
) -> dict[str, float]:
    """Recall@k image→text and text→image; each query has exactly one relevant item, its pair.

    torchmetrics (≥ 1.8) counts only candidates scored above 0 as retrieved (it reads
    scores as probabilities of relevance), so each query's similarities are shifted to
    start at 1 first: the same ranking, every candidate counted. Without the shift a pair
    ranked first with a negative cosine scored recall 0.
    """
    sim = image.double() @ text.double().T
    n = sim.shape[0]
    target = torch.eye(n, dtype=torch.bool)
    out: dict[str, float] = {}
    for direction, scores in (("i2t", sim), ("t2i", sim.T)):
        scores = scores - scores.min(dim=1, keepdim=True).values + 1.0
        for k in ks:
            per_query = torch.stack(
                [retrieval_recall(scores[q], target[q], top_k=k) for q in range(n)]
            )
            out[f"{direction}_r@{k}"] = float(per_query.mean())
    return out


def chance_recall(n: int, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@k of a random ranking over ``n`` candidates with one relevant each."""
    return {f"r@{k}": min(k, n) / n for k in ks}
