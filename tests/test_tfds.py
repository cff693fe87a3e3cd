"""The TFDS `tgs_salt` builder: build from a small Kaggle-layout folder, read it back without
TensorFlow, and compare every record with the files it came from (PNGs read independently with
PIL, ids in the order the test wrote its CSVs, RLEs encoded by hand in the test)."""

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets",
                           reason="tensorflow_datasets is not installed (pip install '.[tfds]')")

pytestmark = pytest.mark.timeout(300)


def _rle(mask: np.ndarray) -> str:
    """Kaggle's RLE, written out here: 1-based starts of runs in column-major order."""
    flat = np.concatenate([[0], mask.T.reshape(-1), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    return " ".join(f"{s} {e - s}" for s, e in zip(edges[::2], edges[1::2]))


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _make_kaggle_folder(root: Path) -> dict:
    """A Kaggle-layout folder like the real one: RGB images with equal channels, masks as
    8-bit 0/255 (one empty) and 16-bit 0/65535, train.csv and sample_submission.csv listing the
    ids in an order that is not sorted, and depths.csv missing one train id."""
    rng = np.random.default_rng(0)
    for sub in ("train/images", "train/masks", "test/images"):
        (root / sub).mkdir(parents=True)
    truth, order = {}, {"train": [], "test": []}
    for n, split in enumerate(["train"] * 4 + ["test"] * 2):
        image_id = f"{'zyxw'[n % 4]}{split[:2]}{n:06x}"
        gray = rng.integers(0, 256, (101, 101), dtype=np.uint8)
        Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(
            root / split / "images" / f"{image_id}.png")
        mask = np.zeros((101, 101), np.uint8)
        if split == "train":
            mask[rng.integers(0, 60):, : rng.integers(1, 101)] = 1 if n else 0
            raw = mask.astype(np.uint16) * 65535 if n % 2 else mask * 255
            Image.fromarray(raw).save(root / "train" / "masks" / f"{image_id}.png")
        truth[image_id] = (split, gray, mask, float(100 + 37 * n))
        order[split].append(image_id)
    _write_csv(root / "train.csv", ["id", "rle_mask"],
               [(i, _rle(truth[i][2])) for i in order["train"]])
    _write_csv(root / "sample_submission.csv", ["id", "rle_mask"], [(i, "1 1") for i in order["test"]])
    no_depth = order["train"][1]
    _write_csv(root / "depths.csv", ["id", "z"],
               [(i, t[3]) for i, t in truth.items() if i != no_depth])
    assert order["train"] != sorted(order["train"])
    return {"truth": truth, "order": order, "no_depth": no_depth}


def _build(root: Path, manual: Path):
    from salt_jax.data import tfds_tgs_salt

    builder = tfds_tgs_salt.TgsSalt(data_dir=str(root))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return builder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("tgs")
    made = _make_kaggle_folder(root / "manual")
    return _build(root / "tfds", root / "manual"), root, made


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    # The reader's array cache goes to a temporary folder, never the user's ~/.cache.
    mp = pytest.MonkeyPatch()
    mp.setenv("SALT_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield mp
    mp.undo()


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
    assert list((root / "tfds" / "tgs_salt" / str(builder.VERSION)).glob("*.array_record*"))


def test_records_equal_the_files_in_csv_order(prepared):
    builder, _, made = prepared
    sources = builder.as_data_source()
    for split, want_has_mask in (("train", True), ("test", False)):
        source = sources[split]
        records = [source[i] for i in range(len(source))]
        assert [r["id"].decode() for r in records] == made["order"][split]
        for record in records:
            image_id = record["id"].decode()
            _, gray, mask, depth = made["truth"][image_id]
            assert record["image"].shape == (101, 101, 1) and record["image"].dtype == np.uint8
            np.testing.assert_array_equal(record["image"][..., 0], gray)
            np.testing.assert_array_equal(record["mask"][..., 0], mask)  # zeros for test
            assert bool(record["has_mask"]) is want_has_mask
            if split == "test" or image_id == made["no_depth"]:
                assert np.isnan(record["depth"])  # unknown depth, as in the Kaggle-layout reader
            else:
                assert record["depth"] == pytest.approx(depth)


def test_data_source_by_name(prepared):
    """The registered name works through tfds.data_source once the module is imported."""
    _, root, made = prepared
    test = tfds.data_source("tgs_salt", split="test", data_dir=str(root / "tfds"))
    assert [test[i]["id"].decode() for i in range(len(test))] == made["order"]["test"]


def test_mask_disagreeing_with_its_rle_is_refused(tmp_path, monkeypatch):
    """The builder validates like `--data_dir` does: a mask PNG that differs from its RLE in
    train.csv stops the build with an error naming the id."""
    monkeypatch.setenv("SALT_JAX_CACHE", str(tmp_path / "cache"))
    made = _make_kaggle_folder(tmp_path / "manual")
    bad = made["order"]["train"][2]
    mask = made["truth"][bad][2].copy()
    mask[0, 0] ^= 1
    Image.fromarray(mask * 255).save(tmp_path / "manual" / "train" / "masks" / f"{bad}.png")
    with pytest.raises(Exception, match=bad):
        _build(tmp_path / "tfds", tmp_path / "manual")
