"""APLA (Sorkhei et al., 2025): tune only the projection right after attention.

Each transformer layer's attention output projection ``y = x Wᵀ + b`` is trained; with
``columns < 1`` only a random subset of its output columns (rows of the PyTorch weight,
with their bias entries — the split of the reference implementation) is. The subset is
a parametrization: the frozen weight stays untouched and a trainable ``[k, in]`` delta is
added to the chosen rows, so exactly those entries change and only they carry optimizer
state. The chosen row indices are a buffer, saved with the deltas.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from adaptor.peft.targets import Targets


class RowDelta(nn.Module):
    """Parametrization ``W ↦ W.index_add(0, index, delta)``: a trainable delta on some rows."""

    def __init__(self, shape: torch.Size, index: Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.clone())
        self.delta = nn.Parameter(torch.zeros(len(index), *shape[1:]))

    def forward(self, weight: Tensor) -> Tensor:
        """The effective weight (or bias)."""
        return weight.index_add(0, self.index, self.delta.to(weight.dtype))


def apla_projection_names(targets: Targets, excluded: set[str]) -> list[str]:
    """The attention output projections of every transformer layer."""
    names = [site.out_proj for layer in targets.layers for site in layer.attentions]
    return [n for n in names if f"{n}.weight" not in excluded]


def apply_apla(module: nn.Module, names: list[str], columns: float, seed: int) -> None:
    """Make the projections ``names`` trainable: whole (``columns == 1``) or a random subset."""
    generator = torch.Generator().manual_seed(seed)
    for name in names:
        proj = module.get_submodule(name)
        if columns >= 1.0:
            proj.requires_grad_(True)
            continue
        n_out = proj.weight.shape[0]
        k = max(1, round(columns * n_out))
        index = torch.randperm(n_out, generator=generator)[:k].sort().values
        index = index.to(proj.weight.device)
        for param_name in ("weight", "bias"):
            param = getattr(proj, param_name, None)
            if param is not None:
                delta = RowDelta(param.shape, index).to(param.device)
                parametrize.register_parametrization(proj, param_name, delta)
