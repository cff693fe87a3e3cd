"""TGS Salt data: Kaggle-layout reader, RLE, folds, the input contract, on-device augmentation,
one fold's training arrays, synthetic data.

    from salt_jax import data
    train = data.load_train("/path/to/tgs_salt")      # TrainSet: ids, images, masks, depths
    folds = data.make_folds(train.ids, train.masks)   # the original's 5 folds (-1: unused)
    padded = data.geometry.pad(train.images)          # 101 -> 128, the network's geometry
    demo_dir = data.ensure_default_data()              # synthetic set in the same layout
    x, y = data.augment_batch(key, images, masks)      # jittable, on the device

The TFDS builder lives in `salt_jax.data.tfds_tgs_salt` (imported on demand: it needs
tensorflow-datasets).
"""

from salt_jax.data import geometry
from salt_jax.data.augment import augment_batch, batch_key
from salt_jax.data.folds import (FOLD_RULES, MIN_TRAIN_SALT_PX, UNUSED, make_folds, mask_type,
                                 mask_types, read_folds_csv, split_indices, write_folds_csv)
from salt_jax.data.kaggle import TestSet, TrainSet, default_cache_dir, load_test, load_train
from salt_jax.data.rle import rle_decode, rle_encode
from salt_jax.data.synthetic import default_data_dir, ensure_default_data
from salt_jax.errors import DataError

__all__ = [
    "DataError", "rle_encode", "rle_decode",
    "TrainSet", "TestSet", "load_train", "load_test", "default_cache_dir",
    "MIN_TRAIN_SALT_PX", "FOLD_RULES", "UNUSED", "mask_type", "mask_types", "make_folds", "split_indices",
    "write_folds_csv", "read_folds_csv",
    "default_data_dir", "ensure_default_data",
    "geometry", "augment_batch", "batch_key",
]
