"""Tests for adaptor.data.masks: RLE formats, boxes and mask files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adaptor.data.masks import MaskError, boxes_to_mask, load_mask, rle_decode, rle_encode

# A 5x5 image; pixels are numbered column-major (flat index i -> row i % 5, col i // 5).
# SIIM relative "1 3 10 2": run at 1..3, then skip 10 pixels after pixel 3 -> run at 14..15.
SIIM_5X5 = "1 3 10 2"
ABSOLUTE_5X5 = "2 3 15 2"  # the same runs, 1-based absolute starts
EXPECTED_5X5 = np.array(
    [
        [0, 0, 0, 1, 0],
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],
    ],
    dtype=np.uint8,
)


def test_siim_hand_decoded_example() -> None:
    out = rle_decode(SIIM_5X5, 5, 5)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, EXPECTED_5X5)
    assert rle_encode(EXPECTED_5X5) == SIIM_5X5


def test_absolute_hand_decoded_example() -> None:
    np.testing.assert_array_equal(rle_decode(ABSOLUTE_5X5, 5, 5, relative=False), EXPECTED_5X5)
    assert rle_encode(EXPECTED_5X5, relative=False) == ABSOLUTE_5X5


def test_row_major_order() -> None:
    out = rle_decode("0 2 3 1", 2, 3, order="C")
    np.testing.assert_array_equal(out, [[1, 1, 0], [0, 0, 1]])


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("order", ["F", "C"])
def test_round_trip_random_masks(relative: bool, order: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(1, 20, size=2)
        mask = (rng.random((height, width)) < rng.random()).astype(np.uint8)
        rle = rle_encode(mask, order=order, relative=relative)
        out = rle_decode(rle, int(height), int(width), order=order, relative=relative)
        np.testing.assert_array_equal(out, mask)


@pytest.mark.parametrize("rle", ["-1", " -1", "", "  "])
def test_empty_rle(rle: str) -> None:
    assert not rle_decode(rle, 4, 3).any()
    assert rle_decode(rle, 4, 3).shape == (4, 3)


def test_encode_empty_and_full() -> None:
    empty = np.zeros((3, 3), dtype=np.uint8)
    assert rle_encode(empty) == "-1"
    assert rle_encode(empty, relative=False) == ""
    full = np.full((2, 3), 255, dtype=np.uint8)
    assert rle_encode(full) == "0 6"
    assert rle_encode(full, relative=False) == "1 6"


@pytest.mark.parametrize(
    ("rle", "relative", "message"),
    [
        ("1 2 3", True, "odd number"),
        ("1 -2", True, "negative run length"),
        ("-3 2", True, "negative offset"),
        ("20 10", True, "past the end"),
        ("0 25 0 1", True, "past the end"),
        ("1 2.5", True, "not an integer"),
        ("a b", True, "not an integer"),
        ("0 3", False, "1-based"),
        ("24 3", False, "past the end"),
    ],
)
def test_malformed_rle(rle: str, relative: bool, message: str) -> None:
    with pytest.raises(MaskError, match=message):
        rle_decode(rle, 5, 5, relative=relative)


def test_boxes_exact_pixels() -> None:
    out = boxes_to_mask([[1, 1, 3, 4]], 5, 6)
    expected = np.zeros((5, 6), dtype=np.uint8)
    expected[1:4, 1:3] = 1
    np.testing.assert_array_equal(out, expected)


def test_boxes_rsna_dicts_fractional_and_clipped() -> None:
    out = boxes_to_mask(
        [
            {"x": 0, "y": 0, "width": 2, "height": 1},
            {"x": "3.5", "y": 2.2, "width": 0.3, "height": 0.5},  # partial pixels count
            [4, 3, 100, 100],  # clipped at the image edge
        ],
        4,
        5,
    )
    expected = np.array(
        [
            [1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 1, 0],
            [0, 0, 0, 0, 1],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(out, expected)
    assert not boxes_to_mask([], 3, 3).any()


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([1, 2, 3], "x0, y0, x1, y1"),
        ({"x": 1, "y": 2, "width": 3}, "lacks keys"),
        ([3, 0, 1, 2], "negative width"),
        ({"x": 1, "y": 1, "width": -2, "height": 1}, "negative width"),
        ([0, 0, "a", 1], "non-numeric"),
        ([0, 0, float("nan"), 1], "non-finite"),
    ],
)
def test_malformed_boxes(box: object, message: str) -> None:
    with pytest.raises(MaskError, match=message):
        boxes_to_mask([box], 5, 5)


def test_load_mask_dispatch() -> None:
    assert load_mask(None, 5, 5) is None
    assert not load_mask("-1", 5, 5).any()
    np.testing.assert_array_equal(load_mask(SIIM_5X5, 5, 5), EXPECTED_5X5)
    np.testing.assert_array_equal(load_mask([[0, 0, 1, 1]], 2, 2), [[1, 0], [0, 0]])
    with pytest.raises(MaskError):
        load_mask(3, 5, 5)  # type: ignore[arg-type]


def test_load_mask_png_same_size_relative_to_base_dir(tmp_path: Path) -> None:
    data = np.array([[0, 255, 0], [7, 0, 0]], dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "m.png")
    out = load_mask("m.png", 2, 3, base_dir=tmp_path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, data > 0)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", 2, 3), data > 0)


def test_load_mask_palette_png_uses_indices(tmp_path: Path) -> None:
    img = Image.new("P", (2, 2), 0)
    img.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)  # index 0 drawn white
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "p.png", 2, 2), [[0, 1], [0, 0]])


def test_load_mask_png_other_size_is_resized_with_warning(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).save(path)
    with pytest.warns(UserWarning, match=r"small\.png is 2x2 but the image is 4x6"):
        out = load_mask(path, 4, 6)
    expected = np.zeros((4, 6), dtype=np.uint8)
    expected[:2, 3:] = 1
    expected[2:, :3] = 1
    np.testing.assert_array_equal(out, expected)


def test_load_mask_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(MaskError, match="gone.png"):
        load_mask(tmp_path / "gone.png", 2, 2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MaskError, match="bad.png"):
        load_mask(str(bad), 2, 2)
