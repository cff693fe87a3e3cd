"""TFDS builder `tgs_salt`: the Kaggle TGS Salt data as array_record, readable without TensorFlow.

Usage (importing this module registers the builder):

    import tensorflow_datasets as tfds
    from salt_jax.data import tfds_tgs_salt  # noqa: F401
    train = tfds.data_source("tgs_salt", split="train", data_dir=DATA_DIR,
                             download_and_prepare_kwargs={"download_config":
                                 tfds.download.DownloadConfig(manual_dir=KAGGLE_DIR)})
    record = train[0]  # {'id': bytes, 'image': uint8 (101, 101, 1), 'mask': ..., ...}

Decisions:
- Kaggle stores images as RGB PNGs with three equal channels and masks as 8-bit or 16-bit
  grayscale (0 / 255 or 0 / 65535). We store one uint8 channel: the image's first channel
  (after checking the channels agree) and the mask as 0/1, both re-encoded as PNG bytes because
  tfds.features.Image cannot encode numpy arrays without TensorFlow.
- The test split has no masks: its `mask` is all zeros and `has_mask` is False, so one feature
  set serves both splits and an empty test mask is never mistaken for "no salt".
- Records are keyed by id, so TFDS orders them deterministically.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

SIDE = 101

_DESCRIPTION = """TGS Salt Identification Challenge (Kaggle 2018): 101x101 seismic image crops
with binary salt masks (train) and the depth of each crop. Pixels are one uint8 channel; masks
are 0/1. The test split carries an all-zero mask and has_mask=False."""

_CITATION = """@misc{tgs-salt-identification-challenge,
  author = {TGS},
  title = {TGS Salt Identification Challenge},
  publisher = {Kaggle},
  year = {2018},
  url = {https://kaggle.com/competitions/tgs-salt-identification-challenge}
}"""


class TgsSalt(tfds.core.GeneratorBasedBuilder):
    """The `tgs_salt` dataset; data from a manual Kaggle download."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: train (with masks) and test (without)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Accept the competition rules on Kaggle, then download and unzip into the manual dir:

        kaggle competitions download -c tgs-salt-identification-challenge
        unzip tgs-salt-identification-challenge.zip -d MANUAL_DIR
        cd MANUAL_DIR && unzip -o train.zip -d train && unzip -o test.zip -d test

    The manual dir must then hold train/images/<id>.png, train/masks/<id>.png,
    test/images/<id>.png and depths.csv (id,z). Pass it with
    tfds.download.DownloadConfig(manual_dir=MANUAL_DIR).
    """

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        # array_record gives random access (tfds.data_source) and needs no TensorFlow.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        png = lambda: tfds.features.Image(shape=(SIDE, SIDE, 1), encoding_format="png")
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
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = Path(dl_manager.manual_dir)
        depths = read_depths(root / "depths.csv")
        return {
            "train": self._generate_examples(root / "train", depths, with_masks=True),
            "test": self._generate_examples(root / "test", depths, with_masks=False),
        }

    def _generate_examples(self, split_dir: Path, depths: dict[str, float], *,
                           with_masks: bool):
        images = sorted((split_dir / "images").glob("*.png"))
        if not images:
            raise FileNotFoundError(f"no PNG images in {split_dir / 'images'}; "
                                    f"see MANUAL_DOWNLOAD_INSTRUCTIONS")
        empty = encode_png(np.zeros((SIDE, SIDE), np.uint8))
        for path in images:
            image_id = path.stem
            if image_id not in depths:
                raise KeyError(f"id {image_id} ({path}) has no depth in depths.csv")
            mask = (encode_png(read_mask(split_dir / "masks" / path.name))
                    if with_masks else empty)
            yield image_id, {
                "id": image_id,
                "image": encode_png(read_image(path)),
                "mask": mask,
                "has_mask": with_masks,
                "depth": depths[image_id],
            }


def read_depths(path: Path) -> dict[str, float]:
    """depths.csv (id,z) -> {id: z}."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; see MANUAL_DOWNLOAD_INSTRUCTIONS")
    with open(path, newline="") as f:
        return {row["id"]: float(row["z"]) for row in csv.DictReader(f)}


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        array = np.asarray(im)
    if array.shape[:2] != (SIDE, SIDE):
        raise ValueError(f"{path}: expected {SIDE}x{SIDE} pixels, got {array.shape}")
    return array


def read_image(path: Path) -> np.ndarray:
    """A Kaggle image PNG (grayscale, or RGB with equal channels) -> uint8 (101, 101)."""
    array = _read_png(path)
    if array.ndim == 3:
        if np.any(array[..., :3] != array[..., :1]):
            raise ValueError(f"{path}: colour channels differ; expected a grayscale image")
        array = array[..., 0]
    if array.dtype != np.uint8:
        raise ValueError(f"{path}: expected 8-bit pixels, got {array.dtype}")
    return array


def read_mask(path: Path) -> np.ndarray:
    """A Kaggle mask PNG (0/255 or 0/65535, any nonzero = salt) -> uint8 (101, 101) 0/1."""
    array = _read_png(path)
    if array.ndim == 3:
        array = array[..., 0]
    return (array > 0).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H, W) -> PNG bytes (mode L), the input tfds.features.Image takes without TF."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
