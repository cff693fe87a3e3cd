"""On-device training augmentation, in JAX, batched with vmap and keyed by PRNG.

The original solution augmented with albumentations (2018) after padding 101 -> 128
(salt_jax.data.geometry; torch_dataset/dataset_prep.py; docs/ORIGINAL.md, Augmentation):

    Compose(p=0.8)[ HorizontalFlip(p=.5),
                    OneOf(p=1)[ShiftScaleRotate(.0625, .1, 45), RandomSizedCrop((50, 101), 128, 128),
                               ElasticTransform(alpha=120, sigma=6, alpha_affine=3.6)],
                    OneOf(p=1)[GridDistortion(5, .3), RandomBrightness(.2), RandomGamma((80, 120)),
                               RandomBrightness(.2), Blur(5)] ]

albumentations' (0.1.x) `OneOf` draws one child with probability proportional to the children's
`p` (all 0.25 there, so uniform over the list) and applies it unconditionally. The second list
names RandomBrightness twice, so per image: chain 0.8, flip 0.4, each geometric op 0.8/3,
brightness 0.8*2/5, and each of grid distortion, gamma and blur 0.8/5.

Design: every geometric step (flip, the chosen geometric op, grid distortion) is a map from
output pixel coordinates to source coordinates. We compose the maps into ONE coordinate field
per image and sample once: bilinear for the image, nearest for the mask. Masks therefore stay
aligned with their images by construction, and the image is interpolated once instead of up to
three times. Borders are reflect-101 (cv2.BORDER_REFLECT_101, numpy 'reflect'): reflecting a
continuous coordinate is exact for linear interpolation of the reflected image, so it can be
applied between stages. All ops are computed for every image and selected with jnp.where, so
the function is branch-free and compiles once.

Coordinates are (x, y) = (column, row) with pixel centres at integers, as in OpenCV.
Photometric ops (brightness, gamma, blur) touch the image only; images are clipped to [0, 1].

Deviations from cv2 we accept, with reasons:
- the mask uses nearest-neighbour on the SAME coordinate field as the image (cv2's INTER_NEAREST
  in resize floors instead of rounding; ours keeps the mask on the image by construction);
- composing the maps interpolates the elastic displacement bilinearly when grid distortion is
  also chosen (the original resampled the image twice instead);
- the elastic field is scipy.ndimage.gaussian_filter semantics (mode 'reflect', truncate 4),
  as albumentations 0.1.x used; later versions approximate it with a 17x17 cv2 kernel.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from salt_jax.data.geometry import INPUT_SIZE

SIZE = INPUT_SIZE  # the chain runs on the padded maps (salt_jax.data.geometry)

# Op codes returned by `sample_ops`; 0 means "not applied" (chain skipped).
GEO_OPS = ("none", "shift_scale_rotate", "random_sized_crop", "elastic")
PHOTO_OPS = ("none", "grid_distortion", "brightness", "gamma", "blur")
_SSR, _CROP, _ELASTIC = 1, 2, 3
_GRID, _BRIGHT, _GAMMA, _BLUR = 1, 2, 3, 4
# The original's second OneOf list, in its order: RandomBrightness appears twice.
_PHOTO_LIST = (_GRID, _BRIGHT, _GAMMA, _BRIGHT, _BLUR)

# Parameters of the original recipe (docs/ORIGINAL.md, Augmentation).
CHAIN_P = 0.8
FLIP_P = 0.5
SHIFT_LIMIT, SCALE_LIMIT, ROTATE_LIMIT = 0.0625, 0.1, 45.0
CROP_MIN, CROP_MAX = 50, 101
ELASTIC_ALPHA, ELASTIC_SIGMA, ELASTIC_ALPHA_AFFINE = 120.0, 6.0, 3.6
GRID_STEPS, GRID_LIMIT = 5, 0.3
BRIGHTNESS_LIMIT = 0.2
GAMMA_MIN, GAMMA_MAX = 80, 120  # percent, integers as in albumentations' RandomGamma
BLUR_KERNELS = (3, 5)

_HIGHEST = jax.lax.Precision.HIGHEST  # the small filter matmuls must not run in TF32/bf16


# --------------------------------------------------------------------------- keys and op choice


def batch_key(seed: int, epoch, step) -> jax.Array:
    """The augmentation key of one batch: a run is reproducible from (seed, epoch, step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), step)


