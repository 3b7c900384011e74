"""Image preprocessing for an encoder: grey [H, W] in [0, 1] → normalised [3, h, w].

The sizes, interpolation, crop and normalisation always come from the encoder's own
config (open_clip's ``preprocess_cfg``, timm's resolved data config, or the constants a
built-in encoder documents), so cached embeddings match what the weights were trained on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode

RESIZE_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize, centre-crop and normalise a grey image the way an encoder expects.

    ``resize_mode="shortest"`` scales the image so it covers ``size / crop_pct`` keeping its
    aspect ratio, then centre-crops ``size``; ``"squash"`` resizes both sides to
    ``size / crop_pct`` ignoring the aspect ratio, then centre-crops ``size``.
    Grey is replicated to 3 channels before normalising. Picklable.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        InterpolationMode(self.interpolation)  # raises on an unknown name

    def __call__(self, image: np.ndarray) -> Tensor:
        """[H, W] float in [0, 1] → [3, h, w] float32, normalised."""
        if image.ndim != 2:
            raise ValueError(f"expected a grey image [H, W], got shape {image.shape}")
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        x = F.resize(x, list(self._scaled_size(x.shape[-2:])), self._mode(), antialias=True)
        x = F.center_crop(x, list(self.size)).clamp_(0.0, 1.0)
        return F.normalize(x.expand(3, -1, -1), list(self.mean), list(self.std))

    def _scaled_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        th, tw = self.size
        if self.resize_mode == "squash":
            return math.floor(th / self.crop_pct), math.floor(tw / self.crop_pct)
        h, w = hw
        scale = max(th / h, tw / w) / self.crop_pct
        return max(th, round(h * scale)), max(tw, round(w * scale))

    def _mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (part of encoder fingerprints)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImagePreprocess:
        """The inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def from_open_clip(cls, model: Any) -> ImagePreprocess:
        """From an open_clip model (or its ``visual`` tower) ``preprocess_cfg``."""
        cfg = getattr(model, "visual", model).preprocess_cfg
        return cls(
            size=_pair(cfg["size"]),
            mean=_triple(cfg["mean"]),
            std=_triple(cfg["std"]),
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
        )

    @classmethod
    def from_timm(cls, model: Any) -> ImagePreprocess:
        """From timm's ``resolve_data_config`` for the model's pretrained config."""
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        crop_mode = cfg.get("crop_mode", "center")
        if crop_mode not in ("center", "squash"):
            raise ValueError(f"unsupported timm crop_mode {crop_mode!r}")
        return cls(
            size=_pair(cfg["input_size"][1:]),
            mean=_triple(cfg["mean"]),
            std=_triple(cfg["std"]),
            interpolation=cfg["interpolation"],
            resize_mode="squash" if crop_mode == "squash" else "shortest",
            crop_pct=float(cfg["crop_pct"]),
        )


def _pair(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _triple(values: float | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    v = [float(x) for x in values] if isinstance(values, (tuple, list)) else [float(values)]
    if len(v) == 1:
        v *= 3
    return v[0], v[1], v[2]
