"""Segmentation heads over a frozen image encoder's feature maps, and their losses.

:class:`SegmentationDecoder` is a U-Net-style decoder built from the maps' channel counts,
so it fits any encoder whose ``feature_maps`` it is given (EfficientNet strides 4..32,
ResNet, ViT blocks at one stride). Decoding starts at the bottleneck; each shallower map
joins as a skip connection after the running map is upsampled to its size; the logits are
upsampled to the input resolution at the end. What enters the bottleneck (``bottleneck``):

- ``"map"``: the deepest feature map (the plain decoder);
- ``"map+embedding"``: the deepest map with a per-image vector (the Adaptor's image
  embedding) projected and tiled over its grid, concatenated before the first convolution;
- ``"neck"``: the reference's CNN head (github holajoa/Adaptor-VL-SSL,
  ``models/seg_models.py::ResNetAEUNet``): the vector goes through a transposed-convolution
  neck (768→512 3×3 stride 1, 512→512 3×3 stride 2: a 7×7 map, the stride-32 grid at
  224 px) that **replaces** the deepest map, resized to its grid at other sizes.

:class:`PatchGridDecoder` is the reference's ViT head (``ViTDecoder``): a grid of tokens
(the Adaptor's output over every patch token) decoded by convolutions and ×2 upsampling,
without skip connections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

DEEPEST_WIDTH = 128
MIN_WIDTH = 16
EMBEDDING_CHANNELS = 64
NECK_CHANNELS = 512  # the reference's neck width
PATCH_DECODER_WIDTHS = (512, 256, 128, 64)  # the reference ViTDecoder's ``features``
FOCAL_WEIGHT, FOCAL_GAMMA = 10.0, 2.0  # the reference MixedLoss(alpha=10, gamma=2)

Bottleneck = Literal["map", "map+embedding", "neck"]
SegmentationLoss = Literal["bce+dice", "focal+logdice"]


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
    ``bottleneck`` says what enters the bottleneck (module docstring); ``"map+embedding"``
    and ``"neck"`` need ``embedding_dim``, and ``"neck"`` the deepest map's grid
    ``bottleneck_size`` (its map is then not read).
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        *,
        bottleneck: Bottleneck = "map",
        embedding_dim: int | None = None,
        bottleneck_size: Sequence[int] | None = None,
    ):
        super().__init__()
        if not feature_channels:
            raise ValueError("the decoder needs at least one feature map")
        if (bottleneck == "map") != (embedding_dim is None):
            raise ValueError(
                "bottleneck 'map' takes no embedding_dim"
                if bottleneck == "map"
                else f"bottleneck {bottleneck!r} needs embedding_dim"
            )
        if bottleneck == "neck" and bottleneck_size is None:
            raise ValueError("bottleneck 'neck' needs bottleneck_size (the deepest map's grid)")
        deep_first = list(feature_channels)[::-1]
        widths = decoder_widths(len(deep_first))
        self.feature_channels = list(feature_channels)
        self.bottleneck_input = bottleneck
        self.bottleneck_size = tuple(bottleneck_size) if bottleneck == "neck" else None
        self.laterals = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
            for c, w in zip(deep_first, widths, strict=True)
        )
        self.embed = None
        self.neck = None
        extra = 0
        if bottleneck == "map+embedding":
            self.embed = nn.Sequential(
                nn.LayerNorm(embedding_dim),
                nn.Linear(embedding_dim, EMBEDDING_CHANNELS),
                nn.ReLU(inplace=True),
            )
            extra = EMBEDDING_CHANNELS
        elif bottleneck == "neck":
            self.laterals[0] = nn.Identity()  # the neck replaces the deepest map
            self.neck = nn.Sequential(
                nn.ConvTranspose2d(embedding_dim, NECK_CHANNELS, 3, stride=1, bias=False),
                nn.ConvTranspose2d(NECK_CHANNELS, NECK_CHANNELS, 3, stride=2, bias=False),
            )
            extra = NECK_CHANNELS - widths[0]
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
        if (embedding is None) != (self.bottleneck_input == "map"):
            raise ValueError(
                "this decoder was built without an embedding input"
                if self.bottleneck_input == "map"
                else f"this decoder's bottleneck {self.bottleneck_input!r} takes an embedding"
            )
        skips = [
            lateral(_trainable_input(m))
            for lateral, m in zip(self.laterals[1:], maps[::-1][1:], strict=True)
        ]
        if self.neck is not None:
            x = self.neck(embedding.float()[:, :, None, None])
            if x.shape[-2:] != self.bottleneck_size:
                x = F.interpolate(
                    x, size=self.bottleneck_size, mode="bilinear", align_corners=False
                )
        else:
            x = self.laterals[0](_trainable_input(maps[-1]))
        if self.embed is not None:
            e = self.embed(embedding.float())[:, :, None, None].expand(-1, -1, *x.shape[-2:])
            x = torch.cat([x, e], dim=1)
        x = self.bottleneck(x)
        for block, skip in zip(self.up_blocks, skips, strict=True):
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


class PatchGridDecoder(nn.Module):
    """The reference ViT head: a token grid ``[B, C, h, w]`` to logits, no skip connections.

    A 3×3 convolution at the grid's width, then one 3×3 convolution + batch norm + ReLU +
    ×2 upsampling per width of :data:`PATCH_DECODER_WIDTHS`, a 3×3 convolution to one
    channel, and a bilinear resize to the output size (the reference's fixed 224/896 px
    special cases become this resize).
    """

    def __init__(self, channels: int, widths: Sequence[int] = PATCH_DECODER_WIDTHS):
        super().__init__()
        self.feature_channels = [channels]
        stages = [_conv_bn_relu(channels, channels)]
        for c_in, c_out in zip([channels, *widths[:-1]], widths, strict=True):
            stages += [_conv_bn_relu(c_in, c_out), nn.Upsample(scale_factor=2)]
        self.body = nn.Sequential(*stages)
        self.head = nn.Conv2d(widths[-1], 1, 3, padding=1)

    def forward(
        self, maps: Sequence[Tensor], embedding: Tensor | None = None, *, out_size: Sequence[int]
    ) -> Tensor:
        """Logits ``[B, 1, *out_size]`` from ``maps = [grid]``; takes no separate embedding."""
        if embedding is not None or len(maps) != 1 or maps[0].shape[1] != self.feature_channels[0]:
            raise ValueError(
                f"the patch-grid decoder takes one [B, {self.feature_channels[0]}, h, w] grid "
                "and no embedding"
            )
        logits = self.head(self.body(_trainable_input(maps[0])))
        return F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)

    def num_trainable_parameters(self) -> int:
        """Number of parameter elements that require grad."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def segmentation_loss(
    logits: Tensor, masks: Tensor, *, kind: SegmentationLoss = "bce+dice", smooth: float = 1.0
) -> Tensor:
    """Loss of binary logits against masks ``[B, H, W]`` in {0, 1}.

    ``"bce+dice"`` (ours): binary cross-entropy + (1 − soft Dice). ``"focal+logdice"``
    (the reference, ``MixedLoss`` with ``--original_dice_loss``): 10 · focal loss (γ = 2,
    no α) − log(soft Dice). The soft Dice pools every pixel of the batch, so images with an
    empty mask (negatives) still count through their false positives without a 0/0.
    """
    target = masks.to(logits.dtype).reshape(logits.shape)
    probs = logits.sigmoid()
    dice = (2 * (probs * target).sum() + smooth) / (probs.sum() + target.sum() + smooth)
    if kind == "focal+logdice":
        focal = sigmoid_focal_loss(logits, target, alpha=-1, gamma=FOCAL_GAMMA, reduction="mean")
        return FOCAL_WEIGHT * focal - torch.log(dice)
    if kind != "bce+dice":
        raise ValueError(f"unknown segmentation loss {kind!r}")
    return F.binary_cross_entropy_with_logits(logits, target) + (1 - dice)
