"""Frozen pretrained image and text encoders, built by name (see :mod:`.registry`).

Importing this package is light: the heavy libraries (timm, open_clip, transformers) load
only when an encoder that needs them is built.
"""

from adaptor.encoders.base import (
    EncoderInfo,
    EncoderLoadError,
    ImageEncoder,
    ImageOutput,
    TextEncoder,
    TextOutput,
    TokenBatch,
)
from adaptor.encoders.fingerprint import fingerprint_module
from adaptor.encoders.registry import (
    DEFAULT_IMAGE_ENCODER,
    DEFAULT_TEXT_ENCODER,
    EFFICIENTNET_LITE_ENCODERS,
    UnknownEncoderError,
    build_image_encoder,
    build_text_encoder,
    check_encoder_name,
    describe_encoder_names,
)
from adaptor.encoders.transform import ImagePreprocess

__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "DEFAULT_TEXT_ENCODER",
    "EFFICIENTNET_LITE_ENCODERS",
    "EncoderInfo",
    "EncoderLoadError",
    "ImageEncoder",
    "ImageOutput",
    "ImagePreprocess",
    "TextEncoder",
    "TextOutput",
    "TokenBatch",
    "UnknownEncoderError",
    "build_image_encoder",
    "build_text_encoder",
    "check_encoder_name",
    "describe_encoder_names",
    "fingerprint_module",
]
