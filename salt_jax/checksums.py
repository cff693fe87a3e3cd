"""Checksums of array pytrees, so that a damaged checkpoint is detected instead of trusted.

orbax stores arrays zstd-compressed without a checksum of their own: a flipped bit in a data
file mostly decodes to other values without any error. Every checkpoint and saved model of
salt_jax therefore records a BLAKE2b digest of each array (dtype, shape and bytes, as the host
sees them) next to it, and the reader compares the arrays it restored with those digests.
Hashing runs at ~1 GB/s a thread, on a thread pool (`tree_checksums`).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

ALGORITHM = "blake2b-128"
_THREADS = min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


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
    """{key path: digest} for every array leaf of `tree`.

    The leaves are copied and hashed on a thread pool (both release the GIL): one thread took
    1.0 s for the SE-ResNeXt-50's 802 MB train state on our 2-core CPU, at every checkpoint.
    """
    items = jax.tree_util.tree_leaves_with_path(tree)
    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
        digests = pool.map(lambda item: digest(item[1]), items)
        return {jax.tree_util.keystr(path): d for (path, _), d in zip(items, digests)}


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
