"""A built-in synthetic TGS-like dataset, written in Kaggle's layout.

Images imitate 101x101 seismic crops: a reflectivity series (sparse spikes convolved with a
Ricker wavelet) sampled along a dipping, folded and warped depth coordinate, with lateral
amplitude variation, blur and noise. Salt bodies are smooth random regions (a tilted front, a
star-shaped dome or blob, or a mix, with a noisy boundary) filled with a chaotic low-amplitude
texture and outlined by a strong reflector; sediments are dragged along their flanks. The
mask-family mix follows the real set: about 39% empty (including all-black images, as in the
real data), some full, vertical (column-only) and border-only masks, and a coverage spread over
(0, 1].

Everything is numpy and vectorised per chunk of images: blurs are products with Gaussian
matrices, so 1000 images take a few seconds. Output is deterministic in the seed (the same seed
gives the same bytes). The PNG encodings copy the real files: images RGB with three identical
channels; masks 16-bit 0/65535 when salt is present and 8-bit zeros when empty.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from salt_jax.cache import cache_root
from salt_jax.data.geometry import IMAGE_SIZE as SIZE
from salt_jax.data.rle import rle_encode

__all__ = ["generate", "generate_arrays", "default_data_dir", "ensure_default_data",
           "DEFAULT_N_TRAIN", "DEFAULT_N_TEST"]

VERSION = "synthetic-v1"
# Small on purpose: the default set exists for the CPU demo and tests, where a 2-core machine
# trains the tiny UNet at ~6 images/s (docs/BENCHMARKS.md).
DEFAULT_N_TRAIN, DEFAULT_N_TEST = 480, 100
_CHUNK = 128  # images generated together; part of the output's definition (fixes the streams)
_SERIES = 400  # samples of the 1-D reflectivity series
_SERIES_OFFSET = 150.0  # depth coordinate 0 maps here, leaving room for dips and warps

# Mask families and their probabilities (empty ~ blank + empty + a few tiny targets of 0).
BLANK, EMPTY, FULL, VERTICAL, SHAPED = range(5)
_FAMILY_P = np.array([0.02, 0.37, 0.015, 0.03, 0.565])


# ---------------------------------------------------------------------------------------------
# Public API


def generate_arrays(n: int, *, seed: int = 0, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n synthetic images and masks, deterministic in (seed, stream).

    Returns:
        images uint8 (n, 101, 101), masks uint8 (n, 101, 101) of 0/1.
    """
    images, masks = [], []
    for chunk, start in enumerate(range(0, n, _CHUNK)):
        rng = np.random.default_rng([seed, stream, chunk])
        image, mask = _make_chunk(rng, min(_CHUNK, n - start))
        images.append(image)
        masks.append(mask)
    if not images:
        return np.zeros((0, SIZE, SIZE), np.uint8), np.zeros((0, SIZE, SIZE), np.uint8)
    return np.concatenate(images), np.concatenate(masks)


def generate(out_dir: str | os.PathLike, *, n_train: int = DEFAULT_N_TRAIN,
             n_test: int = DEFAULT_N_TEST, seed: int = 0) -> Path:
    """Write a Kaggle-layout synthetic dataset to `out_dir` (which must not exist).

    Writes train/images, train/masks, train.csv (RLE), depths.csv, test/images and
    sample_submission.csv into a temporary sibling folder, then renames it into place, so
    `out_dir` either holds a complete dataset or does not exist.
    Returns:
        `out_dir` as a Path.
    """
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        _write_dataset(tmp, n_train, n_test, seed)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def default_data_dir() -> Path:
    """`$SALT_JAX_DATA` if set, else `~/.cache/salt_jax/synthetic-v1-seed0-480x100` (sizes in the name)."""
    env = os.environ.get("SALT_JAX_DATA")
    if env:
        return Path(env)
    return cache_root() / f"{VERSION}-seed0-{DEFAULT_N_TRAIN}x{DEFAULT_N_TEST}"


def ensure_default_data() -> Path:
    """The default data folder, generated (480 train, 100 test, seed 0) on first use.

    A folder that already holds train.csv is returned as is, so `$SALT_JAX_DATA` may also
    point at the real Kaggle data.
    """
    path = default_data_dir()
    if (path / "train.csv").is_file():
        return path
    try:
        generate(path, n_train=DEFAULT_N_TRAIN, n_test=DEFAULT_N_TEST, seed=0)
    except OSError:
        # Another process may have finished first (its rename won); use its copy.
        if not (path / "train.csv").is_file():
            raise
    return path


