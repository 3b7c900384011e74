"""Gradient checkpointing for any encoder: recompute each block's activations in backward.

The blocks are the transformer layers (found by type, see :mod:`adaptor.peft.targets`) or,
in a model without attention, the entries of its longest list of blocks (EfficientNet's
MBConv blocks). Each block's ``forward`` is wrapped in non-reentrant
``torch.utils.checkpoint``, so adapters' hooks and LoRA layers inside a block are
recomputed with it, and frozen inputs need no ``requires_grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from adaptor.peft.adapters import ADAPTER_TYPES
from adaptor.peft.targets import find_targets
from adaptor.peft.tuning import TuningError


class _Checkpointed:
    """A block's forward that keeps only its inputs and recomputes the rest in backward."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self.forward = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return self.forward(*args, **kwargs)
        return checkpoint(self.forward, *args, use_reentrant=False, **kwargs)


def enable_gradient_checkpointing(module: nn.Module) -> list[str]:
    """Checkpoint every block of ``module`` (in place); return the blocks' names."""
    layers = [layer.name for layer in find_targets(module, skip=ADAPTER_TYPES).layers]
    blocks = [name for name in layers if name] or _repeated_blocks(module)
    if not blocks:
        raise TuningError(
            f"gradient checkpointing found no blocks in {type(module).__name__} "
            "(no transformer layers, no list of blocks)"
        )
    for name in blocks:
        block = module.get_submodule(name)
        if not isinstance(block.forward, _Checkpointed):
            block.forward = _Checkpointed(block.forward)
    return blocks


def _repeated_blocks(module: nn.Module) -> list[str]:
    """Entries of the longest ``ModuleList``/``Sequential`` whose entries hold parameters."""
    best: list[str] = []
    for name, m in module.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)):
            entries = [f"{name}.{i}" if name else str(i) for i, c in enumerate(m) if _has_params(c)]
            if len(entries) > len(best):
                best = entries
    return best


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())
