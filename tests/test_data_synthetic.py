"""Synthetic dataset: determinism, Kaggle layout readable by the real loader, mask mix."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from salt_jax.data import load_test, load_train, mask_types, rle_decode
from salt_jax.data import synthetic

pytestmark = pytest.mark.timeout(180)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("synthetic")
    return tuple(synthetic.generate(base / name, n_train=40, n_test=8, seed=seed)
                 for name, seed in (("a", 0), ("b", 0), ("c", 1)))


@pytest.fixture(scope="module")
def many() -> tuple[np.ndarray, np.ndarray]:
    return synthetic.generate_arrays(600, seed=0)


def test_same_seed_same_bytes_other_seed_differs(small_sets):
    a, b, c = (tree_digest(root) for root in small_sets)
    assert a == b
    assert len(a) == 40 * 2 + 8 + 3
    images_a = {v for k, v in a.items() if k.startswith("train/images/")}
    images_c = {v for k, v in c.items() if k.startswith("train/images/")}
    assert len(images_a & images_c) <= 1  # only an all-black image may occur in both
    assert a["train.csv"] != c["train.csv"]


def test_layout_loads_with_the_kaggle_reader(small_sets, tmp_path):
    root = small_sets[0]
    train = load_train(root, cache_dir=tmp_path)  # validates every mask against its RLE
    test = load_test(root, cache_dir=tmp_path)
    assert len(train) == 40 and len(test) == 8
    assert len(set(train.ids) | set(test.ids)) == 48
    assert not np.isnan(train.depths).any()
    # RLE consistency, checked here directly as well.
    rows = [line.split(",") for line in (root / "train.csv").read_text().splitlines()[1:]]
    for (image_id, rle), mask in zip(rows, train.masks):
        np.testing.assert_array_equal(rle_decode(rle), mask, err_msg=image_id)
    # The arrays are those of generate_arrays (the files add nothing and lose nothing).
    images, masks = synthetic.generate_arrays(40, seed=0)
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.masks, masks)


def test_mask_mix_resembles_the_real_set(many):
    images, masks = many
    salt = masks.sum(axis=(1, 2))
    assert 0.33 < (salt == 0).mean() < 0.45  # real: 39% empty
    assert (salt == 101 * 101).any()  # full masks
    types = mask_types(masks)
    assert set(range(1, 8)) <= set(types.tolist())
    vertical = (masks == masks[:, :1]).all(axis=(1, 2)) & (salt > 0) & (salt < 101 * 101)
    assert vertical.sum() >= 5
    coverage = salt[salt > 0] / 101**2
    assert (coverage < 0.1).mean() > 0.15 and (coverage > 0.9).mean() > 0.05


def test_images_look_like_the_real_statistics(many):
    images, masks = many
    flat = images.reshape(len(images), -1).astype(np.float32)
    black = (flat == 0).all(axis=1)
    assert 0.005 < black.mean() < 0.05 and not masks[black].any()  # black images are empty
    means, stds = flat[~black].mean(axis=1), flat[~black].std(axis=1)
    assert 100 < np.median(means) < 145 and 15 < np.median(stds) < 40  # real: 123, 28


def test_salt_is_visible_in_the_image(many):
    """Learnable: pixel statistics differ inside vs outside the salt (lower local contrast)."""
    images, masks = many
    both = [i for i in range(len(masks)) if 1500 < masks[i].sum() < 8000]
    grad = np.abs(np.diff(images[both].astype(np.float32), axis=1))[:, :, :]
    inner = masks[both][:, 1:] & masks[both][:, :-1]
    outer = (1 - masks[both][:, 1:]) & (1 - masks[both][:, :-1])
    assert grad[inner == 1].mean() < 0.8 * grad[outer == 1].mean()


def test_generate_refuses_existing_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError):
        synthetic.generate(tmp_path / "exists", n_train=2, n_test=1)

    def fail(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_write_dataset", fail)
    with pytest.raises(RuntimeError):
        synthetic.generate(tmp_path / "new", n_train=2, n_test=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_default_data_dir_and_ensure(tmp_path, monkeypatch):
    monkeypatch.delenv("SALT_JAX_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert synthetic.default_data_dir() == tmp_path / "xdg" / "salt_jax" / "synthetic-v1-seed0-480x100"
    target = tmp_path / "demo"
    monkeypatch.setenv("SALT_JAX_DATA", str(target))
    assert synthetic.default_data_dir() == target
    monkeypatch.setattr(synthetic, "DEFAULT_N_TRAIN", 12)
    monkeypatch.setattr(synthetic, "DEFAULT_N_TEST", 3)
    assert synthetic.ensure_default_data() == target
    first = tree_digest(target)
    assert len(first) == 12 * 2 + 3 + 3
    assert synthetic.ensure_default_data() == target  # second call reuses it
    assert tree_digest(target) == first
