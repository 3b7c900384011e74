"""LoRA: a trainable low-rank update ``W + (alpha / r) · B A`` beside frozen weights.

The ``peft`` library injects LoRA into ``nn.Linear`` and plain ``nn.Conv2d`` layers. Two
cases it does not serve are covered here with a weight parametrization
(:class:`LowRankDelta`, via ``torch.nn.utils.parametrize``), which leaves the base weight
untouched and adds the same low-rank update peft would:

- ``nn.MultiheadAttention`` (open_clip ViTs, the Adaptor): peft's LoRA layer for it adds
  the update into the base weights before each forward and subtracts it after, so the
  "frozen" weights drift by rounding error with every step (measured: 6e-6 after three
  SGD steps), and it cannot target ``in_proj`` and ``out_proj`` separately.
- convolution subclasses peft re-creates by ``type(layer)(...)`` with ``nn.Conv2d``'s
  arguments, which fails for layers with another constructor — EfficientNet-Lite's
  TensorFlow-"same"-padding convolutions.

Depthwise convolutions (``groups > 1``) are left out: their per-channel ``k×k`` kernels are
already smaller than a rank-r factorisation of them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from adaptor.peft.targets import Targets

# layer types peft builds LoRA for without trouble (exact types: subclasses may not rebuild)
_PEFT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class LowRankDelta(nn.Module):
    """Parametrization ``W ↦ W + scaling · (B A).view_as(W)`` with ``B`` zero-initialised.

    ``A`` is ``[rank, fan_in]`` (``fan_in`` = the product of ``W``'s trailing dimensions),
    ``B`` is ``[out, rank]``: the same factors and initialisation as peft's LoRA layers.
    """

    def __init__(self, shape: torch.Size, rank: int, alpha: float) -> None:
        super().__init__()
        fan_in = math.prod(shape[1:])
        self.shape = tuple(shape)
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, fan_in))
        self.lora_B = nn.Parameter(torch.zeros(shape[0], rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, weight: Tensor) -> Tensor:
        """The effective weight."""
        delta = (self.lora_B @ self.lora_A).view(self.shape) * self.scaling
        return weight + delta.to(weight.dtype)


def lora_target_names(targets: Targets, *, ffn: bool, excluded: set[str]) -> list[str]:
    """Modules LoRA adapts: attention projections (+ FFN linears) of transformer layers;
    in a model without attention (a CNN), its dense convolutions and linears."""
    if targets.layers:
        names = []
        for layer in targets.layers:
            for site in layer.attentions:
                names += [site.name] if site.packed else list(site.linears)
            names += list(layer.ffn_linears) if ffn else []
    else:
        names = list(targets.convs) + list(targets.linears)
    return [n for n in names if n not in excluded]


def apply_lora(module: nn.Module, names: list[str], rank: int, alpha: float) -> list[str]:
    """Add LoRA to the modules ``names`` of ``module`` (frozen already); return notes.

    ``nn.Linear`` and plain convolutions go through ``peft.inject_adapter_in_model``; an
    ``nn.MultiheadAttention`` gets a :class:`LowRankDelta` on its q/k/v projection and one on
    its output projection; other convolutions get one on their weight; depthwise
    convolutions are skipped (noted).
    """
    from peft import LoraConfig, inject_adapter_in_model

    via_peft, via_delta, depthwise = [], [], []
    for name in names:
        layer = module.get_submodule(name)
        if isinstance(layer, nn.MultiheadAttention):
            via_delta += [(layer, p) for p in _mha_projection_names(layer)]
            via_delta.append((layer.out_proj, "weight"))
        elif getattr(layer, "groups", 1) > 1:
            depthwise.append(name)
        elif isinstance(layer, nn.Linear) or type(layer) in _PEFT_TYPES:
            via_peft.append(name)
        else:
            via_delta.append((layer, "weight"))
    if via_peft:
        config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=via_peft, lora_dropout=0.0)
        inject_adapter_in_model(config, module)
    for owner, param_name in via_delta:
        weight = getattr(owner, param_name)
        delta = LowRankDelta(weight.shape, rank, alpha).to(weight.device)
        parametrize.register_parametrization(owner, param_name, delta)
    if not depthwise:
        return []
    return [f"{len(depthwise)} depthwise convolution(s) left frozen (e.g. {depthwise[0]})"]


def merge_lora(module: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and remove the LoRA modules (in place).

    The merged module computes the same function with the plain architecture and no extra
    cost at inference; its parameters stay frozen.
    """
    from peft.tuners.lora import LoraLayer

    for name, layer in list(module.named_modules()):
        if isinstance(layer, LoraLayer):
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name), child, layer.get_base_layer())
    for owner in list(module.modules()):
        if not parametrize.is_parametrized(owner):
            continue
        for param_name, chain in list(owner.parametrizations.items()):
            if any(isinstance(p, LowRankDelta) for p in chain):
                parametrize.remove_parametrizations(owner, param_name, leave_parametrized=True)
                getattr(owner, param_name).requires_grad_(False)
    return module


def _mha_projection_names(mha: nn.MultiheadAttention) -> list[str]:
    """The q/k/v parameters of an ``nn.MultiheadAttention`` (packed unless kdim/vdim differ)."""
    if mha.in_proj_weight is not None:
        return ["in_proj_weight"]
    return ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
