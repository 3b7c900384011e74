"""Peak memory of one training step, measured the same way for every method and device.

The figure is the bytes of tensors the model holds before the step (parameters and
buffers) plus the peak of tensor memory allocated during the step (activations,
gradients, optimizer state, temporaries). On CUDA the step peak is
``torch.cuda.max_memory_allocated`` above what was allocated before it; on CPU, where
PyTorch keeps no allocator statistics, a ``TorchDispatchMode`` adds up the storages every
operator creates and subtracts them when they are freed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

T = TypeVar("T")
MIB = 2**20


class AllocationPeak(TorchDispatchMode):
    """While active, tracks live bytes of tensor storages created by operators and their peak.

    Outputs that share storage with an input (views, in-place ops) are not new memory.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: dict[int, weakref.finalize] = {}

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in inputs or key in self._tracked:
                continue
            self.live += size
            self.peak = max(self.peak, self.live)
            self._tracked[key] = weakref.finalize(storage, self._freed, key, size)
        return out

    def _freed(self, key: int, size: int) -> None:
        self.live -= size
        self._tracked.pop(key, None)


def resident_bytes(modules: Iterable[nn.Module]) -> int:
    """Bytes of the parameters and buffers of ``modules``."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def measure_step(
    step: Callable[[], T], modules: Iterable[nn.Module], device: torch.device
) -> tuple[T, float]:
    """Run ``step()`` once; return its result and the peak memory in MiB (see module doc)."""
    resident = resident_bytes(modules)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = step()
        torch.cuda.synchronize(device)
        extra = torch.cuda.max_memory_allocated(device) - before
    else:
        with AllocationPeak() as tracker:
            result = step()
        extra = tracker.peak
    return result, (resident + extra) / MIB
