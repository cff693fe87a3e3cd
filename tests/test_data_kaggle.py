"""Kaggle-layout reader: small hand-built folders (valid and broken), zips, cache, real data."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from salt_jax.data import DataError, load_test, load_train
from salt_jax.data import kaggle

pytestmark = pytest.mark.timeout(180)

REAL_DIR = Path(os.environ.get("TGS_SALT_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "tgs_salt"))

# Hand-made training set, deliberately not in sorted id order. Masks are rectangles
# (rows r0..r1, columns c0..c1, inclusive) or None for empty.
TRAIN = [("cc", (0, 100, 0, 100)), ("aa", None), ("bb", (10, 19, 5, 6)), ("dd", (50, 50, 100, 100))]
TEST_IDS = ["t2", "t1"]


def rect_mask(rect) -> np.ndarray:
    mask = np.zeros((101, 101), np.uint8)
    if rect is not None:
        r0, r1, c0, c1 = rect
        mask[r0:r1 + 1, c0:c1 + 1] = 1
    return mask


def rect_rle(rect) -> str:
    """Kaggle RLE of a rectangle written out by hand: one run per column, 1-based, column-major."""
    if rect is None:
        return ""
    r0, r1, c0, c1 = rect
    return " ".join(f"{c * 101 + r0 + 1} {r1 - r0 + 1}" for c in range(c0, c1 + 1))


def image_for(index: int) -> np.ndarray:
    """A distinct gradient image per index."""
    return ((np.arange(101)[:, None] + np.arange(101)[None, :] * 2 + 37 * index) % 256).astype(np.uint8)


def save_rgb(path: Path, gray: np.ndarray) -> None:
    Image.fromarray(np.repeat(gray[..., None], 3, -1), "RGB").save(path)


def save_mask(path: Path, mask: np.ndarray, sixteen_bit: bool) -> None:
    if sixteen_bit:
        Image.fromarray(mask.astype(np.uint16) * 65535).save(path)
    else:
        Image.fromarray(mask * 255, "L").save(path)


def make_layout(root: Path) -> Path:
    """A valid Kaggle-layout folder with the encodings of the real files (RGB images; masks
    16-bit 0/65535 and 8-bit), a depths.csv that lacks one id, and a stray non-PNG file."""
    for folder in ("train/images", "train/masks", "test/images"):
        (root / folder).mkdir(parents=True)
    for index, (image_id, rect) in enumerate(TRAIN):
        save_rgb(root / "train/images" / f"{image_id}.png", image_for(index))
        save_mask(root / "train/masks" / f"{image_id}.png", rect_mask(rect), sixteen_bit=index % 2 == 0)
    for index, image_id in enumerate(TEST_IDS):
        Image.fromarray(image_for(10 + index), "L").save(root / "test/images" / f"{image_id}.png")
    (root / "train/images/.DS_Store").write_bytes(b"junk")
    (root / "train.csv").write_text("id,rle_mask\n" + "".join(f"{i},{rect_rle(r)}\n" for i, r in TRAIN))
    (root / "depths.csv").write_text("id,z\ncc,100\naa,250.5\nbb,7\nt1,3\nt2,4\n")
    (root / "sample_submission.csv").write_text("id,rle_mask\n" + "".join(f"{i},1 1\n" for i in TEST_IDS))
    return root


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    return make_layout(tmp_path / "tgs")


def test_load_train_values_order_and_encodings(layout, tmp_path):
    train = load_train(layout, cache_dir=tmp_path / "cache")
    assert train.ids == ("cc", "aa", "bb", "dd")  # train.csv order, not sorted
    assert train.images.shape == train.masks.shape == (4, 101, 101)
    assert train.images.dtype == train.masks.dtype == np.uint8
    for index, (_, rect) in enumerate(TRAIN):
        np.testing.assert_array_equal(train.images[index], image_for(index))
        np.testing.assert_array_equal(train.masks[index], rect_mask(rect))
    np.testing.assert_array_equal(train.depths[:3], [100, 250.5, 7])
    assert np.isnan(train.depths[3]) and train.depths.dtype == np.float32
    assert not train.images.flags.writeable
    assert len(train) == 4


def test_load_test_order(layout, tmp_path):
    test = load_test(layout, cache_dir=tmp_path / "cache")
    assert test.ids == ("t2", "t1")
    np.testing.assert_array_equal(test.images[0], image_for(10))
    np.testing.assert_array_equal(test.images[1], image_for(11))


def test_missing_depths_csv_gives_nan(layout, tmp_path):
    (layout / "depths.csv").unlink()
    assert np.isnan(load_train(layout, cache_dir=tmp_path / "cache").depths).all()


def test_masks_in_8bit_0_1_and_rgba_images_accepted(layout, tmp_path):
    mask = rect_mask(TRAIN[2][1])
    Image.fromarray(mask, "L").save(layout / "train/masks/bb.png")  # 0/1 levels
    rgba = np.dstack([image_for(2)] * 3 + [np.full((101, 101), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(layout / "train/images/bb.png")
    train = load_train(layout, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(train.masks[2], mask)
    np.testing.assert_array_equal(train.images[2], image_for(2))


def test_cache_is_used_and_keyed_by_content(layout, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_train(layout, cache_dir=cache)
    assert len(list(cache.glob("train-*.npz"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded although the cache should have been used")

    with monkeypatch.context() as patch:
        patch.setattr(kaggle, "_decode_image", no_decoding)
        again = load_train(layout, cache_dir=cache)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.masks, first.masks)

    # Same file names and sizes, new content (and an old mtime): the cache must not be reused.
    path = layout / "train/images/aa.png"
    stat = path.stat()
    save_rgb(path, 255 - image_for(1))
    os.utime(path, (stat.st_atime, stat.st_mtime))
    changed = load_train(layout, cache_dir=cache)
    np.testing.assert_array_equal(changed.images[1], 255 - image_for(1))
    assert len(list(cache.glob("train-*.npz"))) == 2
    assert not list(cache.glob("*.tmp"))


def test_default_cache_dir_is_outside_data_dir(layout, tmp_path, monkeypatch):
    monkeypatch.setenv("SALT_JAX_CACHE", str(tmp_path / "cache"))
    load_train(layout)
    assert len(list((tmp_path / "cache").glob("train-*.npz"))) == 1
    assert not list(layout.rglob("*.npz")), "the data folder must never be written to"


def test_zip_layout_reads_the_same(layout, tmp_path):
    folder = load_train(layout, use_cache=False)
    for split, kinds in (("train", ("images", "masks")), ("test", ("images",))):
        with zipfile.ZipFile(layout / f"{split}.zip", "w") as zf:
            for kind in kinds:
                for png in sorted((layout / split / kind).glob("*.png")):
                    zf.write(png, f"{kind}/{png.name}")
        shutil.rmtree(layout / split)
    zipped = load_train(layout, use_cache=False)
    assert zipped.ids == folder.ids
    np.testing.assert_array_equal(zipped.images, folder.images)
    np.testing.assert_array_equal(zipped.masks, folder.masks)
    assert load_test(layout, use_cache=False).ids == ("t2", "t1")


# --- broken folders: each must raise a DataError naming the culprit, and write no cache ----


def truncate(layout: Path) -> None:
    path = layout / "train/images/bb.png"
    path.write_bytes(path.read_bytes()[:200])


def garbage(layout: Path) -> None:
    (layout / "train/masks/bb.png").write_bytes(b"this is not a png at all")


def wrong_size(layout: Path) -> None:
    Image.fromarray(np.zeros((101, 100), np.uint8), "L").save(layout / "train/images/dd.png")


def three_levels(layout: Path) -> None:
    mask = rect_mask(TRAIN[2][1]) * 255
    mask[0, 0] = 128
    Image.fromarray(mask, "L").save(layout / "train/masks/bb.png")


def odd_level(layout: Path) -> None:
    Image.fromarray(rect_mask(TRAIN[2][1]) * 128, "L").save(layout / "train/masks/bb.png")


def colour_mask(layout: Path) -> None:
    rgb = np.dstack([rect_mask(TRAIN[2][1]) * 255, np.zeros((101, 101), np.uint8),
                     np.zeros((101, 101), np.uint8)])
    Image.fromarray(rgb, "RGB").save(layout / "train/masks/bb.png")


def image_without_file(layout: Path) -> None:
    (layout / "train/images/dd.png").unlink()


def mask_without_file(layout: Path) -> None:
    (layout / "train/masks/aa.png").unlink()


def file_without_id(layout: Path) -> None:
    save_rgb(layout / "train/images/zz.png", image_for(9))


def bad_rle(layout: Path) -> None:
    text = (layout / "train.csv").read_text().replace(f"dd,{rect_rle(TRAIN[3][1])}", "dd,5 x")
    (layout / "train.csv").write_text(text)


def rle_disagrees(layout: Path) -> None:
    text = (layout / "train.csv").read_text().replace(f"dd,{rect_rle(TRAIN[3][1])}", "dd,1 3")
    (layout / "train.csv").write_text(text)


def duplicate_id(layout: Path) -> None:
    with open(layout / "train.csv", "a") as f:
        f.write("aa,\n")


def missing_csv(layout: Path) -> None:
    (layout / "train.csv").unlink()


def missing_folder(layout: Path) -> None:
    shutil.rmtree(layout / "train/masks")


def bad_header(layout: Path) -> None:
    text = (layout / "train.csv").read_text().replace("id,rle_mask", "id,encoded")
    (layout / "train.csv").write_text(text)


def short_row(layout: Path) -> None:
    with open(layout / "train.csv", "a") as f:
        f.write("ee\n")


def bad_depth(layout: Path) -> None:
    (layout / "depths.csv").write_text("id,z\ncc,deep\n")


BROKEN = {
    truncate: r"bb\.png: unreadable or truncated PNG",
    garbage: r"masks/bb\.png: unreadable or truncated PNG",
    wrong_size: r"dd\.png: size 100x101",
    three_levels: r"bb\.png: mask has more than two levels",
    odd_level: r"bb\.png: mask has salt level 128",
    colour_mask: r"bb\.png: colour mask",
    image_without_file: r"train\.csv lists 1 id\(s\) with no PNG in .*train/images: dd",
    mask_without_file: r"with no PNG in .*train/masks: aa",
    file_without_id: r"holds 1 PNG\(s\) whose id is not in .*zz\.png",
    bad_rle: r"train\.csv, id dd: RLE token 'x'",
    rle_disagrees: r"dd\.png disagrees with its RLE .*\(id dd\): 4 pixel",
    duplicate_id: r"id 'aa' appears more than once",
    missing_csv: r"missing CSV .*train\.csv",
    missing_folder: r"missing folder .*train/masks",
    bad_header: r"lacks column\(s\) \['rle_mask'\]",
    short_row: r"train\.csv, line 6: wrong number of fields",
    bad_depth: r"depths\.csv, line 2: depth 'deep'",
}


@pytest.mark.parametrize("damage", list(BROKEN), ids=lambda f: f.__name__)
def test_broken_train_folder_raises_and_writes_nothing(layout, tmp_path, damage):
    damage(layout)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=BROKEN[damage]):
        load_train(layout, cache_dir=cache)
    assert not cache.exists() or not any(cache.iterdir())


def test_broken_test_folder(layout, tmp_path):
    (layout / "sample_submission.csv").write_text("id,rle_mask\nt2,1 1\nt1,1 1\nt3,1 1\n")
    with pytest.raises(DataError, match=r"sample_submission\.csv lists 1 id\(s\) with no PNG .*: t3"):
        load_test(layout, cache_dir=tmp_path / "cache")
    (layout / "sample_submission.csv").unlink()
    with pytest.raises(DataError, match="missing CSV .*sample_submission"):
        load_test(layout)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_train(tmp_path / "nowhere")


def test_corrupt_zip(layout):
    shutil.rmtree(layout / "test")
    (layout / "test.zip").write_bytes(b"PK not really")
    with pytest.raises(DataError, match=r"test\.zip: unreadable zip"):
        load_test(layout, use_cache=False)


# --- the real data ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory) -> Path:
    if not (REAL_DIR / "train.csv").is_file():
        pytest.skip(f"real TGS data not found in {REAL_DIR} (set TGS_SALT_DIR)")
    return tmp_path_factory.mktemp("real_cache")


@pytest.mark.realdata
def test_real_train_and_test(real_cache):
    start = time.perf_counter()
    train = load_train(REAL_DIR, cache_dir=real_cache)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    cached = load_train(REAL_DIR, cache_dir=real_cache)
    warm = time.perf_counter() - start
    print(f"real train: {cold:.2f} s decoding, {warm:.2f} s from cache")

    csv_ids = [line.split(",")[0] for line in (REAL_DIR / "train.csv").read_text().splitlines()[1:]]
    assert train.ids == tuple(csv_ids) and len(train) == 3602
    assert set(np.unique(train.masks)) == {0, 1}
    assert 0.35 < (train.masks.sum(axis=(1, 2)) == 0).mean() < 0.43
    assert not np.isnan(train.depths).any()
    # Spot-check one image against PIL's own reading of the file's first channel.
    first = np.asarray(Image.open(REAL_DIR / "train/images" / f"{csv_ids[5]}.png"))[..., 0]
    np.testing.assert_array_equal(train.images[5], first)
    np.testing.assert_array_equal(cached.images, train.images)
    np.testing.assert_array_equal(cached.masks, train.masks)

    test = load_test(REAL_DIR, cache_dir=real_cache)
    sub_ids = [line.split(",")[0] for line in (REAL_DIR / "sample_submission.csv").read_text().splitlines()[1:]]
    assert test.ids == tuple(sub_ids) and test.images.shape == (1000, 101, 101)
