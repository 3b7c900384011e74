"""Any timm image model as a frozen encoder (pretrained from the hub, or randomly initialised).

Global = ``forward_head(forward_features(x), pre_logits=True)``; patches and feature maps come
from ``forward_intermediates`` with the final norm applied; preprocessing from timm's
resolved data config for the model.
"""

from __future__ import annotations

from torch import Tensor

from adaptor.encoders.base import (
    EncoderInfo,
    ImageEncoder,
    ImageOutput,
    flatten_map,
    hub_loading,
    select_multiscale,
)
from adaptor.encoders.fingerprint import fingerprint_module
from adaptor.encoders.transform import ImagePreprocess


class TimmImageEncoder(ImageEncoder):
    """A timm model without its classifier."""

    def __init__(self, name: str, model_name: str, pretrained: bool):
        import timm

        with hub_loading(f"timm model {model_name!r}"):
            model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
        if not hasattr(model, "forward_intermediates"):
            raise ValueError(
                f"timm model {model_name!r} has no forward_intermediates (timm >= 1.0)"
            )
        super().__init__(model)
        self.preprocess = ImagePreprocess.from_timm(model)
        self.patch_dim = model.feature_info[-1]["num_chs"]
        dim = getattr(model, "head_hidden_size", model.num_features)
        extra = {"kind": "timm", "preprocess": self.preprocess.to_dict(), "pool": "pre_logits"}
        self.info = EncoderInfo(name, fingerprint_module(model, extra), dim)

    def _encode(self, pixels: Tensor, with_patches: bool) -> ImageOutput:
        m = self._model
        if not with_patches:
            return ImageOutput(global_=m.forward_head(m.forward_features(pixels), pre_logits=True))
        final, maps = m.forward_intermediates(pixels, indices=1, norm=True, output_fmt="NCHW")
        global_ = m.forward_head(final, pre_logits=True)
        return ImageOutput(global_=global_, patches=flatten_map(maps[-1]))

    def _feature_maps(self, pixels: Tensor) -> list[Tensor]:
        maps = self._model.forward_intermediates(
            pixels, norm=True, output_fmt="NCHW", intermediates_only=True
        )
        return select_multiscale(maps)
