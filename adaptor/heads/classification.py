"""Classification heads on a feature vector, their targets and their loss.

Targets come from records' labels (``1`` positive, ``0`` negative, ``-1`` uncertain,
``None`` missing). A missing label is masked out of the loss and the metrics; an
uncertain one is masked out too unless a policy maps it to 0 or 1 (the CheXpert
"U-Zeros"/"U-Ones" policies).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from adaptor.config.downstream import UncertainPolicy
from adaptor.errors import AdaptorError


class HeadError(AdaptorError, ValueError):
    """A head or a target definition that does not fit the data."""


class LinearHead(nn.Module):
    """One linear layer: the linear probe, started at zero (every class at probability 0.5)."""

    def __init__(self, in_dim: int, n_outputs: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, n_outputs)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)


class MLPHead(nn.Module):
    """A small MLP: Linear → GELU → Dropout → Linear."""

    def __init__(self, in_dim: int, n_outputs: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_outputs)
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


HEADS = {"linear": LinearHead, "mlp": MLPHead}


def build_head(kind: str, in_dim: int, n_outputs: int) -> nn.Module:
    """A head by name: ``linear`` or ``mlp``."""
    if kind not in HEADS:
        raise HeadError(f"unknown head {kind!r}; choose from {', '.join(HEADS)}")
    return HEADS[kind](in_dim, n_outputs)


def label_matrix(
    meta_rows: Sequence[dict[str, Any]],
    label_names: Sequence[str],
    uncertain: UncertainPolicy = "ignore",
) -> tuple[Tensor, Tensor]:
    """Targets ``(N, C)`` as floats and a ``valid`` mask (label present) from records' labels."""
    mapped = {"ignore": None, "positive": 1.0, "negative": 0.0}
    if uncertain not in mapped:
        raise HeadError(f"unknown uncertain-label policy {uncertain!r}: ignore, positive, negative")
    targets = torch.zeros(len(meta_rows), len(label_names))
    valid = torch.zeros(len(meta_rows), len(label_names), dtype=torch.bool)
    for i, row in enumerate(meta_rows):
        labels = row.get("labels") or {}
        for c, name in enumerate(label_names):
            value = labels.get(name)
            if value == -1:
                value = mapped[uncertain]
            if value is None:
                continue
            targets[i, c] = float(value)
            valid[i, c] = True
    return targets, valid


def multiclass_rows(targets: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Class indices for rows with every label present and exactly one positive; and that mask."""
    usable = valid.all(dim=1) & (targets.sum(dim=1) == 1)
    return targets.argmax(dim=1), usable


def positive_weights(targets: Tensor, valid: Tensor, max_weight: float = 50.0) -> Tensor:
    """Per-class ``negatives / positives`` over present labels (1 where a class has no positive)."""
    pos = (targets * valid).sum(dim=0)
    neg = ((1 - targets) * valid).sum(dim=0)
    weight = torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos))
    return weight.clamp(min=1.0 / max_weight, max=max_weight)


def masked_bce_loss(
    logits: Tensor, targets: Tensor, valid: Tensor, pos_weight: Tensor | None = None
) -> Tensor:
    """Multi-label binary cross-entropy averaged over present labels only."""
    loss = F.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight, reduction="none"
    )
    present = valid.float()
    return (loss * present).sum() / present.sum().clamp(min=1.0)


def class_weights(classes: Tensor, n_classes: int, max_weight: float = 50.0) -> Tensor:
    """Inverse-frequency weights for cross-entropy (mean 1 over seen classes)."""
    counts = torch.bincount(classes, minlength=n_classes).float()
    weight = torch.where(counts > 0, counts.sum() / (n_classes * counts.clamp(min=1)), 0.0)
    return weight.clamp(max=max_weight)
