"""Normalisation-only tuning: train the gain and bias of every normalisation layer.

In a transformer these are the LayerNorms (the intrinsic-tuning study of LayerNorm, FFN
and attention); in a CNN such as EfficientNet-Lite the batch norms' affine parameters
(their running statistics stay as they are). The FFN linears and the attention
projections of every transformer layer can be added as further subsets.
"""

from __future__ import annotations

from torch import nn

from adaptor.peft.targets import Targets


def norm_parameter_names(
    module: nn.Module, targets: Targets, *, ffn: bool, attention: bool
) -> list[str]:
    """Parameter names of the normalisation layers (+ FFN linears, + attention projections)."""
    owners = list(targets.norms)
    for layer in targets.layers:
        owners += list(layer.ffn_linears) if ffn else []
        for site in layer.attentions if attention else ():
            owners += [site.name, *site.linears]  # packed q/k/v live on the attention module
    names: list[str] = []
    for owner in dict.fromkeys(owners):
        prefix = f"{owner}." if owner else ""
        names += [
            prefix + n for n, _ in module.get_submodule(owner).named_parameters(recurse=False)
        ]
    return names
