"""Mask types on hand-made masks, the stratified 5-fold split, the 1..9 px rule, folds CSVs, and
the original's fold assignment on the real training set."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from salt_jax.data import (DataError, make_folds, mask_type, mask_types, read_folds_csv,
                           split_indices, write_folds_csv)

pytestmark = pytest.mark.timeout(60)


def blank() -> np.ndarray:
    return np.zeros((101, 101), np.uint8)


def first_k(k: int) -> np.ndarray:
    """Salt on the first k pixels in row-major order: full rows then a partial row (so the
    rows are not all identical), reaching the interior once k > 10 * 101."""
    mask = blank().ravel()
    mask[:k] = 1
    return mask.reshape(101, 101)


def test_type_0_small_or_empty():
    assert mask_type(blank()) == 0
    seven = blank()
    seven[50, 40:47] = 1
    assert mask_type(seven) == 0
    eight = blank()
    eight[50, 40:48] = 1
    assert mask_type(eight) != 0


def test_type_1_border_ring_only():
    top = blank()
    top[:10, 30:60] = 1  # inside the 10-px ring
    assert mask_type(top) == 1
    top[10, 30] = 1  # one pixel in the interior [10:91, 10:91]
    assert mask_type(top) != 1
    corner = blank()
    corner[95:, 95:] = 1
    assert mask_type(corner) == 1


def test_border_precedes_vertical():
    left = blank()
    left[:, :10] = 1  # all rows identical AND all in the ring: the ring rule comes first
    assert mask_type(left) == 1


def test_type_2_vertical_and_full():
    half = blank()
    half[:, :60] = 1
    assert mask_type(half) == 2
    band = blank()
    band[:, 40:45] = 1
    assert mask_type(band) == 2
    # A full mask has identical rows: it is "vertical" by the rule order.
    assert mask_type(np.ones((101, 101), np.uint8)) == 2
    nearly = half.copy()
    nearly[50, 70] = 1  # one row differs
    assert mask_type(nearly) == 6  # 6061 px = 59% coverage


@pytest.mark.parametrize("pixels, expected", [
    (1111, 3), (1530, 3), (1531, 4),  # 1530/10201 < 0.15 <= 1531/10201
    (2550, 4), (2551, 5),  # 0.25 boundary
    (5100, 5), (5101, 6),  # 0.5 boundary
    (7650, 6), (7651, 7),  # 0.75 boundary
    (10200, 7),
])
def test_coverage_types(pixels, expected):
    assert mask_type(first_k(pixels)) == expected


def test_mask_types_of_a_stack_hand_worked():
    """One vectorised call over masks of every rule: each gets the type worked out by hand,
    whatever its neighbours (the batched reductions must not mix masks)."""
    ring = blank()
    ring[:10, 30:60] = 1  # 300 px, all in the top ring
    band = blank()
    band[:, 40:45] = 1  # 505 px, every row the same
    masks = np.stack([
        blank(),  # 0: no salt
        first_k(3000),  # 29 rows + 71 px reach the interior; rows differ; 3000/10201 = 0.294 -> 5
        np.ones((101, 101), np.uint8),  # 2: all rows identical (the ring rule fails: interior full)
        ring,  # 1
        first_k(9000),  # 9000/10201 = 0.882 -> 7
        band,  # 2
        first_k(7),  # 0: 7 px < 8
        first_k(1200),  # 11 rows + 89 px: row 10 enters the interior; 0.118 -> 3
    ])
    np.testing.assert_array_equal(mask_types(masks), [0, 5, 2, 1, 7, 2, 0, 3])


def test_mask_types_agree_with_the_originals_rule_one_mask_at_a_time():
    """Against `_original_mask_type` (below): the original's rule transcribed as a per-mask loop
    (a salt count compared with the count inside the 10-px frame, rows compared one by one), an
    implementation independent of the vectorised one, over 300 masks of every type."""
    masks = mixed_masks(300, seed=5)
    expected = [_original_mask_type(m.astype(np.float64)) for m in masks]
    assert set(expected) == set(range(8))  # every rule is exercised
    np.testing.assert_array_equal(mask_types(masks), expected)


def mixed_masks(n: int, seed: int = 0) -> np.ndarray:
    """n masks spread over all types, with a few tiny (1..9 px) ones."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 101, 101), np.uint8)
    for i, kind in enumerate(rng.integers(0, 6, n)):
        if kind == 1:
            masks[i] = first_k(int(rng.integers(1200, 10200)))
        elif kind == 2:
            masks[i, :, : rng.integers(15, 90)] = 1
        elif kind == 3:
            masks[i, :5, : rng.integers(10, 90)] = 1
        elif kind == 4:
            masks[i, 50, 50: 50 + rng.integers(1, 10)] = 1
    return masks


