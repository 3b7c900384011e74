"""Segmentation masks: run-length strings, bounding boxes and mask image files.

All masks are ``uint8`` arrays of shape ``[H, W]`` holding 0 and 1.

Two run-length formats are supported, both as whitespace-separated integer pairs
over the image flattened in ``order`` (``"F"``, column-major, by default):

* ``relative=True`` — SIIM-ACR pneumothorax: ``(offset, length)`` where the offset
  counts pixels since the end of the previous run (from pixel 0 for the first run).
* ``relative=False`` — Kaggle style: ``(start, length)`` with a 1-based absolute start.

``-1`` or an empty string means an empty mask in either format.
"""

from __future__ import annotations

import reprlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adaptor.data.image_io import ImageReadError, is_dicom, load_image, open_pil
from adaptor.data.records import is_mask_path
from adaptor.errors import AdaptorError

_EMPTY_RLE = ("", "-1")
_BOX_KEYS = ("x", "y", "width", "height")


class MaskError(AdaptorError, ValueError):
    """A mask that cannot be decoded; the message says what is wrong."""


def rle_decode(
    rle: str, height: int, width: int, *, order: str = "F", relative: bool = True
) -> np.ndarray:
    """Decode a run-length string into a ``uint8`` ``{0, 1}`` mask of shape ``[height, width]``."""
    _check_shape(height, width)
    _check_order(order)
    n_pixels = height * width
    text = str(rle).strip()
    if text in _EMPTY_RLE:
        return np.zeros((height, width), dtype=np.uint8)
    values = _parse_ints(text, n_pixels)
    if len(values) % 2:
        raise MaskError(f"RLE has an odd number of values ({len(values)}); expected pairs")
    firsts, lengths = values[0::2], values[1::2]
    if (lengths < 0).any():
        raise MaskError(f"RLE has a negative run length ({int(lengths.min())})")
    if relative:
        if (firsts < 0).any():
            raise MaskError(f"RLE has a negative offset ({int(firsts.min())})")
        ends = np.cumsum(firsts + lengths)
        starts = ends - lengths
    else:
        if (firsts < 1).any():
            raise MaskError(f"RLE has a start {int(firsts.min())} < 1 (starts are 1-based)")
        starts = firsts - 1
        ends = starts + lengths
    if ends.size and ends.max() > n_pixels:
        raise MaskError(
            f"RLE run ends at pixel {int(ends.max())}, past the end of a "
            f"{height}x{width} image ({n_pixels} pixels)"
        )
    # Mark run starts +1 and ends -1; a running sum > 0 is inside some run.
    edges = np.zeros(n_pixels + 1, dtype=np.int64)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    flat = (np.cumsum(edges[:-1]) > 0).astype(np.uint8)
    return flat.reshape((height, width), order=order)


def rle_encode(mask: np.ndarray, *, order: str = "F", relative: bool = True) -> str:
    """Encode a 2-D mask (nonzero = foreground) as a run-length string.

    An empty mask encodes as ``"-1"`` in the relative (SIIM) format and ``""`` in
    the absolute (Kaggle) format.
    """
    _check_order(order)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MaskError(f"mask must be 2-D, got shape {mask.shape}")
    flat = (mask > 0).ravel(order=order).astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate(([0], flat, [0]))))
    starts, ends = changes[0::2], changes[1::2]
    if starts.size == 0:
        return "-1" if relative else ""
    firsts = starts - np.concatenate(([0], ends[:-1])) if relative else starts + 1
    pairs = np.stack([firsts, ends - starts], axis=1).ravel()
    return " ".join(str(int(v)) for v in pairs)


def boxes_to_mask(
    boxes: Sequence[Sequence[float]] | Sequence[Mapping[str, Any]], height: int, width: int
) -> np.ndarray:
    """Rasterise boxes into a ``uint8`` mask; every pixel a box overlaps is set.

    A box is ``[x0, y0, x1, y1]`` in pixel units (pixel ``c`` spans ``[c, c + 1)``)
    or an RSNA-style ``{"x", "y", "width", "height"}`` dict. Parts outside the
    image are clipped.
    """
    _check_shape(height, width)
    mask = np.zeros((height, width), dtype=np.uint8)
    for i, box in enumerate(boxes):
        x0, y0, x1, y1 = _box_corners(box, i)
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), width)
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), height)
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = 1
    return mask


def check_boxes(boxes: Sequence[Any]) -> None:
    """Raise MaskError unless every item is a box :func:`boxes_to_mask` can draw."""
    for i, box in enumerate(boxes):
        _box_corners(box, i)