def _randint(u: jax.Array, lo: int, hi: int) -> jax.Array:
    """Uniform integer in [lo, hi] (inclusive, like random.randint) from u ~ U[0, 1)."""
    return jnp.minimum(lo + jnp.floor(u * (hi - lo + 1)), hi).astype(jnp.int32)


def _ops_one(key: jax.Array, p: float) -> dict:
    """Op choices of one image: chain (0/1), flip (0/1), geo and photo codes (0 = none).

    One uniform draw per image feeds all choices: each jax.random call adds a threefry
    hash that XLA compiles separately, and those dominated compile time on CPU.
    """
    u = jax.random.uniform(key, (4,))
    chain = u[0] < p
    flip = chain & (u[1] < FLIP_P)
    geo = _randint(u[2], 1, len(GEO_OPS) - 1)
    photo = jnp.asarray(_PHOTO_LIST, jnp.int32)[_randint(u[3], 0, len(_PHOTO_LIST) - 1)]
    zero = jnp.zeros((), jnp.int32)
    return {
        "chain": chain.astype(jnp.int32),
        "flip": flip.astype(jnp.int32),
        "geo": jnp.where(chain, geo, zero),
        "photo": jnp.where(chain, photo, zero),
    }


def _split_image_keys(key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Per-image (ops key, params key): image i's key is fold_in(key, i), then split in two.

    Folding in the position (rather than splitting the key n ways) makes image i's augmentation
    independent of the batch size, so a batch padded for sharding augments its real images
    exactly as the unpadded batch would.
    """
    both = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(key, i)))(jnp.arange(n))
    return both[:, 0], both[:, 1]


@functools.partial(jax.jit, static_argnames=("n", "p"))
def sample_ops(key: jax.Array, n: int, *, p: float = CHAIN_P) -> dict:
    """The ops `augment_batch(key, ...)` applies to a batch of n images: dict of (n,) int32
    arrays 'chain', 'flip', 'geo' (index into GEO_OPS), 'photo' (index into PHOTO_OPS)."""
    ops_keys, _ = _split_image_keys(key, n)
    return jax.vmap(_ops_one, in_axes=(0, None))(ops_keys, p)


# --------------------------------------------------------------------------- random parameters


def _params_one(key: jax.Array, size: int) -> dict:
    """All random parameters of every op for one image (drawn whether used or not).

    Two draws only (scalars, elastic noise), sliced into parameters: see `_ops_one`.
    """
    k_scalars, k_noise = jax.random.split(key)
    n_grid = 2 * (GRID_STEPS + 1)
    u = jax.random.uniform(k_scalars, (16 + n_grid,))
    span = lambda v, lo, hi: lo + v * (hi - lo)
    crop = _randint(u[4], CROP_MIN, CROP_MAX)
    return {
        "angle": span(u[0], -ROTATE_LIMIT, ROTATE_LIMIT),
        "scale": span(u[1], 1 - SCALE_LIMIT, 1 + SCALE_LIMIT),
        "shift": span(u[2:4], -SHIFT_LIMIT, SHIFT_LIMIT),
        "crop": crop,
        # albumentations: start = int((size - crop) * U[0, 1)), for (x, y)
        "crop_start": jnp.floor((size - crop) * u[5:7]).astype(jnp.int32),
        "jitter": span(u[7:13], -ELASTIC_ALPHA_AFFINE, ELASTIC_ALPHA_AFFINE).reshape(3, 2),
        "brightness": 1.0 + span(u[13], -BRIGHTNESS_LIMIT, BRIGHTNESS_LIMIT),
        "gamma": _randint(u[14], GAMMA_MIN, GAMMA_MAX) / 100.0,
        "blur_k": jnp.asarray(BLUR_KERNELS)[_randint(u[15], 0, len(BLUR_KERNELS) - 1)],
        "grid_steps": 1.0 + span(u[16:], -GRID_LIMIT, GRID_LIMIT).reshape(2, GRID_STEPS + 1),
        # drawn flat: a multi-dimensional threefry draw compiled ~4x slower on CPU (measured)
        "noise": jax.random.uniform(k_noise, (2 * size * size,), jnp.float32, -1.0, 1.0)
        .reshape(2, size, size),
    }


# --------------------------------------------------------------------------- coordinate maps


def reflect101(v: jax.Array, n: int) -> jax.Array:
    """Fold continuous coordinates into [0, n-1] the way cv2.BORDER_REFLECT_101 folds pixels."""
    period = 2 * (n - 1)
    v = jnp.mod(jnp.abs(v), period)
    return jnp.where(v > n - 1, period - v, v)


def _invert_affine(m: jax.Array) -> jax.Array:
    """Inverse of a 2x3 affine map (forward src -> dst becomes the sampling map dst -> src)."""
    a = m[:, :2]
    det = a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]  # closed form: linalg under vmap compiles slowly
    a_inv = jnp.array([[a[1, 1], -a[0, 1]], [-a[1, 0], a[0, 0]]]) / det
    return jnp.concatenate([a_inv, -(a_inv @ m[:, 2:])], axis=1)


def apply_affine(points: jax.Array, m: jax.Array) -> jax.Array:
    """points (..., 2) as (x, y); m (2, 3); returns m @ [x, y, 1]."""
    return points @ m[:, :2].T + m[:, 2]


def shift_scale_rotate_matrix(angle_deg, scale, dx, dy, size: int = SIZE) -> jax.Array:
    """Sampling map (dst -> src, 2x3) of albumentations' shift_scale_rotate on a size^2 image:
    cv2.getRotationMatrix2D((size/2, size/2), angle, scale), translated by (dx, dy) * size, as
    the forward map of cv2.warpAffine. Positive angles turn the content counter-clockwise."""
    theta = jnp.deg2rad(angle_deg)
    a, b = scale * jnp.cos(theta), scale * jnp.sin(theta)
    c = size / 2.0
    forward = jnp.array([
        [a, b, (1 - a) * c - b * c + dx * size],
        [-b, a, b * c + (1 - a) * c + dy * size],
    ])
    return _invert_affine(forward)


def crop_resize_points(points: jax.Array, x0, y0, crop, size: int = SIZE) -> jax.Array:
    """Sampling map of a crop (side `crop` at column x0, row y0) resized to size^2 with
    cv2/torch half-pixel bilinear resize (source coordinates clamped inside the crop)."""
    src = (points + 0.5) * (crop / size) - 0.5
    return jnp.clip(src, 0.0, crop - 1.0) + jnp.stack([x0, y0]).astype(points.dtype)


def elastic_affine_matrix(jitter: jax.Array, size: int = SIZE) -> jax.Array:
    """Sampling map (2x3) of ElasticTransform's random affine: the three points of
    albumentations (centre +- size//3) moved by `jitter` (3, 2), as cv2.getAffineTransform."""
    c, s = size // 2, size // 3
    src = np.array([[c + s, c + s], [c + s, c - s], [c - s, c - s]], np.float64)
    # forward^T solves [src | 1] @ forward^T = dst; the system matrix is a constant
    solve = np.linalg.inv(np.concatenate([src, np.ones((3, 1))], axis=1)).astype(np.float32)
    forward = (solve @ (src.astype(np.float32) + jitter)).T
    return _invert_affine(forward)


def _reflect_pad_matrix(n: int, taps: np.ndarray, mode: str) -> np.ndarray:
    """The (n, n) matrix of a 1-D correlation with `taps` (odd length) under numpy pad `mode`;
    filtering an image along both axes is then two small matmuls, exact at the borders."""
    r = len(taps) // 2
    index = np.pad(np.arange(n), r, mode=mode)
    mat = np.zeros((n, n), np.float64)
    for i in range(n):
        np.add.at(mat[i], index[i:i + 2 * r + 1], taps)
    return mat.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d (mode 'reflect' = numpy 'symmetric', truncate 4)."""
    r = int(4.0 * sigma + 0.5)
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    return _reflect_pad_matrix(n, w / w.sum(), "symmetric")


@functools.lru_cache(maxsize=None)
def _box_matrix(n: int, k: int) -> np.ndarray:
    """cv2.blur 1-D factor: mean of k pixels, BORDER_REFLECT_101 (numpy 'reflect')."""
    return _reflect_pad_matrix(n, np.full(k, 1.0 / k), "reflect")


def _filter2d(mat: np.ndarray, x: jax.Array) -> jax.Array:
    """Separable filter of x (..., H, W) with the same (H, H) = (W, W) matrix on both axes."""
    return jnp.einsum("ij,...jk,lk->...il", mat, x, mat, precision=_HIGHEST)


def gaussian_smooth(field: jax.Array, sigma: float) -> jax.Array:
    """field (..., n, n) smoothed as scipy.ndimage.gaussian_filter(mode='reflect') does."""
    return _filter2d(_gaussian_matrix(field.shape[-1], float(sigma)), field)


def box_blur(image: jax.Array, k) -> jax.Array:
    """image (H, W, C) box-blurred with a k x k kernel, reflect-101 borders (cv2.blur);
    k (one of BLUR_KERNELS) may be traced: the filter matrix is selected, not the result."""
    n = image.shape[0]
    mats = jnp.stack([_box_matrix(n, size) for size in BLUR_KERNELS])
    mat = mats[jnp.argmax(jnp.asarray(BLUR_KERNELS) == k)]
    moved = jnp.moveaxis(image, -1, 0)
    return jnp.moveaxis(_filter2d(mat, moved), 0, -1)


def grid_distortion_axis(steps: jax.Array, size: int = SIZE, num_steps: int = GRID_STEPS):
    """One axis of albumentations' grid_distortion: (size,) source coordinates.

    Cells of `size // num_steps` pixels; cell i spans, with np.linspace(prev, cur, cell_len),
    from the previous end to prev + step_len * steps[i]; the last (partial) cell ends at `size`.
    """
    step = size // num_steps
    starts = np.arange(0, size, step)  # may hold num_steps + 1 cells, the last one partial
    lengths = np.minimum(starts + step, size) - starts
    partial = starts + step > size
    ends = jnp.cumsum(step * steps[: len(starts)])
    ends = jnp.where(partial, float(size), ends)
    begins = jnp.concatenate([jnp.zeros(1), ends[:-1]])
    cell = np.minimum(np.arange(size) // step, len(starts) - 1)
    t = (np.arange(size) - starts[cell]) / np.maximum(lengths[cell] - 1, 1)
    return begins[cell] + t.astype(np.float32) * (ends[cell] - begins[cell])


def _tent(coords: jax.Array, size: int) -> jax.Array:
    """(len(coords), size) linear-interpolation weights: row i samples at coords[i]."""
    return jnp.maximum(0.0, 1.0 - jnp.abs(coords[:, None] - jnp.arange(size, dtype=jnp.float32)))


def _geometry(ops: dict, prm: dict, size: int) -> jax.Array:
    """The one sampling field (size, size, 2) of an image: output pixel -> source (x, y).

    The chain runs flip -> geometric op -> grid distortion on the image, so the sampling map
    applies them in reverse: grid first, then the geometric op, then the flip.
    """
    # grid distortion is separable: one (size,) source coordinate per column and per row
    axes = jnp.arange(size, dtype=jnp.float32)
    gx, gy = (jnp.where(ops["photo"] == _GRID,
                        reflect101(grid_distortion_axis(prm["grid_steps"][i], size), size), axes)
              for i in (0, 1))
    q = jnp.stack(jnp.meshgrid(gx, gy), axis=-1)

    ssr = apply_affine(q, shift_scale_rotate_matrix(prm["angle"], prm["scale"],
                                                    prm["shift"][0], prm["shift"][1], size))
    crop = crop_resize_points(q, prm["crop_start"][0], prm["crop_start"][1], prm["crop"], size)
    disp = ELASTIC_ALPHA * gaussian_smooth(prm["noise"], ELASTIC_SIGMA)  # (2, size, size)
    # the displacement at q: separable bilinear sampling as two matmuls (tent weights; the
    # identity when there is no grid distortion), cheaper than gathers on GPU and CPU
    disp_q = jnp.einsum("ij,cjk,lk->ilc", _tent(gy, size), disp, _tent(gx, size),
                        precision=_HIGHEST)
    moved = reflect101(q + disp_q, size)
    elastic = apply_affine(moved, elastic_affine_matrix(prm["jitter"], size))
    geo = ops["geo"]
    q = jnp.select([geo == _SSR, geo == _CROP, geo == _ELASTIC], [ssr, crop, elastic], q)
    q = reflect101(q, size)

    flipped = q.at[..., 0].set(size - 1 - q[..., 0])
    return jnp.where(ops["flip"] == 1, flipped, q)


# --------------------------------------------------------------------------- sampling


def _bilinear(img: jax.Array, coords: jax.Array) -> jax.Array:
    """img (H, W, C) sampled at coords (..., 2) inside [0, W-1] x [0, H-1]; exact at integers."""
    h, w, c = img.shape
    x, y = coords[..., 0], coords[..., 1]
    x0 = jnp.clip(jnp.floor(x), 0, w - 2)
    y0 = jnp.clip(jnp.floor(y), 0, h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    flat = img.reshape(h * w, c)
    base = y0.astype(jnp.int32) * w + x0.astype(jnp.int32)
    at = lambda offset: jnp.take(flat, base + offset, axis=0)
    top = at(0) * (1 - fx) + at(1) * fx
    bottom = at(w) * (1 - fx) + at(w + 1) * fx
    return top * (1 - fy) + bottom * fy


def _nearest(img: jax.Array, coords: jax.Array) -> jax.Array:
    """img (H, W, C) at the nearest pixel of coords (..., 2) inside [0, W-1] x [0, H-1]."""
    h, w, c = img.shape
    x = jnp.clip(jnp.floor(coords[..., 0] + 0.5), 0, w - 1).astype(jnp.int32)
    y = jnp.clip(jnp.floor(coords[..., 1] + 0.5), 0, h - 1).astype(jnp.int32)
    return jnp.take(img.reshape(h * w, c), y * w + x, axis=0)


def _warp_one(image: jax.Array, mask: jax.Array, coords: jax.Array):
    coords = reflect101(coords, image.shape[0])
    return _bilinear(image, coords), _nearest(mask, coords)


@jax.jit
def warp_batch(images: jax.Array, masks: jax.Array, coords: jax.Array):
    """Resample images (N, H, W, C) bilinearly and masks (N, H, W, Cm) by nearest neighbour at
    coords (N, H, W, 2) = source (x, y) per output pixel, reflect-101 outside (H == W)."""
    return jax.vmap(_warp_one)(images, masks, coords)


# --------------------------------------------------------------------------- the chain


def _photometric(image: jax.Array, photo: jax.Array, prm: dict) -> jax.Array:
    """Brightness, gamma or blur on the image (H, W, C) as chosen by `photo`."""
    bright = image * prm["brightness"]
    gamma = jnp.power(jnp.maximum(image, 0.0), prm["gamma"])
    blur = box_blur(image, prm["blur_k"])
    return jnp.select([photo == _BRIGHT, photo == _GAMMA, photo == _BLUR],
                      [bright, gamma, blur], image)


def _apply_one(key: jax.Array, image: jax.Array, mask: jax.Array, ops: dict,
               photometric: bool):
    size = image.shape[0]
    prm = _params_one(key, size)
    image, mask = _warp_one(image, mask, _geometry(ops, prm, size))
    if photometric:
        image = _photometric(image, ops["photo"], prm)
    return jnp.clip(image, 0.0, 1.0), mask


def _check_shapes(images: jax.Array, masks: jax.Array) -> None:
    if images.ndim != 4 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be (N, S, S, C), got {images.shape}")
    if masks.shape[:3] != images.shape[:3] or masks.ndim != 4:
        raise ValueError(f"masks {masks.shape} do not match images {images.shape}")


@functools.partial(jax.jit, static_argnames=("photometric",))
def apply_ops(key: jax.Array, images: jax.Array, masks: jax.Array, ops: dict, *,
              photometric: bool = True):
    """Apply given op choices (dict as returned by `sample_ops`) with random parameters from
    `key`; lets tests force single ops. Shapes as in `augment_batch`."""
    _check_shapes(images, masks)
    _, param_keys = _split_image_keys(key, images.shape[0])
    return jax.vmap(_apply_one, in_axes=(0, 0, 0, 0, None))(
        param_keys, images, masks, ops, photometric)


@functools.partial(jax.jit, static_argnames=("p", "photometric"))
def augment_batch(key: jax.Array, images: jax.Array, masks: jax.Array, *,
                  p: float = CHAIN_P, photometric: bool = True):
    """Augment a padded batch on the device.

    key: a PRNG key (e.g. `batch_key(seed, epoch, step)`), split into one key per image.
    images: float32 (N, 128, 128, C) in [0, 1]; masks: (N, 128, 128, Cm) {0, 1}, any dtype.
    p: probability of the whole chain; photometric=False skips brightness/gamma/blur (the
    geometric ops, grid distortion included, still apply). Returns (images, masks) with the
    input shapes and dtypes; the ops applied are `sample_ops(key, N, p=p)`.
    """
    _check_shapes(images, masks)
    ops = sample_ops(key, images.shape[0], p=p)
    return apply_ops(key, images, masks, ops, photometric=photometric)
