"""Kaggle's run-length encoding of binary masks.

The TGS format numbers pixels column-major (down the first column, then the next), 1-based, and
writes "start length" pairs separated by single spaces; an empty mask is the empty string.
Encoding and decoding are vectorised with numpy: no Python loop over pixels or runs.
"""

from __future__ import annotations

import math
import re

import numpy as np

from salt_jax.data.geometry import IMAGE_SIZE
from salt_jax.errors import DataError

__all__ = ["rle_encode", "rle_decode"]

# ASCII digits and whitespace only (str.isdigit would also accept e.g. superscripts).
_DIGITS = re.compile(r"[0-9\s]+", re.ASCII)


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D binary mask (bool, or integers 0/1) as Kaggle RLE.

    Args:
        mask: (H, W) array; True/1 is salt.
    Returns:
        "start length start length ..." with 1-based column-major starts; "" for an empty mask.
    Raises:
        DataError: if `mask` is not 2-D or holds values other than 0 and 1.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise DataError(f"rle_encode expects a 2-D mask, got shape {mask.shape}")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise DataError(f"rle_encode expects a binary mask, got values {np.unique(mask)[:5]}...")
    # Column-major flattening, framed by zeros so every run has a rising and a falling edge.
    flat = np.concatenate([[False], mask.T.ravel().astype(bool), [False]])
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # 0-based pixel index where a run starts/ends
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.stack([starts + 1, ends - starts], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))


def rle_decode(rle: str | float | None, shape: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """Decode Kaggle RLE into a uint8 (H, W) mask of 0/1.

    Args:
        rle: the RLE string; "", whitespace, None or NaN (how pandas reads an empty field) mean
            an empty mask. Tokens may be separated by any whitespace.
        shape: (H, W) of the mask.
    Returns:
        uint8 array of shape `shape` with 1 on the encoded pixels.
    Raises:
        DataError: odd number of tokens, a token that is not a non-negative decimal integer,
            a start < 1, a length < 1, a run past the last pixel, or runs that are unsorted or
            overlap (touching runs are accepted: they still describe a well-defined mask).
    """
    height, width = shape
    n_pixels = height * width
    if rle is None or (isinstance(rle, float) and math.isnan(rle)):
        rle = ""
    if not isinstance(rle, str):
        raise DataError(f"RLE must be a string, got {type(rle).__name__}: {rle!r}")
    tokens = rle.split()
    if not tokens:
        return np.zeros(shape, np.uint8)
    if len(tokens) % 2:
        raise DataError(f"RLE has an odd number of tokens ({len(tokens)}): {_preview(rle)}")
    if not _DIGITS.fullmatch(rle):
        bad = next(t for t in tokens if not _DIGITS.fullmatch(t))
        raise DataError(f"RLE token {bad!r} is not a non-negative integer: {_preview(rle)}")
    pairs = np.fromiter(map(int, tokens), np.int64, len(tokens)).reshape(-1, 2)
    starts, lengths = pairs[:, 0] - 1, pairs[:, 1]  # 0-based starts
    _check_runs(starts, lengths, n_pixels, rle)
    # Mark +1 at each run start and -1 one past its end; the running sum is the mask.
    # Sorted, non-overlapping runs make the starts (and the ends) distinct, so plain
    # fancy-index updates suffice.
    delta = np.zeros(n_pixels + 1, np.int32)
    delta[starts] += 1
    delta[starts + lengths] -= 1
    flat = np.cumsum(delta[:-1]).astype(np.uint8)
    return flat.reshape(width, height).T.copy()  # undo the column-major order


def _check_runs(starts: np.ndarray, lengths: np.ndarray, n_pixels: int, rle: str) -> None:
    """Reject runs that start before pixel 1, are empty, overflow, or are unsorted/overlapping."""
    if (starts < 0).any():
        raise DataError(f"RLE start 0 is invalid (starts are 1-based): {_preview(rle)}")
    if (lengths < 1).any():
        raise DataError(f"RLE has a run of length < 1: {_preview(rle)}")
    ends = starts + lengths  # exclusive
    if (ends > n_pixels).any():
        last = int(ends.max())
        raise DataError(f"RLE run ends at pixel {last} beyond the {n_pixels} pixels: {_preview(rle)}")
    if (starts[1:] < ends[:-1]).any():
        raise DataError(f"RLE runs are unsorted or overlapping: {_preview(rle)}")


def _preview(rle: str, limit: int = 60) -> str:
    """The RLE quoted and shortened for an error message."""
    return repr(rle if len(rle) <= limit else rle[:limit] + "...")
