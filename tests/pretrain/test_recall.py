"""Val recall@k of paired embeddings (adaptor.metrics.retrieval), against a count by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adaptor.metrics.retrieval import chance_recall, paired_recall


def _by_hand(sim: torch.Tensor, k: int) -> float:
    """Share of queries whose pair (the diagonal) is among their k best-scored candidates."""
    better = (sim > sim.diag()[:, None]).sum(1)
    return float((better < k).float().mean())


def test_recall_counts_pairs_whatever_the_sign_of_their_similarity() -> None:
    """A pair ranked first with a negative cosine is retrieved (torchmetrics alone counted
    only positive scores and gave 0)."""
    angle = torch.tensor([0.0, 2.0, 4.0])
    ring = 0.3 * torch.stack([angle.cos(), angle.sin()], dim=1)
    image = F.normalize(torch.cat([ring, torch.full((3, 1), 0.95)], dim=1), dim=-1)
    text = F.normalize(torch.cat([ring, torch.full((3, 1), -0.95)], dim=1), dim=-1)
    sim = image @ text.T
    assert (sim < 0).all() and (sim.argmax(1) == torch.arange(3)).all()  # pairs first, < 0
    got = paired_recall(image, text, ks=(1, 2, 3))
    assert got["i2t_r@1"] == got["t2i_r@1"] == 1.0
    for k in (1, 2, 3):
        assert got[f"i2t_r@{k}"] == _by_hand(sim, k)
        assert got[f"t2i_r@{k}"] == _by_hand(sim.T, k)
    assert got["i2t_r@3"] == got["t2i_r@3"] == 1.0


def test_recall_matches_the_count_on_random_embeddings() -> None:
    gen = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(40, 16, generator=gen), dim=-1)
    text = F.normalize(image + 0.8 * torch.randn(40, 16, generator=gen), dim=-1)
    got = paired_recall(image, text)
    sim = image.double() @ text.double().T
    for k in (1, 5, 10):
        assert got[f"i2t_r@{k}"] == _by_hand(sim, k)
        assert got[f"t2i_r@{k}"] == _by_hand(sim.T, k)
    assert chance_recall(40) == {"r@1": 1 / 40, "r@5": 5 / 40, "r@10": 10 / 40}
