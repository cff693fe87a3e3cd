"""Tests of salt_jax.data.augment against hand-worked cases and independent references
(numpy padding, scipy filters and map_coordinates, torch bilinear resize)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from salt_jax.data import augment as A

pytestmark = pytest.mark.timeout(300)

N = 8  # one batch shape everywhere, so each jitted function compiles once


def _smooth_batch(n: int = N, size: int = A.SIZE, seed: int = 0) -> np.ndarray:
    """Smooth float32 images (n, size, size, 1) in [0, 1] crossing 0.5 along curved fronts."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        fx, fy, phase = rng.uniform(1.0, 2.5), rng.uniform(1.0, 2.5), rng.uniform(0, 2 * np.pi)
        out.append(0.5 + 0.45 * np.sin(2 * np.pi * fx * x + phase) * np.cos(2 * np.pi * fy * y))
    return np.stack(out)[..., None].astype(np.float32)


@pytest.fixture(scope="module")
def batch():
    images = _smooth_batch()
    return images, (images > 0.5).astype(np.float32)


def _pixel_grid(size: int = A.SIZE) -> np.ndarray:
    """(size, size, 2) pixel coordinates (x, y), the identity sampling field."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.stack([xs, ys], axis=-1)


def _ops(chain, flip, geo, photo) -> dict:
    return {k: jnp.asarray(v, jnp.int32) for k, v in
            dict(chain=chain, flip=flip, geo=geo, photo=photo).items()}


# --------------------------------------------------------------------------- building blocks


def test_warp_batch_matches_scipy_mirror(batch):
    """Bilinear sampling with reflect-101 borders == scipy map_coordinates(order=1, 'mirror');
    nearest sampling of the mask == order 0, away from exact half-pixel ties."""
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 1, (N, 128, 128, 1)).astype(np.float32)
    masks = (rng.uniform(0, 1, (N, 128, 128, 1)) > 0.5).astype(np.float32)
    coords = rng.uniform(-140, 270, (N, 128, 128, 2)).astype(np.float32)  # far outside too
    got_img, got_mask = A.warp_batch(images, masks, coords)
    for i in range(N):
        yx = [coords[i, ..., 1], coords[i, ..., 0]]
        want = ndi.map_coordinates(images[i, ..., 0], yx, order=1, mode="mirror")
        np.testing.assert_allclose(np.asarray(got_img[i, ..., 0]), want, atol=2e-5)
        want_mask = ndi.map_coordinates(masks[i, ..., 0], yx, order=0, mode="mirror")
        tie = np.any(np.abs(np.mod(coords[i], 1.0) - 0.5) < 1e-3, axis=-1)
        np.testing.assert_array_equal(np.asarray(got_mask[i, ..., 0])[~tie], want_mask[~tie])


def test_shift_scale_rotate_hand_worked():
    """90 degrees about cv2's centre (64, 64), shift (+8, -16) px: integer sampling points.
    Forward map x' = y + 8, y' = 128 - x - 16, so out[y, x] = src[x - 8, 112 - y] (reflected)."""
    src = np.random.default_rng(3).uniform(0, 1, (1, 128, 128, 1)).astype(np.float32)
    m = A.shift_scale_rotate_matrix(90.0, 1.0, 8 / 128, -16 / 128)
    coords = A.apply_affine(_pixel_grid(), m)[None]
    got, _ = A.warp_batch(src, src, coords)
    y, x = np.mgrid[0:128, 0:128]
    r = lambda i: np.abs(np.where(i > 127, 254 - i, i))  # reflect-101 for this range
    want = src[0, r(x - 8), r(112 - y), 0]
    np.testing.assert_allclose(np.asarray(got[0, ..., 0]), want, atol=1e-4)


@pytest.mark.parametrize("crop, x0, y0", [(77, 20, 10), (50, 0, 78), (101, 27, 0)])
def test_crop_resize_matches_torch_bilinear(crop, x0, y0):
    torch = pytest.importorskip("torch")
    src = np.random.default_rng(4).uniform(0, 1, (1, 128, 128, 1)).astype(np.float32)
    coords = A.crop_resize_points(_pixel_grid(), x0, y0, crop)[None]
    got, _ = A.warp_batch(src, src, coords)
    patch = torch.from_numpy(src[0, y0:y0 + crop, x0:x0 + crop, 0])[None, None]
    want = torch.nn.functional.interpolate(patch, size=(128, 128), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(np.asarray(got[0, ..., 0]), want, atol=1e-5)


def test_grid_distortion_axis_hand_worked():
    """Cells of 25 px on 128: each cell is linspace(prev, prev + 25 * step, 25), the last
    partial cell (3 px) runs to 128; steps[5] only matters through that cell's start."""
    ones = A.grid_distortion_axis(jnp.ones(6))
    want = np.concatenate([np.linspace(25 * i, 25 * i + 25, 25) for i in range(5)]
                          + [np.linspace(125, 128, 3)])
    np.testing.assert_allclose(np.asarray(ones), want, atol=1e-4)
    bent = A.grid_distortion_axis(jnp.array([1.2, 0.8, 1.0, 1.0, 1.0, 1.3]))
    np.testing.assert_allclose(np.asarray(bent[:50]),
                               np.concatenate([np.linspace(0, 30, 25), np.linspace(30, 50, 25)]),
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(bent[125:]), [125, 126.5, 128], atol=1e-4)


