"""Save a tuned module's trainable deltas (safetensors) and load them back onto base weights.

A file holds only what tuning added or changed: the trainable parameters (LoRA factors,
adapters, tuned norms, APLA deltas, or everything for ``full``) and the buffers of the
tuning modules (APLA's chosen rows). Its metadata records the method, its options, the
excluded parameters and, optionally, the base model's identity. :func:`load_deltas`
re-applies the same tuning to a freshly built base model and fills in the saved tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor, nn

from adaptor.atomic import atomic_open
from adaptor.errors import AdaptorError
from adaptor.peft.adapters import ADAPTER_TYPES
from adaptor.peft.apla import RowDelta
from adaptor.peft.lora import LowRankDelta
from adaptor.peft.tuning import TuningReport, apply_tuning

FORMAT = "adaptor-tuning-deltas/1"
_TUNING_MODULES = (*ADAPTER_TYPES, RowDelta, LowRankDelta)


class DeltaError(AdaptorError, ValueError):
    """A deltas file that cannot be read or does not fit the model it is loaded onto."""


def tuning_state(module: nn.Module) -> dict[str, Tensor]:
    """The tensors a deltas file holds: trainable parameters and tuning modules' buffers."""
    state = {n: p for n, p in module.named_parameters() if p.requires_grad}
    for name, m in module.named_modules():
        if isinstance(m, _TUNING_MODULES):
            state.update({f"{name}.{b}": t for b, t in m.named_buffers(recurse=False)})
    return state


def save_deltas(
    module: nn.Module, report: TuningReport, path: str | Path, base: dict[str, Any] | None = None
) -> None:
    """Write ``module``'s deltas to ``path`` atomically; ``base`` identifies the base weights
    (e.g. an encoder's name and fingerprint) so a load onto other weights is refused."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tuning_state(module).items()}
    metadata = {
        "format": FORMAT,
        "method": report.method,
        "options": json.dumps(report.options),
        "excluded": json.dumps(report.excluded),
        "base": json.dumps(base or {}),
    }
    with atomic_open(Path(path), "wb") as fh:
        fh.write(save(tensors, metadata=metadata))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The method, options, excluded parameters and base identity stored in a deltas file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except (OSError, SafetensorError) as err:
        raise DeltaError(f"cannot read tuning deltas {path}: {err}") from err
    if raw.get("format") != FORMAT:
        raise DeltaError(f"{path} is not a tuning deltas file (format {raw.get('format')!r})")
    return {
        "method": raw["method"],
        "options": json.loads(raw["options"]),
        "excluded": json.loads(raw["excluded"]),
        "base": json.loads(raw["base"]),
    }


def load_deltas(
    module: nn.Module, path: str | Path, base: dict[str, Any] | None = None
) -> TuningReport:
    """Apply the saved tuning to the (untuned) ``module`` and load the saved deltas into it.

    ``base`` (e.g. ``{"fingerprint": …}``) is checked against the identity stored at save
    time: every key both name must agree.
    """
    path = Path(path)
    meta = read_metadata(path)
    clash = {
        k: (v, base[k]) for k, v in meta["base"].items() if base and k in base and base[k] != v
    }
    if clash:
        diffs = "; ".join(
            f"{k}: saved for {a!r}, loading onto {b!r}" for k, (a, b) in clash.items()
        )
        raise DeltaError(f"{path} was tuned from other base weights ({diffs})")
    report = apply_tuning(module, meta["method"], exclude=meta["excluded"], **meta["options"])
    saved = load_file(str(path))
    target = tuning_state(module)
    missing, unexpected = sorted(set(target) - set(saved)), sorted(set(saved) - set(target))
    if missing or unexpected:
        raise DeltaError(
            f"{path} does not fit this model ({meta['method']}): "
            f"missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''}"
        )
    with torch.no_grad():
        for name, tensor in target.items():
            if saved[name].shape != tensor.shape:
                raise DeltaError(
                    f"{path}: {name} has shape {tuple(saved[name].shape)}, "
                    f"the model expects {tuple(tensor.shape)}"
                )
            tensor.copy_(saved[name])
    return report
