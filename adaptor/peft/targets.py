"""Find what a tuning method touches — attention, feed-forward, normalisation, convolutions —
by module type, across timm and open_clip ViTs, Hugging Face BERT-style encoders, CNNs and
the Adaptor, without relying on any one model's attribute names.

- An **attention module** is an ``nn.MultiheadAttention`` or a module whose class name ends in
  ``Attention`` (timm ``Attention``, open_clip ``Attention``, HF ``BertAttention``,
  ``CLIPAttention``, …); nested ones (``BertSelfAttention`` inside ``BertAttention``) belong
  to the outermost.
- Its **projections** are the ``nn.Linear`` modules inside it, the **output projection** the
  last one registered (timm ``proj``, BERT ``output.dense``, CLIP ``out_proj``). An
  ``nn.MultiheadAttention`` keeps q/k/v in packed parameters (``in_proj_weight``) and calls
  its ``out_proj`` through ``F.multi_head_attention_forward``, never ``out_proj.forward``.
- A **transformer layer** is the smallest module around an attention module that also holds
  ``nn.Linear`` modules outside attention: those are its **feed-forward** (FFN) linears,
  the last one registered being the FFN output (timm ``fc2``, open_clip ``c_proj``,
  BERT ``output.dense``).
- **Normalisation** layers are LayerNorm, RMSNorm, GroupNorm and batch/instance norms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, _NormBase)


@dataclass(frozen=True)
class AttentionSite:
    """One attention module: its name, its ``nn.Linear`` projections (output projection last)."""

    name: str
    linears: tuple[str, ...]
    packed: bool  # an nn.MultiheadAttention: q/k/v are parameters of the module itself

    @property
    def out_proj(self) -> str:
        """The attention output projection (an ``nn.Linear``)."""
        return self.linears[-1]


@dataclass(frozen=True)
class TransformerLayer:
    """A transformer layer: its attention module(s) and its feed-forward linears."""

    name: str
    attentions: tuple[AttentionSite, ...]
    ffn_linears: tuple[str, ...]

    @property
    def ffn_out(self) -> str | None:
        """The FFN's output linear, where a bottleneck adapter goes."""
        return self.ffn_linears[-1] if self.ffn_linears else None


@dataclass(frozen=True)
class Targets:
    """Everything a tuning method may select in a module, by name (``named_modules`` order)."""

    layers: tuple[TransformerLayer, ...]
    norms: tuple[str, ...]
    convs: tuple[str, ...]
    linears: tuple[str, ...]


def is_attention(module: nn.Module) -> bool:
    """An attention module by type (see the module docstring)."""
    return isinstance(module, nn.MultiheadAttention) or type(module).__name__.endswith("Attention")


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer (LayerNorm, RMSNorm, GroupNorm, batch or instance norm)."""
    return isinstance(module, NORM_TYPES)


def find_targets(module: nn.Module, skip: tuple[type[nn.Module], ...] = ()) -> Targets:
    """Transformer layers, normalisation layers, convolutions and linears of ``module``.

    Subtrees of a type in ``skip`` (e.g. adapters already inserted) are ignored.
    """
    modules = _named_modules(module, skip)
    attention_names = _outermost([n for n, m in modules.items() if is_attention(m)])
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]

    def inside(name: str, parent: str) -> bool:
        return parent == "" or name == parent or name.startswith(parent + ".")

    def in_attention(name: str) -> bool:
        return any(inside(name, a) for a in attention_names)

    layers: dict[str, list[str]] = {}
    for attn in attention_names:
        block = _enclosing_layer(attn, linears, in_attention, inside)
        layers.setdefault(block, []).append(attn)
    found = []
    for block, attns in layers.items():
        sites = tuple(
            AttentionSite(
                name=a,
                linears=tuple(n for n in linears if inside(n, a)),
                packed=isinstance(modules[a], nn.MultiheadAttention),
            )
            for a in attns
        )
        ffn = tuple(n for n in linears if inside(n, block) and not in_attention(n))
        found.append(TransformerLayer(block, tuple(s for s in sites if s.linears), ffn))
    return Targets(
        layers=tuple(layer for layer in found if layer.attentions),
        norms=tuple(n for n, m in modules.items() if is_norm(m)),
        convs=tuple(n for n, m in modules.items() if isinstance(m, _ConvNd)),
        linears=tuple(linears),
    )


def unused_parameters(module: nn.Module, probe: Callable[[], Tensor]) -> list[str]:
    """Names of parameters that ``probe()``'s output does not depend on (e.g. a classifier
    the encoder's forward never calls).

    Runs ``probe`` once in eval mode with every parameter requiring grad; no ``.grad`` is
    written and the module's modes are restored.
    """
    named = list(module.named_parameters())
    flags = [p.requires_grad for _, p in named]
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        for _, p in named:
            p.requires_grad_(True)
        out = probe()
        grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        for (_, p), flag in zip(named, flags, strict=True):
            p.requires_grad_(flag)
        for m, mode in modes.items():
            m.training = mode
    return [name for (name, _), g in zip(named, grads, strict=True) if g is None]


def _named_modules(module: nn.Module, skip: tuple[type[nn.Module], ...]) -> dict[str, nn.Module]:
    out: dict[str, nn.Module] = {}
    skipped: list[str] = []
    for name, m in module.named_modules():
        if any(name.startswith(s + ".") for s in skipped):
            continue
        if skip and isinstance(m, skip):
            skipped.append(name)
            continue
        out[name] = m
    return out


def _outermost(names: list[str]) -> list[str]:
    return [n for n in names if not any(n.startswith(o + ".") for o in names if o != n)]


def _enclosing_layer(
    attn: str,
    linears: list[str],
    in_attention: Callable[[str], bool],
    inside: Callable[[str, str], bool],
) -> str:
    """The nearest ancestor of ``attn`` that holds linears outside attention (its FFN)."""
    parts = attn.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        parent = ".".join(parts[:depth])
        if any(inside(n, parent) and not in_attention(n) for n in linears):
            return parent
    return ".".join(parts[:-1])