def test_tent_matmul_is_bilinear_sampling_on_a_separable_grid():
    """The elastic displacement is read at grid-distorted points with Ty @ d @ Tx^T;
    that must equal bilinear interpolation (scipy order 1) at (gx[col], gy[row])."""
    rng = np.random.default_rng(8)
    field = rng.normal(size=(128, 128)).astype(np.float32)
    gx = np.sort(rng.uniform(0, 127, 128)).astype(np.float32)
    gy = np.sort(rng.uniform(0, 127, 128)).astype(np.float32)
    got = A._tent(jnp.asarray(gy), 128) @ field @ A._tent(jnp.asarray(gx), 128).T
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    want = ndi.map_coordinates(field.astype(np.float64), [yy, xx], order=1)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
    identity = A._tent(jnp.arange(128, dtype=jnp.float32), 128)
    np.testing.assert_array_equal(np.asarray(identity), np.eye(128))


def test_elastic_affine_moves_the_three_points():
    """cv2.getAffineTransform semantics: the forward map sends the points (106, 106),
    (106, 22), (22, 22) to themselves + jitter, so the sampling map sends them back."""
    jitter = jnp.array([[1.5, -2.0], [3.6, 0.3], [-0.7, -3.1]])
    pts = np.array([[106, 106], [106, 22], [22, 22]], np.float32)
    back = A.apply_affine(pts + np.asarray(jitter), A.elastic_affine_matrix(jitter))
    np.testing.assert_allclose(np.asarray(back), pts, atol=1e-4)
    shift = A.elastic_affine_matrix(jnp.full((3, 2), 2.0))  # equal jitter: a translation
    np.testing.assert_allclose(np.asarray(shift), [[1, 0, -2], [0, 1, -2]], atol=1e-5)


