"""Small JPEG thumbnails of indexed images, made once at build time and kept in the store."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from adaptor.data.image_io import load_image

THUMBNAIL_SIDE = 160
JPEG_QUALITY = 85


def make_thumbnail(path: str | Path, side: int = THUMBNAIL_SIDE) -> bytes:
    """A grey JPEG of the image at ``path`` whose longer side is at most ``side`` pixels.

    Raises :class:`~adaptor.data.image_io.ImageReadError` for an unreadable image.
    """
    grey = np.round(load_image(path) * 255.0).astype(np.uint8)
    image = Image.fromarray(grey)  # uint8 [H, W] → mode "L"
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()
