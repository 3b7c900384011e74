"""A U-Net-style decoder over a frozen image encoder's multi-scale feature maps.

The decoder is built from the maps' channel counts, so it fits any encoder whose
``feature_maps`` it is given (EfficientNet strides 4..32, ResNet, ViT blocks at one
stride). Decoding starts at the deepest map (the bottleneck); each shallower map joins as
a skip connection after the running map is upsampled to its size; the logits are
upsampled to the input resolution at the end.

With ``embedding_dim`` set, a per-image vector (the Adaptor's fused image embedding) is
projected, tiled over the bottleneck's grid and concatenated to it before the first
convolution, as the reference implementation does with its ResNet autoencoder. Without
it, the same decoder runs on the feature maps alone: the two differ only in that input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

DEEPEST_WIDTH = 128
MIN_WIDTH = 16
EMBEDDING_CHANNELS = 64


def decoder_widths(levels: int) -> list[int]:
    """Output channels per decoder stage, deepest first: 128, 64, 32, 16, 16, …"""
    return [max(DEEPEST_WIDTH >> i, MIN_WIDTH) for i in range(levels)]


class ConvBlock(nn.Sequential):
    """Two 3×3 convolutions, each followed by batch norm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SegmentationDecoder(nn.Module):
    """Binary segmentation logits from feature maps (shallow → deep) and an optional embedding.

    ``feature_channels`` are the maps' channel counts, shallow → deep (as
    :func:`adaptor.embed.feature_maps.probe_feature_shapes` reports them). Each map is
    first projected to its stage's width by a 1×1 convolution (so a 1280-channel
    bottleneck or 768-channel ViT blocks cost no more than narrow CNN maps).
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        *,
        embedding_dim: int | None = None,
        embedding_channels: int = EMBEDDING_CHANNELS,
    ):
        super().__init__()
        if not feature_channels:
            raise ValueError("the decoder needs at least one feature map")
        deep_first = list(feature_channels)[::-1]
        widths = decoder_widths(len(deep_first))
        self.feature_channels = list(feature_channels)
        self.embedding_dim = embedding_dim
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
            for c, w in zip(deep_first, widths, strict=True)
        )
        self.embed = (
            nn.Sequential(
                nn.LayerNorm(embedding_dim),
                nn.Linear(embedding_dim, embedding_channels),
                nn.ReLU(inplace=True),
            )
            if embedding_dim
            else None
        )
        extra = embedding_channels if embedding_dim else 0
        self.bottleneck = ConvBlock(widths[0] + extra, widths[0])
        self.up_blocks = nn.ModuleList(
            ConvBlock(widths[i - 1] + widths[i], widths[i]) for i in range(1, len(widths))
        )
        self.head = nn.Conv2d(widths[-1], 1, 1)

    def forward(
        self, maps: Sequence[Tensor], embedding: Tensor | None = None, *, out_size: Sequence[int]
    ) -> Tensor:
        """Logits ``[B, 1, *out_size]`` from ``maps`` (shallow → deep) and ``embedding`` [B, D]."""
        if [m.shape[1] for m in maps] != self.feature_channels:
            raise ValueError(
                f"feature maps have channels {[m.shape[1] for m in maps]}, "
                f"the decoder was built for {self.feature_channels}"
            )
        if (embedding is None) != (self.embed is None):
            raise ValueError(
                "this decoder takes an embedding"
                if self.embed is not None
                else "this decoder was built without an embedding input"
            )
        deep_first = [
            lateral(_trainable_input(m))
            for lateral, m in zip(self.laterals, maps[::-1], strict=True)
        ]
        x = deep_first[0]
        if self.embed is not None:
            e = self.embed(embedding.float())[:, :, None, None].expand(-1, -1, *x.shape[-2:])
            x = torch.cat([x, e], dim=1)
        x = self.bottleneck(x)
        for block, skip in zip(self.up_blocks, deep_first[1:], strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        logits = self.head(x)
        return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)

    def num_trainable_parameters(self) -> int:
        """Number of parameter elements that require grad."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _trainable_input(feature_map: Tensor) -> Tensor:
    """A float32 map autograd can use (encoders return inference-mode tensors)."""
    if feature_map.is_inference():
        return feature_map.to(torch.float32, copy=True)
    return feature_map.float()


def segmentation_loss(logits: Tensor, masks: Tensor, *, smooth: float = 1.0) -> Tensor:
    """Binary cross-entropy plus soft Dice loss over the batch (masks ``[B, H, W]`` in {0, 1}).

    The Dice term pools every pixel of the batch, so images with an empty mask (negatives)
    still count through their false positives without a 0/0 per image.
    """
    target = masks.to(logits.dtype).reshape(logits.shape)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = logits.sigmoid()
    dice = (2 * (probs * target).sum() + smooth) / (probs.sum() + target.sum() + smooth)
    return bce + (1 - dice)
