"""Tests for adaptor.data.image_io: PIL formats, DICOM pixel pipeline and failure modes."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_files import write_dicom
from PIL import Image, ImageFile
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEGLSNearLossless,
)

from adaptor.data.image_io import ImageReadError, image_size, is_dicom, load_image


def _check_unit(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.float32
    assert arr.shape == shape
    assert np.isfinite(arr).all()
    assert arr.min() >= 0.0 and arr.max() <= 1.0


def test_png_8bit(tmp_path: Path) -> None:
    data = np.array([[0, 51, 255], [128, 7, 200]], dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(data).save(path)
    out = load_image(path)
    _check_unit(out, (2, 3))
    np.testing.assert_allclose(out, data / 255.0, atol=1e-7)


def test_png_16bit_scaled_by_65535(tmp_path: Path) -> None:
    data = np.array([[0, 1000, 65535], [4095, 30000, 12]], dtype=np.uint16)
    path = tmp_path / "a16.png"
    Image.fromarray(data).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"
    out = load_image(path)
    _check_unit(out, (2, 3))
    np.testing.assert_allclose(out, data / 65535.0, atol=1e-7)


def test_rgb_jpeg_to_luminance(tmp_path: Path) -> None:
    path = tmp_path / "c.jpg"
    Image.new("RGB", (16, 8), (200, 100, 50)).save(path, quality=95)
    out = load_image(path)
    _check_unit(out, (8, 16))
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    np.testing.assert_allclose(out, expected, atol=0.02)


def test_rgba_and_palette_png(tmp_path: Path) -> None:
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (4, 3), (255, 255, 255, 0)).save(rgba)
    np.testing.assert_allclose(load_image(rgba), 1.0, atol=1e-6)

    palette = Image.new("P", (4, 3), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 2), 1)
    path = tmp_path / "p.png"
    palette.save(path)
    out = load_image(path)
    _check_unit(out, (3, 4))
    assert out[2, 1] == pytest.approx(0.299, abs=1e-6)
    assert out.sum() == pytest.approx(0.299, abs=1e-6)


def test_truncated_png_raises_naming_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "cut.png"
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png") as info:
        load_image(path)
    assert info.value.path == str(path)
    assert info.value.reason


def test_truncated_png_raises_even_if_pil_allows_truncation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "cut.png"
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-400])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageReadError, match="cut.png"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_random_bytes_png_raises(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(2).bytes(500))
    with pytest.raises(ImageReadError, match="noise.png"):
        load_image(path)
    with pytest.raises(ImageReadError, match="noise.png"):
        image_size(path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="nope.dcm"):
        image_size(tmp_path / "nope.dcm")


def test_decompression_bomb_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (8, 8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(ImageReadError, match="decompression"):
        load_image(path)


def test_zero_size_png_raises(tmp_path: Path) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 0, 4, 8, 0, 0, 0, 0)
    path = tmp_path / "empty.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageReadError, match="empty.png"):
        load_image(path)


def test_image_size_png(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    Image.new("L", (7, 3)).save(path)
    assert image_size(path) == (3, 7)


# ---------------------------------------------------------------- DICOM

STORED_12BIT = np.array([[0, 900, 1000], [1100, 1300, 4095]], dtype=np.uint16)


def test_dicom_rescale_and_window_match_hand_computation(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "ct.dcm",
        STORED_12BIT,
        bits_stored=12,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=400,
    )
    out = load_image(path)
    _check_unit(out, (2, 3))
    hu = STORED_12BIT.astype(np.float64) * 1 - 1024
    # DICOM PS3.3 C.11.2.1.2.1, LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5), clipped.
    expected = np.clip((hu - (40 - 0.5)) / (400 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out[0, 0] == 0.0 and out[1, 2] == 1.0  # below / above the window
    assert 0 < out[0, 1] < out[0, 2] < out[1, 0] < 1


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    mono2 = load_image(write_dicom(tmp_path / "m2.dcm", STORED_12BIT, bits_stored=12))
    mono1 = load_image(
        write_dicom(tmp_path / "m1.dcm", STORED_12BIT, bits_stored=12, photometric="MONOCHROME1")
    )
    np.testing.assert_allclose(mono2, (STORED_12BIT - 0) / 4095.0, atol=1e-6)  # min-max
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono1[1, 2] == 0.0  # the largest stored value is darkest in MONOCHROME1


def test_dicom_8bit(tmp_path: Path) -> None:
    data = np.array([[10, 20], [30, 110]], dtype=np.uint8)
    out = load_image(write_dicom(tmp_path / "u8.dcm", data))
    _check_unit(out, (2, 2))
    np.testing.assert_allclose(out, (data - 10) / 100.0, atol=1e-6)


def test_dicom_signed_16bit(tmp_path: Path) -> None:
    data = np.array([[-1000, -1], [0, 1000]], dtype=np.int16)
    out = load_image(write_dicom(tmp_path / "s16.dcm", data))
    _check_unit(out, (2, 2))
    np.testing.assert_allclose(out, (data + 1000) / 2000.0, atol=1e-6)


def test_dicom_constant_is_zeros(tmp_path: Path) -> None:
    data = np.full((3, 4), 77, dtype=np.uint16)
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        out = load_image(
            write_dicom(tmp_path / f"{photometric}.dcm", data, photometric=photometric)
        )
        _check_unit(out, (3, 4))
        assert not out.any()


def test_dicom_multiframe_takes_first_frame(tmp_path: Path) -> None:
    frames = np.stack([np.array([[0, 10], [20, 30]]), np.array([[30, 20], [10, 0]])]).astype(
        np.uint16
    )
    out = load_image(write_dicom(tmp_path / "mf.dcm", frames, frames=2))
    np.testing.assert_allclose(out, frames[0] / 30.0, atol=1e-6)


def test_dicom_rgb_to_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 255, 255)
    rgb[1, 1] = (255, 0, 0)
    out = load_image(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    _check_unit(out, (2, 2))
    np.testing.assert_allclose(out, [[1.0, 0.0], [0.0, 0.299]], atol=1e-6)


def test_dicom_without_pixel_data_raises(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "nopix.dcm", STORED_12BIT)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="no pixel data"):
        load_image(path)


def test_corrupt_dicom_raises(tmp_path: Path) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(3).bytes(300))
    with pytest.raises(ImageReadError, match="bad.dcm"):
        load_image(path)


def test_dicom_compressed_garbage_raises(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "jls.dcm", STORED_12BIT, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSNearLossless
    ds.PixelData = encapsulate([b"not a jpeg-ls stream"])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match="jls.dcm.*pixel data"):
        load_image(path)


def test_dicom_bundled_ct_small() -> None:
    path = get_testdata_file("CT_small.dcm")
    out = load_image(path)
    _check_unit(out, (128, 128))
    assert out.std() > 0.05
    assert image_size(path) == (128, 128)


def test_is_dicom(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "x.dcm", STORED_12BIT)
    renamed = path.rename(tmp_path / "x.bin")
    assert is_dicom(renamed)
    assert is_dicom(tmp_path / "missing.DICOM")
    png = tmp_path / "y.png"
    Image.new("L", (2, 2)).save(png)
    assert not is_dicom(png)
    assert image_size(renamed) == (2, 3)
    np.testing.assert_allclose(load_image(renamed), STORED_12BIT / 4095.0, atol=1e-6)