# ---------------------------------------------------------------------------------------------
# Writing


def _write_dataset(root: Path, n_train: int, n_test: int, seed: int) -> None:
    ids = _make_ids(np.random.default_rng([seed, 2]), n_train + n_test)
    train_ids, test_ids = ids[:n_train], ids[n_train:]
    train_images, train_masks = generate_arrays(n_train, seed=seed, stream=0)
    test_images, _ = generate_arrays(n_test, seed=seed, stream=1)
    depths = np.random.default_rng([seed, 3]).integers(50, 960, size=len(ids))

    for folder in ("train/images", "train/masks", "test/images"):
        (root / folder).mkdir(parents=True)
    for image_id, image, mask in zip(train_ids, train_images, train_masks):
        _save_image(root / "train/images" / f"{image_id}.png", image)
        _save_mask(root / "train/masks" / f"{image_id}.png", mask)
    for image_id, image in zip(test_ids, test_images):
        _save_image(root / "test/images" / f"{image_id}.png", image)

    _write_csv(root / "train.csv", ["id", "rle_mask"],
               [(i, rle_encode(m)) for i, m in zip(train_ids, train_masks)])
    _write_csv(root / "depths.csv", ["id", "z"], zip(ids, depths.tolist()))
    _write_csv(root / "sample_submission.csv", ["id", "rle_mask"], [(i, "1 1") for i in test_ids])


