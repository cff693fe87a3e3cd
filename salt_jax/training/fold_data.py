"""One fold's training and validation arrays, and the per-epoch batch order.

The arrays are padded 101 -> 128 once on the host and kept as uint8 (the devices hold them whole;
conversion to float and augmentation happen inside the jitted step). The batch order of an epoch
is a pure function of (seed, epoch), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from salt_jax import checksums
from salt_jax.data import DataError, load_train, make_folds, mask_types, read_folds_csv, split_indices
from salt_jax.data.augment import pad_reflect_128


@dataclasses.dataclass(frozen=True)
class FoldData:
    """uint8 arrays: train_images/train_masks (Nt, 128, 128), val_* (Nv, 128, 128); val_ids (Nv,)."""

    train_images: np.ndarray
    train_masks: np.ndarray
    val_images: np.ndarray
    val_masks: np.ndarray
    val_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Split:
    """Where a fold's data came from: for WORKDIR/folds.csv and the run's record of its inputs.

    data_key: the data's content hash (TrainSet.content_key); folds_key: a hash of (ids, folds).
    """

    ids: tuple[str, ...]
    folds: np.ndarray
    mask_types: np.ndarray
    data_key: str
    folds_key: str


def load_fold(data_dir: str | pathlib.Path, fold: int, *, folds_csv: str | None) -> tuple[FoldData, Split]:
    """Reads the Kaggle-layout `data_dir`, splits `fold` and pads the images.

    The folds are the user's `folds_csv` (columns id, fold) if given, else the original's
    stratified split. Training drops masks with 1..9 salt pixels (salt_jax.data.split_indices);
    validation keeps every image of the fold. Writes nothing (see Split).
    """
    train = load_train(data_dir)
    folds = read_folds_csv(folds_csv, train.ids) if folds_csv else make_folds(train.ids, train.masks)
    split = Split(train.ids, folds, mask_types(train.masks), train.content_key,
                  checksums.json_checksum([list(train.ids), folds.tolist()]))
    train_idx, val_idx = split_indices(folds, train.masks, fold)
    if len(val_idx) == 0:
        raise DataError(f"fold {fold} of {data_dir} has no validation images")
    return FoldData(
        train_images=pad_reflect_128(train.images[train_idx]),
        train_masks=pad_reflect_128(train.masks[train_idx]),
        val_images=pad_reflect_128(train.images[val_idx]),
        val_masks=pad_reflect_128(train.masks[val_idx]),
        val_ids=tuple(train.ids[i] for i in val_idx),
    ), split


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
    """The training batches of `epoch`: (n // batch_size, batch_size) int32 indices.

    A permutation drawn from (seed, epoch) only; the last incomplete batch is dropped.
    """
    steps = n // batch_size
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training images")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def eval_batches(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every index 0..n-1 in order, in batches; the last batch padded with index 0.

    Returns (indices (k, batch_size) int32, valid (k, batch_size) bool).
    """
    k = -(-n // batch_size)
    flat = np.zeros(k * batch_size, np.int32)
    flat[:n] = np.arange(n)
    valid = np.arange(k * batch_size) < n
    return flat.reshape(k, batch_size), valid.reshape(k, batch_size)