def test_folds_stratified_balanced_and_deterministic():
    masks = mixed_masks(503)
    ids = [f"id{i}" for i in range(503)]
    folds = make_folds(ids, masks)
    salt = masks.astype(bool).sum(axis=(1, 2))
    tiny = (salt > 0) & (salt < 10)
    assert tiny.any()
    np.testing.assert_array_equal(folds == -1, tiny)  # the original's rule: tiny masks unused
    assert folds.shape == (503,) and set(folds[~tiny].tolist()) == {0, 1, 2, 3, 4}
    sizes = np.bincount(folds[~tiny])
    assert sizes.max() - sizes.min() <= 1
    types = mask_types(masks)
    for t in np.unique(types[~tiny]):
        per_fold = np.bincount(folds[(types == t) & ~tiny], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1, (t, per_fold)
    np.testing.assert_array_equal(make_folds(ids, masks), folds)
    assert (make_folds(ids, masks, seed=7) != folds).any()


def test_validate_tiny_rule_splits_every_id_as_scikit_learn():
    from sklearn.model_selection import StratifiedKFold

    masks = mixed_masks(100, seed=3)
    folds = make_folds([str(i) for i in range(100)], masks, n_splits=4, seed=11, rule="validate_tiny")
    splitter = StratifiedKFold(n_splits=4, shuffle=True, random_state=11)
    for fold, (_, valid) in enumerate(splitter.split(np.zeros(100), mask_types(masks))):
        np.testing.assert_array_equal(np.flatnonzero(folds == fold), valid)
    with pytest.raises(ValueError, match="fold rule 'other'"):
        make_folds(["a"], masks[:1], rule="other")


def test_tiny_masks_are_left_out_of_training_only():
    """With user folds (or --fold_rule=validate_tiny) a tiny mask in another fold is not trained on."""
    masks = np.stack([blank(), first_k(1), first_k(9), first_k(10), first_k(5000), blank()])
    folds = np.array([0, 1, 0, 1, 0, 1])
    train, valid = split_indices(folds, masks, 0)
    np.testing.assert_array_equal(train, [3, 5])  # 1 px mask (index 1) dropped; 10 px kept
    np.testing.assert_array_equal(valid, [0, 2, 4])  # the 9 px mask stays in validation
    train, valid = split_indices(folds, masks, 1)
    np.testing.assert_array_equal(train, [0, 4])  # 9 px mask (index 2) dropped
    np.testing.assert_array_equal(valid, [1, 3, 5])
    with pytest.raises(ValueError, match="fold 2"):
        split_indices(folds, masks, 2)


def test_unused_fold_is_in_neither_side():
    masks = np.stack([blank(), first_k(3000), first_k(5000), first_k(20), blank()])
    folds = np.array([0, -1, 1, -1, 1])
    for fold in (0, 1):
        train, valid = split_indices(folds, masks, fold)
        assert not {1, 3} & (set(train.tolist()) | set(valid.tolist()))
    np.testing.assert_array_equal(split_indices(folds, masks, 0)[0], [2, 4])


def test_folds_csv_round_trip(tmp_path: Path):
    masks = mixed_masks(40)
    ids = [f"x{i:02d}" for i in range(40)]
    folds = make_folds(ids, masks)
    path = tmp_path / "sub" / "folds.csv"
    write_folds_csv(path, ids, folds, mask_types(masks))
    assert path.read_text().splitlines()[0] == "id,fold,mask_type"
    assert [p.name for p in path.parent.iterdir()] == ["folds.csv"]  # no temp file left
    np.testing.assert_array_equal(read_folds_csv(path, ids), folds)
    # A user's own file may list the ids in another order and without mask types.
    own = tmp_path / "own.csv"
    own.write_text("fold,id\n" + "".join(f"{f},{i}\n" for i, f in reversed(list(zip(ids, folds)))))
    np.testing.assert_array_equal(read_folds_csv(own, ids), folds)


IDS = ["a", "b", "c"]


@pytest.mark.parametrize("text, message", [
    ("id,fold\na,0\nb,1\nc,1\nz,0\n", r"1 unknown id\(s\) .*: z"),
    ("id,fold\na,0\nb,1\n", r"no fold for 1 id\(s\): c"),
    ("id,fold\na,0\nb,1\nc,5\n", r"line 4: fold 5 of id 'c' is outside -1\.\.4"),
    ("id,fold\na,0\nb,-2\nc,1\n", r"fold -2 of id 'b' is outside -1\.\.4"),
    ("id,fold\na,0\nb,one\nc,1\n", r"line 3: fold 'one' of id 'b' is not an integer"),
    ("id,fold\na,0\na,1\nc,1\n", r"line 3: id 'a' appears more than once"),
    ("id,split\na,0\n", r"needs columns 'id' and 'fold'"),
])
def test_read_folds_csv_errors(tmp_path: Path, text, message):
    path = tmp_path / "folds.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        read_folds_csv(path, IDS, n_splits=5)


def test_read_folds_csv_empty_fold_and_missing_file(tmp_path: Path):
    path = tmp_path / "folds.csv"
    path.write_text("id,fold\na,0\nb,1\nc,1\n")
    with pytest.raises(DataError, match=r"fold\(s\) \[2\] have no ids"):
        read_folds_csv(path, IDS, n_splits=3)
    np.testing.assert_array_equal(read_folds_csv(path, IDS, n_splits=2), [0, 1, 1])
    path.write_text("id,fold\na,0\nb,-1\nc,1\n")  # -1: an id the user leaves out
    np.testing.assert_array_equal(read_folds_csv(path, IDS, n_splits=2), [0, -1, 1])
    with pytest.raises(DataError, match="missing folds CSV"):
        read_folds_csv(tmp_path / "absent.csv", IDS)


# ------------------------------------------------------------------ the original's folds, real data


def _original_mask_type(mask: np.ndarray) -> int:
    """The original's mask type (torch_training/functions.py, get_mask_type), written here from
    its description, one mask at a time: salt counted as > 0.5; the ring test compares the salt
    count with the salt inside a 10-px frame; "vertical" = every row equals the first."""
    salt = mask > 0.5
    cover = int(salt.sum())
    if cover < 8:
        return 0
    frame = np.ones(mask.shape, bool)
    frame[10:-10, 10:-10] = False
    if cover == int((salt & frame).sum()):
        return 1
    if all(np.array_equal(row, mask[0]) for row in mask):
        return 2
    fraction = cover / mask.size
    for kind, edge in zip((3, 4, 5, 6), (0.15, 0.25, 0.50, 0.75)):
        if fraction < edge:
            return kind
    return 7


@pytest.mark.realdata
@pytest.mark.timeout(300)
def test_make_folds_reproduces_the_originals_assignment_on_the_real_ids():
    """The original (torch_training/main_albunet_gated.py): ids in train.csv order; masks read
    from the PNGs (> 128 is salt); ids with 1..9 salt pixels removed from the list; the rest split
    by StratifiedKFold(5, shuffle=True, random_state=42) over (list, mask types). Re-run here from
    the files, independently of salt_jax's reader and mask-type code; every kept id must get the
    original's validation fold and every removed id fold -1."""
    from PIL import Image
    from sklearn.model_selection import StratifiedKFold

    from salt_jax.data import load_train

    root = os.environ.get("TGS_SALT_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "tgs_salt")
    if not Path(root, "train.csv").is_file():
        pytest.skip(f"real TGS data not found in {root} (set TGS_SALT_DIR)")
    with open(Path(root, "train.csv"), newline="") as f:
        file_list = [row["id"] for row in csv.DictReader(f)]
    masks = {i: np.asarray(Image.open(Path(root, "train", "masks", f"{i}.png")).convert("L")) > 128
             for i in file_list}
    removed = {i for i in file_list if 0 < masks[i].sum() < 10}
    kept = [i for i in file_list if i not in removed]
    classes = [_original_mask_type(masks[i].astype(np.float64)) for i in kept]
    expected = dict.fromkeys(removed, -1)
    for fold, (_, val) in enumerate(StratifiedKFold(5, shuffle=True, random_state=42).split(kept, classes)):
        expected.update({kept[j]: fold for j in val})

    train = load_train(root)
    folds = make_folds(train.ids, train.masks)
    assert list(train.ids) == file_list
    assert 30 <= len(removed) <= 60  # 43 of the full 4,000; the set here has 3,602 ids
    assert dict(zip(train.ids, folds.tolist())) == expected
