"""TFDS builder `tgs_salt`: the Kaggle TGS Salt data as array_record, readable without TensorFlow.

Usage (importing this module registers the builder):

    import tensorflow_datasets as tfds
    from salt_jax.data import tfds_tgs_salt  # noqa: F401
    train = tfds.data_source("tgs_salt", split="train", data_dir=DATA_DIR,
                             download_and_prepare_kwargs={"download_config":
                                 tfds.download.DownloadConfig(manual_dir=KAGGLE_DIR)})
    record = train[0]  # {'id': bytes, 'image': uint8 (101, 101, 1), 'mask': ..., ...}

One pipeline: the records are made by `salt_jax.data.load_train` / `load_test` on the manual
dir, so a TFDS-fed run sees exactly what a `--data_dir` run sees: the same validation (mask
levels, RLE agreement with train.csv, ids), the same 0/1 masks, the same optional depths (NaN
where depths.csv lacks an id) and the same order (train.csv, sample_submission.csv). Shuffling
is disabled so that record i is the i-th id of the CSV, and `make_folds` over the records'
ids and masks gives the folds of the Kaggle-layout path.

Storage: one uint8 channel per image and mask (0/1), as PNG bytes, because
tfds.features.Image cannot encode numpy arrays without TensorFlow. The test split has no
masks: its `mask` is all zeros and `has_mask` is False, so one feature set serves both splits
and an empty test mask is never mistaken for "no salt".
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from salt_jax.data.geometry import IMAGE_SIZE as SIZE
from salt_jax.data.kaggle import load_test, load_train

_DESCRIPTION = """TGS Salt Identification Challenge (Kaggle 2018): 101x101 seismic image crops
with binary salt masks (train) and the depth of each crop. Pixels are one uint8 channel; masks
are 0/1. The test split carries an all-zero mask and has_mask=False. Records are in the order of
train.csv and sample_submission.csv."""

_CITATION = """@misc{tgs-salt-identification-challenge,
  author = {TGS},
  title = {TGS Salt Identification Challenge},
  publisher = {Kaggle},
  year = {2018},
  url = {https://kaggle.com/competitions/tgs-salt-identification-challenge}
}"""


class TgsSalt(tfds.core.GeneratorBasedBuilder):
    """The `tgs_salt` dataset; data from a manual Kaggle download."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: train (with masks) and test (without).",
        "2.0.0": "Read through salt_jax.data.load_train/load_test: CSV order, RLE-checked masks, "
                 "depths optional (NaN).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Accept the competition rules on Kaggle, then download and unzip into the manual dir:

        kaggle competitions download -c tgs-salt-identification-challenge
        unzip tgs-salt-identification-challenge.zip -d MANUAL_DIR

    The manual dir is then the layout `salt_jax.data.load_train` reads: train.csv,
    sample_submission.csv, depths.csv (optional), and train.zip / test.zip or their unzipped
    train/images, train/masks, test/images folders. Pass it with
    tfds.download.DownloadConfig(manual_dir=MANUAL_DIR).
    """
    def __init__(self, *, file_format: str = "array_record", **kwargs):
        # array_record gives random access (tfds.data_source) and needs no TensorFlow.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        png = lambda: tfds.features.Image(shape=(SIZE, SIZE, 1), encoding_format="png")
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "image": png(),
                "mask": png(),
                "has_mask": tfds.features.Scalar(np.bool_),
                "depth": tfds.features.Scalar(np.float32),
            }),
            supervised_keys=("image", "mask"),
            homepage="https://www.kaggle.com/competitions/tgs-salt-identification-challenge",
            citation=_CITATION,
            # Record order is the CSVs' order, as in the Kaggle-layout reader (and so are the folds).
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(dl_manager.manual_dir)
        return {split: self._generate_examples(root, split) for split in ("train", "test")}

    def _generate_examples(self, root: Path, split: str):
        if split == "train":
            data = load_train(root)
            masks, has_mask, depths = data.masks, True, data.depths
        else:
            data = load_test(root)
            masks = np.zeros((len(data.ids), SIZE, SIZE), np.uint8)
            has_mask, depths = False, np.full(len(data.ids), np.nan, np.float32)
        for n, image_id in enumerate(data.ids):
            yield n, {"id": image_id, "image": encode_png(data.images[n]),
                      "mask": encode_png(masks[n]), "has_mask": has_mask,
                      "depth": np.float32(depths[n])}


def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H, W) -> PNG bytes (mode L), the input tfds.features.Image takes without TF."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