def _make_ids(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct 10-hex-digit ids, like Kaggle's."""
    values = rng.choice(16 ** 10, size=n, replace=False) if n else np.zeros(0, np.int64)
    return [f"{v:010x}" for v in values.tolist()]


def _save_image(path: Path, image: np.ndarray) -> None:
    # Fast zlib level: writing dominates generation otherwise, and the files stay small.
    Image.fromarray(np.repeat(image[..., None], 3, axis=-1), mode="RGB").save(path, compress_level=1)


def _save_mask(path: Path, mask: np.ndarray) -> None:
    if mask.any():
        Image.fromarray(mask.astype(np.uint16) * 65535).save(path)  # mode I;16
    else:
        Image.fromarray(np.zeros_like(mask, np.uint8), mode="L").save(path)


def _write_csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# ---------------------------------------------------------------------------------------------
# Image synthesis (all functions work on a chunk of n images at once)


def _make_chunk(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images and 0/1 masks, each (n, 101, 101)."""
    family = rng.choice(len(_FAMILY_P), size=n, p=_FAMILY_P)
    masks = _make_masks(rng, family)
    images = _make_images(rng, masks.astype(np.float32))
    images[family == BLANK] = 0  # the real set has all-black images, all with empty masks
    return images, masks


def _make_masks(rng: np.random.Generator, family: np.ndarray) -> np.ndarray:
    """uint8 (n, 101, 101) masks for the given families."""
    n = len(family)
    u = np.linspace(-1.0, 1.0, SIZE, dtype=np.float32)
    x, y = u[None, None, :], u[None, :, None]
    # Tilted front: half of them nearly axis-aligned (salt entering from one side, which also
    # yields the border-only type when the coverage is small).
    angle = np.where(rng.random(n) < 0.5, rng.integers(0, 4, n) * np.pi / 2 + rng.normal(0, 0.15, n),
                     rng.uniform(0, 2 * np.pi, n))
    front = np.cos(angle)[:, None, None] * x + np.sin(angle)[:, None, None] * y
    # Star-shaped dome/blob around a centre that may lie outside the crop.
    cx, cy = rng.uniform(-1.5, 1.5, (2, n)).astype(np.float32)
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    theta = np.arctan2(dy, dx)
    wobble = 1.0 + sum(_uniform32(rng, 0, 0.25 / k, n) * np.cos(k * theta + _uniform32(rng, 0, 2 * np.pi, n))
                       for k in (2, 3, 5))
    blob = -np.hypot(dx, dy) / wobble
    mix = rng.uniform(0, 1, (n, 1, 1)) ** 2  # mostly front-like, as in the real crops
    field = (1 - mix) * front + mix * blob
    field += _uniform32(rng, 0.03, 0.15, n) * _smooth_noise(rng, n, 12.0)
    field += _uniform32(rng, 0.0, 0.02, n) * _smooth_noise(rng, n, 3.0)
    masks = _top_k(field, _salt_pixels(rng, n))

    columns = _top_k(_column_field(rng, n, x), _salt_pixels(rng, n))
    masks = np.where((family == VERTICAL)[:, None, None], columns, masks)
    masks[family == FULL] = 1
    masks[(family == EMPTY) | (family == BLANK)] = 0
    return masks


def _uniform32(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    """(n, 1, 1) float32 uniform draws, to broadcast against float32 images without upcasting."""
    return rng.uniform(low, high, (n, 1, 1)).astype(np.float32)


def _column_field(rng: np.random.Generator, n: int, x: np.ndarray) -> np.ndarray:
    """(n, 101, 101) fields that depend on the column only: salt on one side, or a band."""
    side = np.where(rng.random((n, 1, 1)) < 0.5, x, -x)
    band = -np.abs(x - rng.uniform(-0.8, 0.8, (n, 1, 1)))
    field = np.where(rng.random((n, 1, 1)) < 0.6, side, band)
    return np.broadcast_to(field, (n, SIZE, SIZE))


def _salt_pixels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Target salt pixel counts: a few tiny masks, many small ones, the rest spread to full."""
    kind = rng.random(n)
    coverage = np.where(kind < 0.03, rng.integers(1, 15, n) / SIZE**2,
                        np.where(kind < 0.33, rng.uniform(0.005, 0.15, n), rng.uniform(0.15, 1.0, n)))
    return np.maximum(1, np.round(coverage * SIZE**2)).astype(np.int64)


def _top_k(field: np.ndarray, k: np.ndarray) -> np.ndarray:
    """uint8 masks of the k highest values of each field (ties at the threshold included,
    which keeps column-only fields column-only)."""
    flat = field.reshape(len(field), -1)
    threshold = np.take_along_axis(-np.sort(-flat, axis=1), (k - 1)[:, None], axis=1)
    return (flat >= threshold).reshape(field.shape).astype(np.uint8)


def _make_images(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """uint8 (n, 101, 101) seismic-like images around float32 0/1 masks."""
    n = len(masks)
    sediments = _sediments(rng, masks)
    interior = rng.uniform(0.1, 0.35, (n, 1, 1)) * _smooth_noise(rng, n, 2.0)
    soft = _blur(masks, 1.0)
    # A difference of blurs of the mask is a bright/dark doublet along the salt boundary.
    edge = _blur(masks, 1.2) - _blur(masks, 3.0)
    edge *= rng.uniform(2.0, 9.0, (n, 1, 1)) * rng.choice([-1.0, 1.0], (n, 1, 1))
    z = sediments * (1 - soft) + interior * soft + edge
    z += rng.uniform(0.02, 0.15, (n, 1, 1)) * rng.standard_normal(z.shape, np.float32)
    # Acquisition/processing smoothness, from a few sharpness levels (each level is one blur).
    z = _blur(z, rng.choice(np.linspace(0.3, 1.5, 5), n))
    z /= z.std(axis=(1, 2), keepdims=True) + 1e-6
    level = rng.normal(122, 22, (n, 1, 1))
    contrast = rng.uniform(12, 40, (n, 1, 1))
    return np.clip(np.round(level + contrast * z), 0, 255).astype(np.uint8)


def _sediments(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """Layered reflectors, unit std per image, (n, 101, 101) float32."""
    n = len(masks)
    pix = np.arange(SIZE, dtype=np.float32)
    col, row = pix[None, None, :], pix[None, :, None]
    steep = rng.random(n) < 0.3
    dip = np.where(steep, rng.uniform(-1.0, 1.0, n), rng.normal(0, 0.2, n))[:, None, None]
    depth = row * np.cos(dip) + (col - 50) * np.sin(dip)
    # Folding: a long lateral sinusoid and gentle curvature; warping: smooth noise.
    depth += rng.uniform(0, 8, (n, 1, 1)) * np.sin(2 * np.pi * col / rng.uniform(60, 250, (n, 1, 1))
                                                   + rng.uniform(0, 2 * np.pi, (n, 1, 1)))
    depth += rng.normal(0, 8, (n, 1, 1)) * ((col - 50) / 50) ** 2
    warp = _smooth_noise(rng, n, 16.0)
    depth += rng.uniform(0, 6, (n, 1, 1)) * warp
    # Drag: layers bend along the salt flanks.
    depth += rng.uniform(-15, 15, (n, 1, 1)) * _blur(masks, 8.0)
    layers = _sample_series(_reflectivity(rng, n), depth)
    # Lateral amplitude variation (a transposed warp field: smooth, and cheaper than a new one).
    layers *= np.exp(0.35 * warp.transpose(0, 2, 1))
    # Some crops look more like blotchy noise than clean layers.
    blotch = rng.uniform(0, 1, (n, 1, 1)) ** 3
    out = (1 - blotch) * layers / (layers.std(axis=(1, 2), keepdims=True) + 1e-6) \
        + blotch * _smooth_noise(rng, n, 2.5)
    return out / (out.std(axis=(1, 2), keepdims=True) + 1e-6)


def _reflectivity(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, _SERIES) traces: sparse heavy-tailed spikes filtered by a Ricker wavelet."""
    spikes = rng.laplace(size=(n, _SERIES)) * (rng.random((n, _SERIES)) < rng.uniform(0.1, 0.5, (n, 1)))
    freq = np.fft.rfftfreq(_SERIES)[None, :]
    peak = 1.0 / rng.uniform(2.5, 10.0, (n, 1))  # cycles per pixel at the wavelet's peak
    ricker = (freq / peak) ** 2 * np.exp(1 - (freq / peak) ** 2)
    trace = np.fft.irfft(np.fft.rfft(spikes, axis=1) * ricker, n=_SERIES, axis=1)
    return (trace / (trace.std(axis=1, keepdims=True) + 1e-9)).astype(np.float32)


def _sample_series(series: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Linear interpolation of each image's trace at its depth coordinate."""
    n = len(series)
    pos = np.clip(depth.reshape(n, -1) + _SERIES_OFFSET, 0, _SERIES - 1.001)
    lower = np.floor(pos).astype(np.int64)
    frac = (pos - lower).astype(np.float32)
    left = np.take_along_axis(series, lower, axis=1)
    right = np.take_along_axis(series, lower + 1, axis=1)
    return (left * (1 - frac) + right * frac).reshape(depth.shape)


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    """(n, 101, 101) Gaussian-blurred white noise with unit std per image."""
    noise = _blur(rng.standard_normal((n, SIZE, SIZE), np.float32), sigma)
    return noise / (noise.std(axis=(1, 2), keepdims=True) + 1e-9)


def _gauss_matrix(sigma: float) -> np.ndarray:
    """Row-normalised (101, 101) Gaussian blur matrix.

    Rows are renormalised near the edges (the kernel is truncated, not padded), so blurring a
    constant leaves it constant and the crop border introduces no artificial edge.
    """
    pix = np.arange(SIZE, dtype=np.float32)
    kernel = np.exp(-0.5 * ((pix[:, None] - pix[None, :]) / np.float32(sigma)) ** 2)
    return kernel / kernel.sum(axis=1, keepdims=True)


def _blur(images: np.ndarray, sigma: float | np.ndarray) -> np.ndarray:
    """Separable Gaussian blur K X K^T of float32 (n, 101, 101) images.

    `sigma` is one value or one per image; images sharing a sigma are blurred together as two
    flat matrix products (numpy's batched matmul is far slower than one large GEMM).
    """
    n = len(images)
    sigmas = np.broadcast_to(np.asarray(sigma, np.float32), (n,))
    out = np.empty((n, SIZE, SIZE), np.float32)
    for value in np.unique(sigmas):
        chosen = sigmas == value
        kernel_t = _gauss_matrix(float(value)).T
        rows = (images[chosen].astype(np.float32).reshape(-1, SIZE) @ kernel_t).reshape(-1, SIZE, SIZE)
        cols = np.ascontiguousarray(rows.transpose(0, 2, 1)).reshape(-1, SIZE) @ kernel_t
        out[chosen] = cols.reshape(-1, SIZE, SIZE).transpose(0, 2, 1)
    return out