def load_mask(
    mask: str | Path | list | None, height: int, width: int, *, base_dir: Path | None = None
) -> np.ndarray | None:
    """Turn a record's mask into a ``uint8`` ``[height, width]`` array (``None`` stays ``None``).

    A path (relative to ``base_dir`` unless absolute) is read as binary (> 0) and
    resized with nearest neighbour, with a warning, if its size differs. Any other
    string is SIIM-style relative RLE; a list is boxes.
    """
    if mask is None:
        return None
    if isinstance(mask, Path) or (isinstance(mask, str) and is_mask_path(mask)):
        path = Path(mask)
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return _load_mask_file(path, height, width)
    if isinstance(mask, str):
        return rle_decode(mask, height, width)
    if isinstance(mask, (list, tuple)):
        return boxes_to_mask(mask, height, width)
    raise MaskError(f"unsupported mask of type {type(mask).__name__}: {reprlib.repr(mask)}")


def _load_mask_file(path: Path, height: int, width: int) -> np.ndarray:
    _check_shape(height, width)
    try:
        if is_dicom(path):
            binary = load_image(path) > 0
        else:
            with open_pil(path) as img:
                binary = _pil_foreground(img)
    except ImageReadError as exc:
        raise MaskError(f"cannot read mask file {path}: {exc.reason}") from exc
    if binary.shape != (height, width):
        warnings.warn(
            f"mask {path} is {binary.shape[0]}x{binary.shape[1]} but the image is "
            f"{height}x{width}; resizing the mask with nearest neighbour",
            stacklevel=3,
        )
        binary = _resize_nearest(binary, height, width)
    return binary.astype(np.uint8)


def _pil_foreground(img: Image.Image) -> np.ndarray:
    """Foreground (> 0) of a decoded mask image: raw values, palette indices, any colour."""
    values = np.asarray(img)
    if img.mode in ("LA", "PA", "RGBA", "RGBa", "La"):
        values = values[..., :-1]  # alpha is not foreground
    binary = values > 0
    return binary.any(axis=-1) if binary.ndim == 3 else binary


def _resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize sampling at pixel centres (as PIL's NEAREST does)."""
    src_h, src_w = mask.shape
    rows = np.minimum(((np.arange(height) + 0.5) * src_h / height).astype(np.int64), src_h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * src_w / width).astype(np.int64), src_w - 1)
    return mask[np.ix_(rows, cols)]


def _parse_ints(text: str, n_pixels: int) -> np.ndarray:
    """The integers of an RLE string; none may exceed ``n_pixels`` (so sums cannot overflow)."""
    values = []
    for i, token in enumerate(text.split()):
        try:
            value = int(token)
        except ValueError:
            raise MaskError(
                f"RLE value {reprlib.repr(token)} at position {i} is not an integer"
            ) from None
        if abs(value) > n_pixels:
            raise MaskError(
                f"RLE value {reprlib.repr(value)} at position {i} is outside a "
                f"{n_pixels}-pixel image"
            )
        values.append(value)
    return np.asarray(values, dtype=np.int64)


def _box_corners(box: Any, index: int) -> tuple[float, float, float, float]:
    shown = reprlib.repr(box)
    if isinstance(box, Mapping):
        missing = [key for key in _BOX_KEYS if key not in box]
        if missing:
            raise MaskError(f"box {index} {shown} lacks keys {missing}")
        raw = [box[key] for key in _BOX_KEYS]
    elif isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 4:
        raise MaskError(
            f"box {index} {shown} is neither [x0, y0, x1, y1] nor an x/y/width/height dict"
        )
    else:
        raw = list(box)
    try:
        a, b, c, d = (float(v) for v in raw)
    except (TypeError, ValueError, OverflowError):
        raise MaskError(f"box {index} {shown} has a non-numeric coordinate") from None
    x0, y0, x1, y1 = (a, b, a + c, b + d) if isinstance(box, Mapping) else (a, b, c, d)
    if not np.isfinite([x0, y0, x1, y1]).all():
        raise MaskError(f"box {index} {shown} has a non-finite coordinate")
    if x1 < x0 or y1 < y0:
        raise MaskError(f"box {index} {shown} has negative width or height")
    return x0, y0, x1, y1


def _check_shape(height: int, width: int) -> None:
    if int(height) <= 0 or int(width) <= 0:
        raise MaskError(f"mask size must be positive, got {height}x{width}")


def _check_order(order: str) -> None:
    if order not in ("F", "C"):
        raise MaskError(f"order must be 'F' (column-major) or 'C' (row-major), got {order!r}")
