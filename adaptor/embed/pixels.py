"""One record's pixels, read the same way by every stage that feeds an image encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adaptor.data.image_io import load_image
from adaptor.data.records import RecordError


def load_pixels(record_id: str, path: str | Path) -> np.ndarray:
    """The record's image as grayscale ``float32`` ``[H, W]`` in ``[0, 1]``.

    Any decoding failure raises :class:`RecordError` naming the record and the file, so a
    caller can skip that record (it pickles, so it crosses loader workers and Ray tasks).
    """
    try:
        return load_image(path)
    except Exception as err:  # PIL, pydicom and numpy raise many unrelated types
        reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
        raise RecordError(record_id, f"cannot read image: {reason}", path) from err
