"""Kaggle RLE: hand-worked cases, malformed input, and every real mask against train.csv."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from salt_jax.data import DataError, rle_decode, rle_encode

pytestmark = pytest.mark.timeout(120)

REAL_DIR = Path(os.environ.get("TGS_SALT_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "tgs_salt"))

# Column-major flattening of HAND: column 0 = 1,1,0; column 1 = 0,0,0; column 2 = 0,1,1, so the
# 1-based pixel numbers of salt are 1, 2, 8, 9: runs "1 2" and "8 2".
HAND = np.array([[1, 0, 0],
                 [1, 0, 1],
                 [0, 0, 1]], np.uint8)
HAND_RLE = "1 2 8 2"


def test_encode_hand_worked():
    assert rle_encode(HAND) == HAND_RLE
    assert rle_encode(HAND.astype(bool)) == HAND_RLE


def test_decode_hand_worked():
    decoded = rle_decode(HAND_RLE, (3, 3))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, HAND)


def test_non_square_shape_is_column_major():
    # 2 rows x 3 columns: pixel 3 is row 0 of column 1.
    expected = np.array([[0, 1, 0], [0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(rle_decode("3 1", (2, 3)), expected)
    assert rle_encode(expected) == "3 1"


def test_empty_and_full():
    assert rle_encode(np.zeros((101, 101), np.uint8)) == ""
    assert rle_encode(np.ones((101, 101), np.uint8)) == "1 10201"
    for empty in ("", "  ", None, math.nan):
        np.testing.assert_array_equal(rle_decode(empty), np.zeros((101, 101), np.uint8))
    np.testing.assert_array_equal(rle_decode("1 10201"), np.ones((101, 101), np.uint8))


def test_runs_at_both_ends_of_the_image():
    mask = np.zeros((101, 101), np.uint8)
    mask[0, 0] = 1  # pixel 1
    mask[100, 100] = 1  # pixel 10201
    assert rle_encode(mask) == "1 1 10201 1"


def test_random_masks_against_the_definition():
    """Kaggle's definition: "start length" pairs covering exactly the 1-based column-major numbers
    of the salt pixels, in order, as maximal runs (a run never touches the next)."""
    rng = np.random.default_rng(0)
    for density in (0.01, 0.3, 0.5, 0.9):
        mask = (rng.random((101, 101)) < density).astype(np.uint8)
        rle = rle_encode(mask)
        numbers = [int(v) for v in rle.split()]
        starts, lengths = numbers[::2], numbers[1::2]
        covered = [p for s, n in zip(starts, lengths) for p in range(s, s + n)]
        assert covered == (np.flatnonzero(mask.T.ravel()) + 1).tolist(), density
        assert all(s + n < following for s, n, following in zip(starts, lengths, starts[1:])), density
        np.testing.assert_array_equal(rle_decode(rle), mask)  # an RLE checked above


def test_touching_runs_are_accepted():
    # pixels 1, 2 then 3, 4 in column-major order: all of column 0, then row 0 of column 1.
    expected = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0]], np.uint8)
    np.testing.assert_array_equal(rle_decode("1 2 3 2", (3, 3)), expected)


@pytest.mark.parametrize("rle, message", [
    ("1 2 3", "odd number"),
    ("1 a", "not a non-negative integer"),
    ("1.5 2", "not a non-negative integer"),
    ("-1 2", "not a non-negative integer"),
    ("1 ²", "not a non-negative integer"),
    ("1 0", "length < 1"),
    ("0 2", "start 0"),
    ("10201 2", "beyond"),
    ("10 2 1 2", "unsorted or overlapping"),
    ("1 5 3 2", "unsorted or overlapping"),
])
def test_malformed_rle_raises(rle, message):
    with pytest.raises(DataError, match=message):
        rle_decode(rle)


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("bad", [np.full((3, 3), 2), np.full((3, 3), 0.5), np.zeros((2, 2, 2))])
def test_encode_rejects_non_binary_or_non_2d(bad):
    with pytest.raises(DataError):
        rle_encode(bad)


@pytest.fixture(scope="module")
def real_rows() -> list[tuple[str, str]]:
    """(id, rle field exactly as written) for every row of the real train.csv."""
    if not (REAL_DIR / "train.csv").is_file():
        pytest.skip(f"real TGS data not found in {REAL_DIR} (set TGS_SALT_DIR)")
    lines = (REAL_DIR / "train.csv").read_text().splitlines()
    assert lines[0] == "id,rle_mask"
    return [tuple(line.split(",")) for line in lines[1:]]


@pytest.mark.realdata
def test_real_masks_encode_to_train_csv_byte_for_byte(real_rows):
    empty = 0
    for image_id, rle in real_rows:
        # Read the PNG directly (not through our loader): any non-zero level is salt.
        png = np.asarray(Image.open(io.BytesIO((REAL_DIR / "train/masks" / f"{image_id}.png").read_bytes())))
        mask = (png != 0).astype(np.uint8)
        assert rle_encode(mask) == rle, image_id  # train.csv writes an empty mask as ""
        np.testing.assert_array_equal(rle_decode(rle), mask, err_msg=image_id)
        empty += rle == ""
    assert 0.35 < empty / len(real_rows) < 0.43  # the documented ~39% empty masks
