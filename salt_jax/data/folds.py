"""Mask types, the 5-fold split of the original, and folds CSV files.

Mask type (the original's stratification label), decided by the FIRST rule that matches, in
this order (so overlapping cases have one answer):

    0  fewer than 8 salt pixels (this includes every empty mask)
    1  no salt outside the 10-px border ring (the 81x81 interior [10:91, 10:91] is empty)
    2  "vertical": all rows identical, i.e. the mask depends on the column only. A full mask
       (every pixel salt) satisfies this and is therefore type 2.
    3..7  salt coverage (salt pixels / 10201) < 0.15, < 0.25, < 0.5, < 0.75, otherwise

Folds (`make_folds`), two rules; `folds[i]` is the fold in which id i is validated, -1 = never
used (neither trained nor validated on):

    "original" (default) the original's (docs/ORIGINAL.md, Folds): ids whose mask has 1..9 salt
               pixels get fold -1; the remaining ids, in train.csv order, are split by
               scikit-learn `StratifiedKFold(n_splits, shuffle=True, random_state=seed)`
               stratified by mask type. scikit-learn releases before 0.22 may allocate the
               stratified folds differently; the installed one reproduces the original's split.
    "validate_tiny"    every id is split (the tiny masks included) and `split_indices` keeps the
               tiny masks out of training only: validation then also scores the few tiny masks,
               as the test set holds them. Not the original's folds: drawn over other ids, they
               agree with the original's for 20% of the 3,602 ids of the Kaggle set.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold

from salt_jax.errors import DataError
from salt_jax.fileio import atomic_write

__all__ = ["mask_type", "mask_types", "make_folds", "split_indices", "write_folds_csv",
           "read_folds_csv", "MIN_TRAIN_SALT_PX", "FOLD_RULES", "UNUSED"]

BORDER = 10
MIN_TYPED_SALT_PX = 8  # below this a mask is type 0
MIN_TRAIN_SALT_PX = 10  # non-empty masks with fewer salt pixels are not trained on
COVERAGE_EDGES = (0.15, 0.25, 0.5, 0.75)  # types 3..7
FOLD_RULES = ("original", "validate_tiny")
UNUSED = -1  # the fold of an id used neither for training nor for validation


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
               seed: int = 42, rule: str = "original") -> np.ndarray:
    """The validation fold (0..n_splits-1, or UNUSED) of each id, stratified by mask type.

    Args:
        ids: N ids in train.csv order (only their count and order matter).
        masks: (N, H, W) binary masks aligned with `ids`.
        rule: one of FOLD_RULES (module docstring).
    Returns:
        int64 (N,) folds.
    """
    if rule not in FOLD_RULES:
        raise ValueError(f"fold rule {rule!r}: expected one of {FOLD_RULES}")
    types = mask_types(masks)
    if len(ids) != len(types):
        raise ValueError(f"{len(ids)} ids but {len(types)} masks")
    folds = np.full(len(types), UNUSED, np.int64)
    kept = ~_tiny(masks) if rule == "original" else np.ones(len(types), bool)
    positions = np.flatnonzero(kept)  # train.csv order, as the original's filtered id list
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros((len(positions), 1)), types[positions])):
        folds[positions[valid]] = fold
    return folds


def _tiny(masks: np.ndarray) -> np.ndarray:
    """Masks with 1..MIN_TRAIN_SALT_PX-1 salt pixels (the original never trains on them)."""
    salt = (np.asarray(masks) != 0).sum(axis=(1, 2))
    return (salt > 0) & (salt < MIN_TRAIN_SALT_PX)


def split_indices(folds: np.ndarray, masks: np.ndarray, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices for `fold`.

    Training: ids of the other folds (not UNUSED), minus masks with 1..MIN_TRAIN_SALT_PX-1 salt
    pixels (already UNUSED under the original rule; this matters for "validate_tiny" and for
    user folds files). Validation: every id of `fold`.

    Returns:
        (train_idx, valid_idx), int64 index arrays in ascending order.
    """
    folds = np.asarray(folds)
    if not 0 <= fold <= folds.max(initial=-1):
        raise ValueError(f"fold {fold} is not among the folds 0..{folds.max(initial=-1)}")
    train = (folds != fold) & (folds != UNUSED) & ~_tiny(masks)
    return np.flatnonzero(train), np.flatnonzero(folds == fold)


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

    Any other column (e.g. mask_type) is ignored, so a user may supply their own split. Fold -1
    (UNUSED) keeps an id out of both training and validation.
    Raises:
        DataError: missing file or column, duplicate id, an id not in `ids`, an id of `ids`
            missing from the file, a fold that is not an integer in -1..n_splits-1, or a fold
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
    if not UNUSED <= fold < n_splits:
        raise DataError(f"{path}, line {line}: fold {fold} of id {row.get('id')!r} is outside "
                        f"{UNUSED}..{n_splits - 1} ({UNUSED}: unused)")
    return fold
