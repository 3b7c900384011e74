"""Checked decoding of uploaded query images (PNG, JPEG, DICOM) with bounded size.

The bytes are sniffed first (a name alone proves nothing), the header's pixel size is
checked before any pixel is decoded, and errors name the upload, never a server path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from adaptor.data.image_io import ImageReadError, image_size, load_image
from adaptor.retrieval.errors import RetrievalError

_SUFFIX = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


class UnsupportedUploadError(RetrievalError):
    """An upload that is not a PNG, JPEG or DICOM file."""


class BadUploadError(RetrievalError):
    """An upload of a supported type that cannot be decoded, or whose pixels exceed the limits."""


def sniff(data: bytes, filename: str = "") -> str | None:
    """``png``, ``jpeg`` or ``dicom`` from the leading bytes (or a ``.dcm`` name), else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[128:132] == b"DICM" or filename.lower().endswith((".dcm", ".dicom")):
        return "dicom"
    return None


def decode_upload(data: bytes, filename: str, max_side: int) -> np.ndarray:
    """A grey [H, W] float32 image in [0, 1] from uploaded bytes.

    Raises UnsupportedUploadError for other file types and BadUploadError for corrupt
    files or images with a side longer than ``max_side`` pixels.
    """
    name = Path(filename or "upload").name
    kind = sniff(data, name)
    if kind is None:
        raise UnsupportedUploadError(
            f"{name!r} is not a PNG, JPEG or DICOM file (its first bytes say otherwise)"
        )
    with tempfile.NamedTemporaryFile(suffix=_SUFFIX[kind]) as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            height, width = image_size(tmp.name)
            if max(height, width) > max_side:
                raise BadUploadError(
                    f"{name!r} is {width}x{height} pixels; at most {max_side} per side is accepted"
                )
            return load_image(tmp.name)
        except ImageReadError as err:
            raise BadUploadError(
                f"cannot read {kind.upper()} upload {name!r}: {err.reason}"
            ) from None
