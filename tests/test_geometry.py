"""salt_jax.data.geometry, the input contract, against hand-worked facts.

The facts (docs/ORIGINAL.md, Data): the original padded 101 -> 128 with cv2.BORDER_REFLECT_101
(the edge pixel is not repeated), 13 pixels before and 14 after, and cropped back with [13:114];
images were scaled to [0, 1] and read as 3 identical channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax.data import geometry

# Where padded pixel k (0..127) of a 101-pixel axis comes from, written out by hand:
# 13 mirrored pixels (13 down to 1: the edge pixel 0 is not repeated), the 101 pixels, then 14
# mirrored pixels (99 down to 86: the edge pixel 100 is not repeated).
SOURCE = [*range(13, 0, -1), *range(101), *range(99, 85, -1)]


def test_the_hand_written_source_is_128_long():
    assert len(SOURCE) == 128 and SOURCE[13] == 0 and SOURCE[113] == 100


@pytest.mark.parametrize("kind", ["numpy", "jax"])
def test_pad_reflects_13_before_and_14_after(kind):
    rows, cols = np.mgrid[0:101, 0:101]
    image = (1000 * rows + cols).astype(np.int32)  # each pixel names its own position
    x = image if kind == "numpy" else jnp.asarray(image)
    padded = geometry.pad(x)
    assert isinstance(padded, np.ndarray if kind == "numpy" else jax.Array) and padded.dtype == np.int32
    want = 1000 * np.asarray(SOURCE)[:, None] + np.asarray(SOURCE)[None, :]
    np.testing.assert_array_equal(np.asarray(padded), want)


@pytest.mark.parametrize("shape", [(3, 101, 101), (2, 101, 101, 1)])
def test_pad_keeps_batch_and_channel_axes_and_dtype(shape):
    x = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
    padded = geometry.pad(x)
    np.testing.assert_array_equal(padded, x[:, SOURCE][:, :, SOURCE])  # rows, then columns
    assert padded.dtype == np.uint8 and padded.shape[1:3] == (128, 128)


def test_crop_undoes_pad():
    x = np.random.default_rng(1).integers(0, 256, (2, 101, 101, 1)).astype(np.uint8)
    np.testing.assert_array_equal(geometry.crop(geometry.pad(x)), x)
    probs = np.zeros((1, 128, 128), np.float32)
    probs[0, 13:114, 13:114] = 1.0  # the image's own pixels, by hand
    assert geometry.crop(probs).shape == (1, 101, 101) and geometry.crop(probs).min() == 1.0


@pytest.mark.parametrize("fn, shape", [(geometry.pad, (100, 101)), (geometry.crop, (2, 101, 101))])
def test_other_shapes_are_refused(fn, shape):
    with pytest.raises(ValueError, match=r"got shape \(" + ", ".join(map(str, shape))):
        fn(np.zeros(shape))


def test_to_unit_scales_uint8_to_0_1():
    got = geometry.to_unit(np.array([0, 51, 255], np.uint8))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([0.0, 0.2, 1.0], np.float32))  # 51 / 255 = 0.2


def test_to_channels_repeats_the_gray_channel():
    x = jnp.arange(8, dtype=jnp.float32).reshape(1, 2, 4, 1)
    got = np.asarray(geometry.to_channels(x))
    assert got.shape == (1, 2, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(got[..., c], np.arange(8).reshape(1, 2, 4))
    with pytest.raises(ValueError, match="one channel"):
        geometry.to_channels(jnp.zeros((1, 2, 2, 3)))
