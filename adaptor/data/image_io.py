"""Read medical images (PNG, JPEG, anything PIL opens, and DICOM) as grayscale floats.

Every reader returns ``float32`` arrays of shape ``[H, W]`` with values in
``[0, 1]`` where bright means dense (bone). Anything that cannot be read —
missing, truncated, corrupt, oversized, or compressed without a decoder —
raises :class:`ImageReadError` naming the file, so a bad file fails here and
not deep inside a training loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageFile
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    pixel_array,
)

from adaptor.errors import AdaptorError

DICOM_SUFFIXES = (".dcm", ".dicom")

# ITU-R BT.601 luma weights, the same as PIL's convert("L").
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)

# PIL reads ImageFile.LOAD_TRUNCATED_IMAGES, a process-wide switch, while decoding.
# Some libraries turn it on at import; we force it off around our own decodes.
_PIL_STRICT_LOCK = threading.Lock()


class ImageReadError(AdaptorError, ValueError):
    """An image that cannot be read; the message names the file and what is wrong."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` name or a file with the ``DICM`` magic at offset 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def load_image(path: str | Path) -> np.ndarray:
    """Load an image as grayscale ``float32`` ``[H, W]`` in ``[0, 1]``; raise ImageReadError."""
    path = _existing_file(path)
    if is_dicom(path):
        out = _dicom_to_unit(_read_dicom(path), path)
    else:
        with open_pil(path) as img:
            out = _pil_to_unit(img)
    return np.ascontiguousarray(np.clip(out, 0.0, 1.0), dtype=np.float32)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the file header without decoding the pixels."""
    path = _existing_file(path)
    if is_dicom(path):
        ds = _read_dicom(path, stop_before_pixels=True)
        rows, cols = ds.get("Rows"), ds.get("Columns")
        if not rows or not cols:
            raise ImageReadError(path, "DICOM has no Rows/Columns")
        return int(rows), int(cols)
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as exc:  # PIL raises many unrelated types for bad files
        raise ImageReadError(path, _describe(exc)) from exc
    return height, width


@contextmanager
def open_pil(path: str | Path) -> Iterator[Image.Image]:
    """Open and fully decode an image with PIL, strictly.

    Truncated or corrupt data, decompression bombs and zero-size images raise
    :class:`ImageReadError` here, whatever ``ImageFile.LOAD_TRUNCATED_IMAGES`` says.
    """
    path = Path(path)
    with _PIL_STRICT_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        img: Image.Image | None = None
        try:
            img = Image.open(path)
            _check_pil_size(img, path)
            img.load()
        except Exception as exc:
            if img is not None:
                img.close()
            if isinstance(exc, ImageReadError):
                raise
            # PIL raises many unrelated types for bad files.
            raise ImageReadError(path, _describe(exc)) from exc
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved
    try:
        yield img
    finally:
        img.close()


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if not path.is_file():
        raise ImageReadError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    return path


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_pil_size(img: Image.Image, path: Path) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageReadError(path, f"zero-size image ({width}x{height})")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageReadError(
            path, f"image of {width}x{height} pixels exceeds the decompression-bomb limit {limit}"
        )


def _pil_to_unit(img: Image.Image) -> np.ndarray:
    """Scale a decoded PIL image to grayscale [0, 1] by its true bit depth."""
    mode = img.mode
    if mode.startswith("I;16"):
        return np.asarray(img, dtype=np.float64) / 65535.0
    if mode == "I":
        values = np.asarray(img, dtype=np.float64)
        if img.format == "PNG":  # a 16-bit grayscale PNG decoded as 32-bit
            return values / 65535.0
        return _min_max(values)  # 32-bit integer data: the bit depth is unknown
    if mode == "F":
        return _min_max(np.asarray(img, dtype=np.float64))
    if mode == "L":
        return np.asarray(img, dtype=np.float64) / 255.0
    if mode == "LA":
        return np.asarray(img, dtype=np.float64)[..., 0] / 255.0
    if mode == "1":
        return np.asarray(img, dtype=np.float64)
    # RGB, RGBA, palette, CMYK, YCbCr, ...: luminance of the RGB rendering (alpha ignored).
    rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    return _luminance(rgb) / 255.0


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ _LUMA


def _min_max(values: np.ndarray) -> np.ndarray:
    """Stretch to [0, 1]; a constant image becomes all zeros."""
    lo, hi = float(np.min(values)), float(np.max(values))
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.float64)
    return (values.astype(np.float64) - lo) / (hi - lo)


def _read_dicom(path: Path, *, stop_before_pixels: bool = False) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # pydicom raises many types for malformed files
        raise ImageReadError(path, f"invalid DICOM ({_describe(exc)})") from exc


def _dicom_to_unit(ds: Dataset, path: Path) -> np.ndarray:
    """First frame of a DICOM as display-ready grayscale in [0, 1]."""
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(path, "DICOM has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        frame = pixel_array(ds, index=0)  # YBR is converted to RGB
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(frame, ds)
            return _luminance(rgb) / np.iinfo(rgb.dtype).max
        if frame.ndim == 3:
            bits = int(ds.get("BitsStored") or frame.dtype.itemsize * 8)
            return _luminance(frame) / (2.0**bits - 1)
        values = apply_modality_lut(frame, ds)
        unit = _apply_voi_lut(values, ds)
    except Exception as exc:  # no decoder, bad pixel module, truncated data, ...
        raise ImageReadError(path, f"cannot decode DICOM pixel data ({_describe(exc)})") from exc
    if unit is None:
        unit = _min_max(values)
        if not unit.any():
            return unit  # constant image: all zeros, whatever the photometric interpretation
    return 1.0 - unit if photometric == "MONOCHROME1" else unit


def _apply_voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """Apply the VOI LUT or window and scale its output range to [0, 1].

    Mirrors :func:`pydicom.pixels.apply_voi_lut` (the LUT wins over the window);
    returns ``None`` when neither is present or the window is unusable.
    """
    items = ds.get("VOILUTSequence")
    if items and items[0].get("LUTDescriptor") and items[0].get("LUTData") is not None:
        descriptor = items[0].LUTDescriptor
        n_entries, first_mapped = int(descriptor[0]) or 2**16, int(descriptor[1])
        if np.issubdtype(values.dtype, np.floating):
            values = np.rint(values).astype(np.int64)
        lut = apply_voi(np.arange(first_mapped, first_mapped + n_entries), ds)
        return _scale(apply_voi(values, ds), float(lut.min()), float(lut.max()))
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    try:
        out = apply_windowing(values, ds)
        # The window maps -inf/+inf to its output minimum/maximum.
        lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds)
    except ValueError:  # e.g. a zero window width: fall back to the pixel range
        return None
    return _scale(out, float(lo), float(hi))


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray | None:
    if not hi > lo:
        return None
    return (values.astype(np.float64) - lo) / (hi - lo)
