"""One fold's training and validation arrays, and the per-epoch batch order.

The arrays are padded 101 -> 128 (salt_jax.data.geometry) once on the host and kept as uint8 (the
devices hold them whole; scaling and augmentation happen inside the jitted step). The batch order
of an epoch is a pure function of (seed, epoch), so a resumed run sees exactly the batches it
would have seen.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from salt_jax import checksums
from salt_jax.data import geometry
from salt_jax.data.folds import make_folds, mask_types, read_folds_csv, split_indices
from salt_jax.data.kaggle import load_train
from salt_jax.errors import DataError


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


def load_fold(data_dir: str | pathlib.Path, fold: int, *, folds_csv: str | None,
              fold_rule: str = "original") -> tuple[FoldData, Split]:
    """Reads the Kaggle-layout `data_dir`, splits `fold` and pads the images.

    The folds are the user's `folds_csv` (columns id, fold) if given, else
    `make_folds(..., rule=fold_rule)`. Ids of fold -1 are in neither training nor validation;
    training also drops masks with 1..9 salt pixels (salt_jax.data.split_indices). Writes nothing
    (see Split).
    """
    train = load_train(data_dir)
    folds = (read_folds_csv(folds_csv, train.ids) if folds_csv
             else make_folds(train.ids, train.masks, rule=fold_rule))
    split = Split(train.ids, folds, mask_types(train.masks), train.content_key,
                  checksums.json_checksum([list(train.ids), folds.tolist()]))
    train_idx, val_idx = split_indices(folds, train.masks, fold)
    if len(val_idx) == 0:
        raise DataError(f"fold {fold} of {data_dir} has no validation images")
    return FoldData(
        train_images=geometry.pad(train.images[train_idx]),
        train_masks=geometry.pad(train.masks[train_idx]),
        val_images=geometry.pad(train.images[val_idx]),
        val_masks=geometry.pad(train.masks[val_idx]),
        val_ids=tuple(train.ids[i] for i in val_idx),
    ), split


def epoch_batches(n: int, batch_size: int, *, seed: int, epoch: int,
                  n_devices: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """The training batches of `epoch`: a list of (indices int32, valid bool), one per step.

    A permutation drawn from (seed, epoch) only, cut into batches of `batch_size`; the last
    partial batch is kept, as the original's DataLoader (drop_last=False) does. On one device
    every batch is exactly its examples (the partial one has its own shape, compiled once more).
    On several devices each batch is padded to a multiple of `n_devices` (index 0, valid False)
    so it shards evenly; the train step leaves the padding out of the loss and BatchNorm.
    """
    if n < 1:
        raise ValueError("no training images")
    perm = np.random.default_rng([seed, epoch]).permutation(n).astype(np.int32)
    batches = []
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]
        size = padded_size(len(idx), n_devices)
        valid = np.arange(size) < len(idx)
        batches.append((np.concatenate([idx, np.zeros(size - len(idx), np.int32)]), valid))
    return batches


def padded_size(batch: int, n_devices: int) -> int:
    """The smallest multiple of `n_devices` holding `batch` examples."""
    return -(-batch // n_devices) * n_devices


def eval_batches(n: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every index 0..n-1 in order, in batches; the last batch padded with index 0.

    Returns (indices (k, batch_size) int32, valid (k, batch_size) bool). (Evaluation runs
    BatchNorm on its running statistics, so padding only needs masking in the sums.)
    """
    k = -(-n // batch_size)
    flat = np.zeros(k * batch_size, np.int32)
    flat[:n] = np.arange(n)
    valid = np.arange(k * batch_size) < n
    return flat.reshape(k, batch_size), valid.reshape(k, batch_size)