def test_gaussian_smooth_matches_scipy():
    field = np.random.default_rng(5).uniform(-1, 1, (2, 128, 128)).astype(np.float32)
    got = np.asarray(A.gaussian_smooth(jnp.asarray(field), 6.0))
    for i in range(2):
        want = ndi.gaussian_filter(field[i].astype(np.float64), 6.0, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(got[i], want, atol=1e-5)


@pytest.mark.parametrize("k", [3, 5])
def test_box_blur_matches_scipy_mirror(k):
    image = np.random.default_rng(6).uniform(0, 1, (128, 128, 2)).astype(np.float32)
    got = np.asarray(A.box_blur(jnp.asarray(image), k))
    want = ndi.uniform_filter(image.astype(np.float64), size=(k, k, 1), mode="mirror")
    np.testing.assert_allclose(got, want, atol=1e-5)


# --------------------------------------------------------------------------- the chain


def test_output_shapes_dtypes_and_binary_masks(batch):
    images, masks = batch
    out_img, out_mask = A.augment_batch(jax.random.key(0), images, masks)
    assert out_img.shape == images.shape and out_img.dtype == jnp.float32
    assert out_mask.shape == masks.shape and out_mask.dtype == masks.dtype
    assert float(out_img.min()) >= 0.0 and float(out_img.max()) <= 1.0
    assert set(np.unique(np.asarray(out_mask))) <= {0.0, 1.0}


def test_zero_probability_returns_input_exactly(batch):
    images, masks = batch
    out_img, out_mask = A.augment_batch(jax.random.key(1), images, masks, p=0.0)
    np.testing.assert_array_equal(np.asarray(out_img), images)
    np.testing.assert_array_equal(np.asarray(out_mask), masks)


def test_flip_is_exact(batch):
    images, masks = batch
    flip_only = _ops([1] * N, [1] * N, [0] * N, [0] * N)
    out_img, out_mask = A.apply_ops(jax.random.key(2), images, masks, flip_only,
                                    photometric=False)
    np.testing.assert_array_equal(np.asarray(out_img), images[:, :, ::-1])
    np.testing.assert_array_equal(np.asarray(out_mask), masks[:, :, ::-1])


def test_deterministic_from_key_and_keys_differ(batch):
    images, masks = batch
    key = A.batch_key(seed=7, epoch=3, step=11)
    a = A.augment_batch(key, images, masks)
    b = A.augment_batch(A.batch_key(7, 3, 11), images, masks)
    c = A.augment_batch(A.batch_key(7, 4, 11), images, masks)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))


def test_sample_ops_says_which_images_changed(batch):
    """Images whose chain was not drawn come back bit-identical; the others change."""
    images, masks = batch
    chains = ((k, np.asarray(A.sample_ops(k, N)["chain"])) for k in map(jax.random.key, range(99)))
    key, chain = next((k, c) for k, c in chains if 0 < c.sum() < N)  # both outcomes present
    out_img, _ = A.augment_batch(key, images, masks)
    same = np.all(np.asarray(out_img) == images, axis=(1, 2, 3))
    np.testing.assert_array_equal(same, chain == 0)


def _cv2_rotation_matrix(angle_deg: float, scale: float, dx: float, dy: float) -> np.ndarray:
    """albumentations 0.1.x shift_scale_rotate's forward map (3x3) on a 128^2 image, written from
    OpenCV's documentation of getRotationMatrix2D(centre (w/2, h/2), angle, scale):
    [[a, b, (1 - a) cx - b cy], [-b, a, b cx + (1 - a) cy]], a = scale cos, b = scale sin, then
    shifted by (dx w, dy h)."""
    a, b = scale * np.cos(np.deg2rad(angle_deg)), scale * np.sin(np.deg2rad(angle_deg))
    c = 64.0
    return np.array([[a, b, (1 - a) * c - b * c + dx * 128],
                     [-b, a, b * c + (1 - a) * c + dy * 128],
                     [0, 0, 1]])


