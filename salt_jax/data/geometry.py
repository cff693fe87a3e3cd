"""The model's input contract and the 101 <-> 128 geometry: the one place that states them.

The competition's images and masks are 101x101 uint8. The network sees 128x128: both are
reflect-padded (numpy mode 'reflect' = cv2.BORDER_REFLECT_101, the border of the original's
albumentations PadIfNeeded) 13 pixels before and 14 after on each spatial axis; images are then
scaled to [0, 1] float32 and the gray channel is repeated on 3 channels. Predictions on the
128x128 map are cropped back to [13:114] (docs/ORIGINAL.md, Data and Inference).

    padded = pad(images_u8)                   # (N, 101, 101) -> (N, 128, 128), any dtype
    x = to_channels(to_unit(padded)[..., None])  # -> float32 (N, 128, 128, 3) in [0, 1]
    probs_101 = crop(probs_128)               # (N, 128, 128, ...) -> (N, 101, 101, ...)

Training pads once on the host and keeps uint8 on the devices (salt_jax.data.fold_data), then
scales, augments and repeats the channels inside the jitted step; prediction pads, scales and
repeats inside its jitted forward. Both call these functions, so the two cannot drift apart.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

IMAGE_SIZE = 101  # side of the competition's images and masks
INPUT_SIZE = 128  # side of the maps the network sees
PAD_BEFORE = (INPUT_SIZE - IMAGE_SIZE) // 2  # 13, top and left
PAD_AFTER = INPUT_SIZE - IMAGE_SIZE - PAD_BEFORE  # 14, bottom and right
CROP = slice(PAD_BEFORE, PAD_BEFORE + IMAGE_SIZE)  # [13:114]: the image inside the padded map
CHANNELS = 3  # the encoder's input channels (ImageNet-shaped); the gray image is repeated


def pad(x):
    """Reflect-pad 101x101 images or masks to 128x128 (13 top/left, 14 bottom/right).

    x: (..., 101, 101) or (..., 101, 101, C), numpy or JAX, any dtype; returns the same kind
    and dtype with 128 in place of 101.
    """
    shape = tuple(x.shape)
    if shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE):
        spatial = len(shape) - 2
    elif len(shape) >= 3 and shape[-3:-1] == (IMAGE_SIZE, IMAGE_SIZE):
        spatial = len(shape) - 3
    else:
        raise ValueError(f"pad expects (..., {IMAGE_SIZE}, {IMAGE_SIZE}[, C]), got shape {shape}")
    widths = [(0, 0)] * len(shape)
    widths[spatial] = widths[spatial + 1] = (PAD_BEFORE, PAD_AFTER)
    pad_fn = np.pad if isinstance(x, np.ndarray) else jnp.pad
    return pad_fn(x, widths, mode="reflect")


def crop(x):
    """The 101x101 image inside padded maps: (N, 128, 128, ...) -> (N, 101, 101, ...)."""
    if tuple(x.shape[1:3]) != (INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"crop expects (N, {INPUT_SIZE}, {INPUT_SIZE}, ...) maps, got shape {x.shape}")
    return x[:, CROP, CROP]


def to_unit(images_u8):
    """uint8 images (numpy or JAX, any shape) -> float32 in [0, 1] (no mean/std normalisation)."""
    return images_u8.astype(np.float32) / 255.0


def to_channels(x):
    """Gray float images (..., H, W, 1) -> the network's input (..., H, W, 3), channel repeated."""
    if x.shape[-1] != 1:
        raise ValueError(f"to_channels expects one channel (..., H, W, 1), got shape {x.shape}")
    return jnp.repeat(x, CHANNELS, axis=-1)
