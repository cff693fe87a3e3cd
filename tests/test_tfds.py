"""The TFDS `tgs_salt` builder: build from a small Kaggle-layout folder, read it back without
TensorFlow, and compare every record with the PNGs it came from (read independently with PIL)."""

import csv
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets",
                           reason="tensorflow_datasets is not installed (pip install '.[tfds]')")

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]


def _make_kaggle_folder(root: Path) -> dict:
    """A Kaggle-layout folder like the real one: RGB images with equal channels, masks as
    8-bit 0/255 (one empty) and 16-bit 0/65535, depths.csv; 4 train and 2 test ids."""
    rng = np.random.default_rng(0)
    for sub in ("train/images", "train/masks", "test/images"):
        (root / sub).mkdir(parents=True)
    truth, depths = {}, {}
    for n, split in enumerate(["train"] * 4 + ["test"] * 2):
        image_id = f"{split[:2]}{n:08x}"
        gray = rng.integers(0, 256, (101, 101), dtype=np.uint8)
        Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(
            root / split / "images" / f"{image_id}.png")
        mask = np.zeros((101, 101), np.uint8)
        if split == "train":
            mask[rng.integers(0, 60):, : rng.integers(1, 101)] = 1 if n else 0
            raw = mask.astype(np.uint16) * 65535 if n % 2 else mask * 255
            Image.fromarray(raw).save(root / "train" / "masks" / f"{image_id}.png")
        truth[image_id] = (split, gray, mask)
        depths[image_id] = float(100 + 37 * n)
    with open(root / "depths.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "z"])
        writer.writerows(depths.items())
    return {"truth": truth, "depths": depths}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from salt_jax.data import tfds_tgs_salt

    root = tmp_path_factory.mktemp("tgs")
    made = _make_kaggle_folder(root / "manual")
    builder = tfds_tgs_salt.TgsSalt(data_dir=str(root / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / "manual")))
    return builder, root, made


def test_built_and_read_without_tensorflow(prepared):
    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed here; this checks the TF-free path")
    prepared[0].as_data_source()["train"][0]
    assert "tensorflow" not in sys.modules


def test_builder_metadata(prepared):
    builder, root, _ = prepared
    assert builder.name == "tgs_salt"
    assert builder.info.file_format.value == "array_record"
    assert "kaggle competitions download -c tgs-salt-identification-challenge" in \
        builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert set(builder.info.splits) == {"train", "test"}
    assert list((root / "tfds" / "tgs_salt" / "1.0.0").glob("*.array_record*"))


def test_records_equal_the_pngs(prepared):
    builder, _, made = prepared
    sources = builder.as_data_source()
    seen = set()
    for split, want_has_mask in (("train", True), ("test", False)):
        source = sources[split]
        for record in (source[i] for i in range(len(source))):
            image_id = record["id"].decode()
            truth_split, gray, mask = made["truth"][image_id]
            assert truth_split == split
            assert record["image"].shape == (101, 101, 1) and record["image"].dtype == np.uint8
            np.testing.assert_array_equal(record["image"][..., 0], gray)
            np.testing.assert_array_equal(record["mask"][..., 0], mask)  # zeros for test
            assert bool(record["has_mask"]) is want_has_mask
            assert record["depth"] == pytest.approx(made["depths"][image_id])
            seen.add(image_id)
    assert seen == set(made["truth"])


def test_data_source_by_name(prepared):
    """The registered name works through tfds.data_source once the module is imported."""
    _, root, made = prepared
    test = tfds.data_source("tgs_salt", split="test", data_dir=str(root / "tfds"))
    assert sorted(r["id"].decode() for r in (test[i] for i in range(len(test)))) == \
        sorted(k for k, v in made["truth"].items() if v[0] == "test")


def test_missing_depth_names_the_id(tmp_path):
    from salt_jax.data import tfds_tgs_salt

    made = _make_kaggle_folder(tmp_path / "manual")
    lost = sorted(made["truth"])[0]
    rows = [r for r in (tmp_path / "manual" / "depths.csv").read_text().splitlines()
            if not r.startswith(lost)]
    (tmp_path / "manual" / "depths.csv").write_text("\n".join(rows) + "\n")
    builder = tfds_tgs_salt.TgsSalt(data_dir=str(tmp_path / "tfds"))
    with pytest.raises(Exception, match=lost):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))


def _real_dir() -> Path:
    return Path(os.environ.get("TGS_SALT_DIR", REPO.parent / "shared" / "tgs_salt"))


@pytest.mark.realdata
def test_real_pngs_decode_like_pil(tmp_path):
    """On a few real Kaggle files (RGB images, 8- and 16-bit masks) the builder's readers agree
    with PIL's own grayscale conversion and a >0 threshold."""
    from salt_jax.data import tfds_tgs_salt

    real = _real_dir()
    if not (real / "train" / "images").is_dir():
        pytest.skip(f"real TGS data not found in {real} (set TGS_SALT_DIR)")
    for path in sorted((real / "train" / "images").glob("*.png"))[:6]:
        with Image.open(path) as im:
            want_image = np.asarray(im.convert("L"))
        with Image.open(real / "train" / "masks" / path.name) as im:
            want_mask = (np.asarray(im) > 0).astype(np.uint8)
        np.testing.assert_array_equal(tfds_tgs_salt.read_image(path), want_image)
        np.testing.assert_array_equal(
            tfds_tgs_salt.read_mask(real / "train" / "masks" / path.name), want_mask)
