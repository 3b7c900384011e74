"""Bottleneck adapters (Houlsby et al.) and the modality-fusion adapter (M³AD).

A :class:`BottleneckAdapter` goes after the attention block and after the feed-forward
block of every transformer layer: it takes the sub-block's output ``h`` (before the
residual sum) to ``h + up(act(down(h)))``. The up-projection starts at zero, so an
untrained adapter is the identity and tuning starts from the frozen model.

A :class:`FusionAdapter` is the adapter of a cross-modal layer: inside its bottleneck,
the hidden state attends (multi-head attention) to the tokens the layer's attention
attended to — in a cross-attention layer, the other modality. It goes after an
``nn.MultiheadAttention`` (the Adaptor's cross-attention layers), whose ``key`` input is
that context.

Adapters are attached as child modules named ``adapter`` of the layer whose output they
transform, with a forward hook; the layer's class, attributes and base weights stay as
they were.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from adaptor.peft.targets import Targets

ADAPTER_NAME = "adapter"


class BottleneckAdapter(nn.Module):
    """``h ↦ h + up(GELU(down(h)))`` with ``down: dim → bottleneck`` and a zero-initialised ``up``."""

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        """Adapt a sub-block's output ``[..., dim]``."""
        return h + self.up(F.gelu(self.down(h)))


class FusionAdapter(nn.Module):
    """A bottleneck adapter whose hidden state attends to a context (the other modality).

    ``h ↦ h + up(z + MHA(z, c, c))`` with ``z = GELU(down(h))`` and
    ``c = GELU(context_down(context))``; ``up`` is zero-initialised.
    """

    def __init__(self, dim: int, bottleneck: int, heads: int) -> None:
        super().__init__()
        if bottleneck % heads:
            raise ValueError(f"bottleneck {bottleneck} is not divisible by {heads} heads")
        self.down = nn.Linear(dim, bottleneck)
        self.context_down = nn.Linear(dim, bottleneck)
        self.attn = nn.MultiheadAttention(bottleneck, heads, batch_first=True)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor, context: Tensor, context_pad: Tensor | None = None) -> Tensor:
        """Adapt ``h`` [B, N, dim] using ``context`` [B, M, dim] (``context_pad`` True = padding)."""
        z = F.gelu(self.down(h))
        c = F.gelu(self.context_down(context))
        fused = self.attn(z, c, c, key_padding_mask=context_pad, need_weights=False)[0]
        return h + self.up(z + fused)


ADAPTER_TYPES = (BottleneckAdapter, FusionAdapter)


def add_adapters(
    module: nn.Module,
    targets: Targets,
    *,
    bottleneck: int | None,
    fusion: bool,
    fusion_heads: int,
    excluded: set[str],
) -> list[str]:
    """Insert adapters after the attention and the FFN of every transformer layer.

    ``bottleneck`` defaults to an eighth of each layer's width. With ``fusion``, the adapter
    after an ``nn.MultiheadAttention`` is a :class:`FusionAdapter`. Returns the names of the
    layers whose outputs are adapted.
    """
    placed = []
    for layer in targets.layers:
        sites = []
        for site in layer.attentions:
            # nn.MultiheadAttention never calls out_proj.forward: adapt the module's output
            sites.append(site.name if site.packed else site.out_proj)
        if layer.ffn_out is not None:
            sites.append(layer.ffn_out)
        for name in sites:
            if name in excluded:
                continue
            target = module.get_submodule(name)
            dim = _output_width(target)
            width = bottleneck or max(1, dim // 8)
            device = next(target.parameters()).device
            if fusion and isinstance(target, nn.MultiheadAttention):
                adapter: nn.Module = FusionAdapter(dim, width, fusion_heads)
                target.register_forward_hook(_fuse_mha_output, with_kwargs=True)
            else:
                adapter = BottleneckAdapter(dim, width)
                target.register_forward_hook(_adapt_output)
            target.add_module(ADAPTER_NAME, adapter.to(device))
            placed.append(name)
    return placed


def _output_width(layer: nn.Module) -> int:
    if isinstance(layer, nn.MultiheadAttention):
        return layer.embed_dim
    if isinstance(layer, nn.Linear):
        return layer.out_features
    raise TypeError(f"cannot place an adapter after a {type(layer).__name__}")


def _adapt_output(layer: nn.Module, args: tuple, output: Any) -> Any:
    adapter = getattr(layer, ADAPTER_NAME)
    if isinstance(output, tuple):  # nn.MultiheadAttention: (output, weights)
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def _fuse_mha_output(layer: nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> Any:
    """Feed an ``nn.MultiheadAttention``'s output and its key (the context) to its FusionAdapter."""
    key = args[1] if len(args) > 1 else kwargs["key"]
    pad = args[3] if len(args) > 3 else kwargs.get("key_padding_mask")
    h = output[0]
    if not layer.batch_first:
        h, key = h.transpose(0, 1), key.transpose(0, 1)
    fused = getattr(layer, ADAPTER_NAME)(h, key, pad if pad is None else pad.bool())
    if not layer.batch_first:
        fused = fused.transpose(0, 1)
    return (fused, *output[1:])
