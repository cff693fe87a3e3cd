"""Mask types, the 5-fold split of the original, and folds CSV files.

Mask type (the original's stratification label), decided by the FIRST rule that matches, in
this order (so overlapping cases have one answer):

    0  fewer than 8 salt pixels (this includes every empty mask)
    1  no salt outside the 10-px border ring (the 81x81 interior [10:91, 10:91] is empty)
    2  "vertical": all rows identical, i.e. the mask depends on the column only. A full mask
       (every pixel salt) satisfies this and is therefore type 2.
    3..7  salt coverage (salt pixels / 10201) < 0.15, < 0.25, < 0.5, < 0.75, otherwise

Folds: scikit-learn `StratifiedKFold(n_splits, shuffle=True, random_state=seed)` over the ids in
train.csv order, stratified by mask type; `folds[i]` is the fold in which id i is validated.

Tiny masks: the original drops masks with 1..9 salt pixels from training. Here they still get
a fold (so a folds file covers every id and the split does not depend on the rule), and
`split_indices` leaves them out of the training side only: validation keeps them, so the
validation score is measured on the same kind of images the test set holds.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from salt_jax.data.rle import DataError
from salt_jax.fileio import atomic_write

__all__ = ["mask_type", "mask_types", "make_folds", "split_indices", "write_folds_csv",
           "read_folds_csv", "MIN_TRAIN_SALT_PX"]

BORDER = 10
MIN_TYPED_SALT_PX = 8  # below this a mask is type 0
MIN_TRAIN_SALT_PX = 10  # non-empty masks with fewer salt pixels are not trained on
COVERAGE_EDGES = (0.15, 0.25, 0.5, 0.75)  # types 3..7


def mask_types(masks: np.ndarray) -> np.ndarray:
    """Mask type (0..7, see the module docstring) of each mask; vectorised.

    Args:
        masks: (N, H, W) binary masks (any dtype; non-zero is salt).
    Returns:
        int64 (N,) types.
    """
    masks = np.asarray(masks) != 0
    if masks.ndim != 3:
        raise ValueError(f"mask_types expects (N, H, W) masks, got shape {masks.shape}")
    n, height, width = masks.shape
    salt = masks.sum(axis=(1, 2))
    interior_empty = ~masks[:, BORDER:height - BORDER, BORDER:width - BORDER].any(axis=(1, 2))
    vertical = (masks == masks[:, :1, :]).all(axis=(1, 2))
    by_coverage = 3 + np.searchsorted(COVERAGE_EDGES, salt / (height * width), side="right")
    # np.select takes the first true condition: the rule order above.
    return np.select([salt < MIN_TYPED_SALT_PX, interior_empty, vertical],
                     [0, 1, 2], default=by_coverage).astype(np.int64)


def mask_type(mask: np.ndarray) -> int:
    """Mask type of one (H, W) mask."""
    return int(mask_types(np.asarray(mask)[None])[0])


def make_folds(ids: Sequence[str], masks: np.ndarray, n_splits: int = 5,
               seed: int = 42) -> np.ndarray:
    """The validation fold (0..n_splits-1) of each id, stratified by mask type.

    Args:
        ids: N ids in train.csv order (only their count and order matter).
        masks: (N, H, W) binary masks aligned with `ids`.
    Returns:
        int64 (N,) folds.
    """
    types = mask_types(masks)
    if len(ids) != len(types):
        raise ValueError(f"{len(ids)} ids but {len(types)} masks")
    folds = np.full(len(types), -1, np.int64)
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros((len(types), 1)), types)):
        folds[valid] = fold
    return folds


def split_indices(folds: np.ndarray, masks: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices for `fold`.

    Training: ids of the other folds, minus masks with 1..MIN_TRAIN_SALT_PX-1 salt pixels.
    Validation: every id of `fold`.

    Returns:
        (train_idx, valid_idx), int64 index arrays in ascending order.
    """
    folds = np.asarray(folds)
    if not 0 <= fold <= folds.max(initial=-1):
        raise ValueError(f"fold {fold} is not among the folds 0..{folds.max(initial=-1)}")
    salt = (np.asarray(masks) != 0).sum(axis=(1, 2))
    tiny = (salt > 0) & (salt < MIN_TRAIN_SALT_PX)
    return np.flatnonzero((folds != fold) & ~tiny), np.flatnonzero(folds == fold)


def write_folds_csv(path: str | os.PathLike, ids: Sequence[str], folds: np.ndarray,
                    types: np.ndarray) -> None:
    """Write `id,fold,mask_type` rows atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    if not len(ids) == len(folds) == len(types):
        raise ValueError(f"lengths differ: {len(ids)} ids, {len(folds)} folds, {len(types)} types")
    with atomic_write(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "fold", "mask_type"])
        writer.writerows(zip(ids, np.asarray(folds).tolist(), np.asarray(types).tolist()))


def read_folds_csv(path: str | os.PathLike, ids: Sequence[str], *, n_splits: int = 5) -> np.ndarray:
    """Folds for `ids` (in that order) from a CSV with columns `id` and `fold`.

    Any other column (e.g. mask_type) is ignored, so a user may supply their own split.
    Raises:
        DataError: missing file or column, duplicate id, an id not in `ids`, an id of `ids`
            missing from the file, a fold that is not an integer in 0..n_splits-1, or a fold
            with no ids.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing folds CSV {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not {"id", "fold"} <= set(reader.fieldnames or []):
            raise DataError(f"{path}: header {reader.fieldnames} needs columns 'id' and 'fold'")
        table: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            table[_row_id(row, table, path, line)] = _row_fold(row, n_splits, path, line)
    wanted = list(ids)
    unknown = sorted(set(table) - set(wanted))
    if unknown:
        raise DataError(f"{path}: {len(unknown)} unknown id(s) not in the training set: "
                        f"{', '.join(unknown[:5])}")
    missing = [i for i in wanted if i not in table]
    if missing:
        raise DataError(f"{path}: no fold for {len(missing)} id(s): {', '.join(missing[:5])}")
    folds = np.array([table[i] for i in wanted], np.int64)
    empty = sorted(set(range(n_splits)) - set(Counter(folds.tolist())))
    if empty:
        raise DataError(f"{path}: fold(s) {empty} have no ids (n_splits={n_splits})")
    return folds


def _row_id(row: dict[str, str], seen: dict[str, int], path: Path, line: int) -> str:
    image_id = row.get("id")
    if not image_id:
        raise DataError(f"{path}, line {line}: empty or missing id")
    if image_id in seen:
        raise DataError(f"{path}, line {line}: id {image_id!r} appears more than once")
    return image_id


def _row_fold(row: dict[str, str], n_splits: int, path: Path, line: int) -> int:
    text = (row.get("fold") or "").strip()
    if not (text.isascii() and text.lstrip("-").isdigit()):
        raise DataError(f"{path}, line {line}: fold {text!r} of id {row.get('id')!r} is not an integer")
    fold = int(text)
    if not 0 <= fold < n_splits:
        raise DataError(f"{path}, line {line}: fold {fold} of id {row.get('id')!r} is outside "
                        f"0..{n_splits - 1}")
    return fold