def _reference_chain(image, mask, flip, geo, photo, prm):
    """One image through flip -> geometric op -> photometric op with numpy and scipy, from the
    parameters the batch drew for it. Returns (image, mask, mask_tie): mask_tie marks pixels
    whose nearest-neighbour source sits within 1e-3 px of a half-pixel tie (either side may win)."""
    image, mask = image.astype(np.float64), mask.astype(np.float64)
    if flip:
        image, mask = image[:, ::-1], mask[:, ::-1]
    ys, xs = np.mgrid[0:128, 0:128].astype(np.float64)
    if geo == 1:  # cv2.warpAffine: out(x, y) = src(M^-1 (x, y)), BORDER_REFLECT_101 = scipy 'mirror'
        inv = np.linalg.inv(_cv2_rotation_matrix(float(prm["angle"]), float(prm["scale"]),
                                                 *map(float, prm["shift"])))
        sx, sy = (inv[r, 0] * xs + inv[r, 1] * ys + inv[r, 2] for r in (0, 1))
        image = ndi.map_coordinates(image, [sy, sx], order=1, mode="mirror")
        mask = ndi.map_coordinates(mask, [sy, sx], order=0, mode="mirror")
    elif geo == 2:  # crop, then a half-pixel (align_corners=False) bilinear resize: scipy's zoom
        crop, (x0, y0) = int(prm["crop"]), map(int, prm["crop_start"])
        patch, patch_mask = image[y0:y0 + crop, x0:x0 + crop], mask[y0:y0 + crop, x0:x0 + crop]
        image = ndi.zoom(patch, 128 / crop, order=1, grid_mode=True, mode="nearest")
        sx, sy = ((v + 0.5) * crop / 128 - 0.5 for v in (xs, ys))  # half-pixel source points
        mask = ndi.map_coordinates(patch_mask, [sy, sx], order=0, mode="nearest")
    else:
        sx, sy = xs, ys
    tie = (np.abs(np.mod(sx, 1.0) - 0.5) < 1e-3) | (np.abs(np.mod(sy, 1.0) - 0.5) < 1e-3)
    if photo == 2:
        image = image * float(prm["brightness"])
    elif photo == 3:
        image = image ** float(prm["gamma"])
    elif photo == 4:  # cv2.blur: a k x k mean, BORDER_REFLECT_101
        image = ndi.uniform_filter(image, int(prm["blur_k"]), mode="mirror")
    return np.clip(image, 0.0, 1.0), mask, tie


def test_batch_matches_numpy_scipy_per_image(batch):
    """The batched chain, each image with its own op choice and parameters, against numpy/scipy
    run on that image alone from the parameters it drew (grid distortion and the elastic op, whose
    fields have no library counterpart, are checked piecewise above and by the alignment test).
    Tolerance 1e-4: float32 sample coordinates (|x| < 300, rounding ~3e-5 px) on images whose
    slope is below 0.1 per pixel, against float64; a wrong op, parameter or order is off by > 1e-2."""
    images, masks = batch
    flip, geo, photo = [1, 0, 1, 0, 0, 1, 0, 1], [1, 1, 2, 2, 0, 1, 2, 1], [2, 3, 4, 0, 0, 4, 2, 3]
    chain = [int(g > 0) for g in geo]
    key = jax.random.key(5)
    got_img, got_mask = A.apply_ops(key, images, masks, _ops(chain, flip, geo, photo))
    _, param_keys = A._split_image_keys(key, N)  # the parameters are inputs: read what was drawn
    prm = jax.tree.map(np.asarray, jax.vmap(lambda k: A._params_one(k, A.SIZE))(param_keys))
    for i in range(N):
        want_img, want_mask, tie = _reference_chain(images[i, ..., 0], masks[i, ..., 0], flip[i], geo[i],
                                                    photo[i], jax.tree.map(lambda v: v[i], prm))
        np.testing.assert_allclose(np.asarray(got_img[i, ..., 0]), want_img, atol=1e-4, err_msg=str(i))
        assert tie.mean() < 0.05, i
        np.testing.assert_array_equal(np.asarray(got_mask[i, ..., 0])[~tie], want_mask[~tie], err_msg=str(i))


