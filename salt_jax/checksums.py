"""Checksums of array pytrees, so that a damaged checkpoint is detected instead of trusted.

orbax stores arrays zstd-compressed without a checksum of their own: a flipped bit in a data
file mostly decodes to other values without any error. Every checkpoint and saved model of
salt_jax therefore records a BLAKE2b digest of each array (dtype, shape and bytes, as the host
sees them) next to it, and the reader compares the arrays it restored with those digests.
Hashing runs at ~1 GB/s, about a second per save for the largest train state.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np

ALGORITHM = "blake2b-128"


def _host(x) -> np.ndarray:
    """The full value of an array on this host (a replicated global array: its local copy)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)  # replicated: every device holds the whole array
    return np.ascontiguousarray(np.asarray(x))


def digest(array) -> str:
    a = _host(array)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def tree_checksums(tree) -> dict[str, str]:
    """{key path: digest} for every array leaf of `tree`."""
    return {jax.tree_util.keystr(path): digest(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def json_checksum(value: Any) -> str:
    """Digest of a JSON value in canonical form (sorted keys)."""
    text = json.dumps(value, sort_keys=True, allow_nan=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def mismatches(tree, expected: dict[str, str]) -> list[str]:
    """Key paths whose array differs from `expected` (or that one of the two lacks)."""
    got = tree_checksums(tree)
    return sorted(k for k in got.keys() | expected.keys() if got.get(k) != expected.get(k))


def describe(bad: list[str]) -> str:
    """`bad` (from `mismatches`) for a one-line message."""
    return f"{len(bad)} array(s) differ from their recorded checksums ({', '.join(bad[:2])}{', ...' if len(bad) > 2 else ''})"


def read_error(err: BaseException, limit: int = 160) -> str:
    """An exception raised while reading a damaged checkpoint, in one short line.

    tensorstore's messages run to dozens of lines (the whole spec); the first says what failed.
    """
    text = (str(err).strip().splitlines() or [""])[0].split(" See full TensorStore details")[0]
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