def test_masks_stay_aligned_with_images(batch):
    """mask = image > 0.5 before; after any geometric op (grid distortion included) the
    thresholded warped image and the warped mask may disagree only where the image is within
    half a source pixel of the threshold: both samplers read the same source point, the mask
    at the nearest pixel (at most sqrt(2)/2 px away), the image interpolated. So wherever they
    disagree, |image - 0.5| <= sqrt(2)/2 * (steepest slope of the source). (A band around the
    warped mask boundary is not a usable criterion: the boundary may lie just outside the frame.)
    Measured: about 1-2% of pixels disagree, all within that bound."""
    images, masks = batch
    slope = max(np.abs(np.diff(images, axis=a)).max() for a in (1, 2))
    bound = np.sqrt(2) / 2 * slope * 1.05  # 5% for bilinear curvature
    geo = np.arange(N) % 3 + 1  # every geometric op
    ops = _ops([1] * N, np.arange(N) % 2, geo, (np.arange(N) // 3 % 2))  # grid on some
    for seed in range(3):
        out_img, out_mask = A.apply_ops(jax.random.key(seed), images, masks, ops,
                                        photometric=False)
        img, mask = np.asarray(out_img[..., 0]), np.asarray(out_mask[..., 0])
        disagree = (img > 0.5) != (mask > 0.5)
        assert np.all(np.abs(img[disagree] - 0.5) <= bound), (seed, bound)
        assert disagree.mean() < 0.03, f"{disagree.mean():.4f} of pixels disagree"
        assert 0.05 < mask.mean() < 0.95


def test_misaligned_mask_would_be_caught(batch):
    """The alignment check above can fail: a mask flipped without its image breaks it."""
    images, masks = batch
    flipped = masks[:, :, ::-1, 0]
    disagree = (images[..., 0] > 0.5) != (flipped > 0.5)
    assert disagree.mean() > 0.05
    slope = max(np.abs(np.diff(images, axis=a)).max() for a in (1, 2))
    assert np.abs(images[..., 0][disagree] - 0.5).max() > np.sqrt(2) / 2 * slope * 1.05


def test_parameter_ranges():
    """Each op's parameters stay in the spec's ranges and reach both ends."""
    prm = jax.vmap(lambda k: A._params_one(k, 128))(jax.random.split(jax.random.key(9), 4000))
    p = {k: np.asarray(v) for k, v in prm.items()}
    assert np.abs(p["angle"]).max() <= 45 and np.abs(p["angle"]).max() > 44
    assert p["scale"].min() >= 0.9 and p["scale"].max() <= 1.1
    assert np.abs(p["shift"]).max() <= 0.0625
    assert p["crop"].min() == 50 and p["crop"].max() == 101
    assert np.all(p["crop_start"] >= 0) and np.all(p["crop_start"] + p["crop"][:, None] <= 128)
    assert set(np.round(p["gamma"] * 100).astype(int)) == set(range(80, 121))
    assert set(p["blur_k"]) == {3, 5}
    assert np.abs(p["brightness"] - 1).max() <= 0.2
    assert np.abs(p["grid_steps"] - 1).max() <= 0.3
    assert np.abs(p["jitter"]).max() <= 3.6


def test_op_frequencies_match_the_original():
    """20000 draws: chain .8, flip .8*.5, each geometric op .8/3; second stage brightness .8*2/5
    (the original's OneOf lists RandomBrightness twice) and grid, gamma, blur .8/5 each.

    Bound: 5 binomial standard deviations (sigma <= 0.0035 here), a false alarm rate below 1e-6
    per frequency for a correct sampler; a uniform second stage (.2 each) is off by >= 11 sigma
    for every second-stage op, so the bound cannot hide the distinction."""
    n = 20000
    ops = {k: np.asarray(v) for k, v in A.sample_ops(jax.random.key(2018), n).items()}
    expected = {("chain", 1): 0.8, ("flip", 1): 0.4}
    expected.update({("geo", g): 0.8 / 3 for g in (1, 2, 3)})
    photo = {"grid_distortion": 0.8 / 5, "brightness": 0.8 * 2 / 5, "gamma": 0.8 / 5, "blur": 0.8 / 5}
    expected.update({("photo", A.PHOTO_OPS.index(name)): prob for name, prob in photo.items()})
    for (name, value), prob in expected.items():
        freq = np.mean(ops[name] == value)
        sigma = np.sqrt(prob * (1 - prob) / n)
        assert abs(freq - prob) < 5 * sigma, (name, value, freq, prob)
    # nothing happens outside the chain
    off = ops["chain"] == 0
    assert not ops["flip"][off].any() and not ops["geo"][off].any() and not ops["photo"][off].any()
