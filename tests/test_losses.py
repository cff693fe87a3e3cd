"""Tests of salt_jax.losses against independent references.

References used here, none of them our JAX code:
- the Jaccard loss of a mistake set, computed from Python sets (the defining property of the Lovasz
  hinge on 0/1 errors);
- a straightforward numpy port of the published algorithm (Berman et al. 2018), one image at a time;
- the Lovasz extension by its definition, an integral over level sets of the hinge values;
- central finite differences in float64;
- torch.nn.functional's binary cross-entropies, and dice by hand.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax import losses
from tests.torch_reference import optional_torch

pytestmark = pytest.mark.timeout(120)

# Only the BCE references need torch; the Lovasz and dice tests run without it.
torch, needs_torch = optional_torch("torch is not installed (the BCE reference)")
F = torch.nn.functional if torch is not None else None


# ----------------------------------------------------------------------------------------------
# Independent references
# ----------------------------------------------------------------------------------------------


def _hinge_np(errors: np.ndarray, variant: str) -> np.ndarray:
    if variant == "relu":
        return np.maximum(errors, 0.0)
    return np.where(errors > 0, errors, np.expm1(np.minimum(errors, 0.0))) + 1.0


def _hinge_slope_np(errors: np.ndarray, variant: str) -> np.ndarray:
    if variant == "relu":
        return (errors > 0).astype(np.float64)
    return np.where(errors > 0, 1.0, np.exp(np.minimum(errors, 0.0)))


def ref_lovasz_image(logits: np.ndarray, labels: np.ndarray, variant: str) -> tuple[float, np.ndarray]:
    """Berman et al.'s binary Lovasz hinge of one flattened image, in float64, with its gradient.

    Returns (loss, d loss / d logits) with the sort permutation held constant.
    """
    logits = np.asarray(logits, np.float64).ravel()
    labels = np.asarray(labels, np.float64).ravel()
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    order = np.argsort(-errors, kind="stable")
    gt_sorted = labels[order]
    positives = gt_sorted.sum()
    intersection = positives - np.cumsum(gt_sorted)
    union = positives + np.cumsum(1.0 - gt_sorted)
    jaccard = 1.0 - intersection / union
    weights = jaccard.copy()
    weights[1:] = jaccard[1:] - jaccard[:-1]
    loss = float(np.dot(_hinge_np(errors[order], variant), weights))
    grad = np.empty_like(logits)
    grad[order] = _hinge_slope_np(errors[order], variant) * weights * -signs[order]
    return loss, grad


def ref_lovasz(logits, labels, *, per_image: bool, variant: str, symmetric: bool = False) -> float:
    """Loop over images (or the whole batch as one image) with ref_lovasz_image."""
    logits = np.asarray(logits, np.float64).reshape(len(logits), -1)
    labels = np.asarray(labels, np.float64).reshape(len(labels), -1)
    if not per_image:
        logits, labels = logits.reshape(1, -1), labels.reshape(1, -1)

    def one_way(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean([ref_lovasz_image(xi, yi, variant)[0] for xi, yi in zip(x, y)]))

    if symmetric:
        return 0.5 * (one_way(logits, labels) + one_way(-logits, 1.0 - labels))
    return one_way(logits, labels)


def jaccard_loss_of_mistakes(labels: np.ndarray, mistakes: np.ndarray) -> float:
    """|M| / |Y u M| from index sets; 0 when Y u M is empty."""
    positives = set(np.flatnonzero(labels))
    mistake_set = set(np.flatnonzero(mistakes))
    union = positives | mistake_set
    return len(mistake_set) / len(union) if union else 0.0


def lovasz_by_level_sets(logits: np.ndarray, labels: np.ndarray, variant: str) -> float:
    """The Lovasz extension by definition: integral over t > 0 of Jaccard-loss({hinge >= t}).

    The hinge values are >= 0 and the Jaccard loss of the empty set is 0, so the integral is a
    finite sum over the distinct hinge values v_1 > v_2 > ... (with v_{K+1} = 0).
    """
    logits = np.asarray(logits, np.float64).ravel()
    labels = np.asarray(labels, np.float64).ravel()
    hinge = _hinge_np(1.0 - logits * (2.0 * labels - 1.0), variant)
    levels = np.unique(hinge)[::-1]
    lower = np.append(levels[1:], 0.0)
    return float(
        sum((v - below) * jaccard_loss_of_mistakes(labels, hinge >= v) for v, below in zip(levels, lower))
    )


# One compilation per shape and option set instead of one per primitive (eager mode).
lovasz = jax.jit(losses.lovasz_hinge, static_argnames=("per_image", "variant", "symmetric"))


def all_binary(n_pixels: int) -> np.ndarray:
    """Every {0,1} vector of length n_pixels: (2**n_pixels, n_pixels)."""
    return np.array(list(itertools.product([0.0, 1.0], repeat=n_pixels)))


def random_batch(seed: int, shape: tuple[int, ...], p_salt: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=shape).astype(np.float32)
    labels = (rng.random(shape) < p_salt).astype(np.float32)
    return logits, labels


# ----------------------------------------------------------------------------------------------
# The references agree with each other (so a shared mistake is unlikely)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["relu", "elu+1"])
def test_numpy_reference_matches_level_set_definition(variant):
    logits, labels = random_batch(0, (6, 7, 5))
    labels[0] = 0.0  # an empty mask
    labels[1] = 1.0  # a full mask
    for x, y in zip(logits, labels):
        assert ref_lovasz_image(x, y, variant)[0] == pytest.approx(lovasz_by_level_sets(x, y, variant), abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Lovasz hinge: defining properties, exhaustive on tiny masks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 2), (1, 5)])
def test_zero_one_errors_give_jaccard_loss_of_mistake_set(shape):
    """Errors exactly 0 (correct, margin 1) or 1 (logit 0, a mistake) -> loss = |M| / |Y u M|.

    Exhaustive over every labeling Y and every mistake set M of the tiny mask, all in one batched
    call. The relu hinge of such errors is the indicator of M; elu(e) + 1 adds 1 everywhere, and the
    Lovasz extension of a constant shift adds the Jaccard loss of the full mistake set, which is 1.
    """
    n_pixels = math.prod(shape)
    pairs = list(itertools.product(all_binary(n_pixels), repeat=2))
    labels = np.array([y for y, _ in pairs]).reshape(-1, *shape)
    mistakes = np.array([m for _, m in pairs]).reshape(-1, *shape)
    logits = (2.0 * labels - 1.0) * (1.0 - mistakes)  # e = 1 - x * sign = mistake indicator
    expected = np.array([jaccard_loss_of_mistakes(y, m) for y, m in zip(labels, mistakes)])

    relu_each = jax.vmap(lambda x, y: lovasz(x[None], y[None], variant="relu"))(logits, labels)
    elu_each = jax.vmap(lambda x, y: lovasz(x[None], y[None], variant="elu+1"))(logits, labels)
    np.testing.assert_allclose(relu_each, expected, atol=1e-6)
    np.testing.assert_allclose(elu_each, expected + 1.0, atol=1e-6)
    # The batched per-image call is the mean of the same numbers.
    assert float(lovasz(logits, labels, variant="relu")) == pytest.approx(expected.mean(), abs=1e-6)


@pytest.mark.parametrize("shape", [(2, 2), (1, 5)])
def test_sign_logits_give_twice_one_minus_iou(shape):
    """Logits +-1 (a hard prediction) make errors 0 or 2: relu loss = 2 * (1 - IoU(Y, prediction))."""
    n_pixels = math.prod(shape)
    pairs = list(itertools.product(all_binary(n_pixels), repeat=2))
    labels = np.array([y for y, _ in pairs]).reshape(-1, *shape)
    preds = np.array([p for _, p in pairs]).reshape(-1, *shape)
    logits = 2.0 * preds - 1.0

    def one_minus_iou(y: np.ndarray, p: np.ndarray) -> float:
        union = np.logical_or(y, p).sum()
        return 0.0 if union == 0 else 1.0 - np.logical_and(y, p).sum() / union

    expected = np.array([2.0 * one_minus_iou(y, p) for y, p in zip(labels, preds)])
    got = jax.vmap(lambda x, y: lovasz(x[None], y[None], variant="relu"))(logits, labels)
    np.testing.assert_allclose(got, expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Lovasz hinge: agreement with the numpy port of the published algorithm
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["relu", "elu+1"])
@pytest.mark.parametrize("per_image", [True, False])
@pytest.mark.parametrize("symmetric", [False, True])
def test_matches_numpy_reference(variant, per_image, symmetric):
    logits, labels = random_batch(1, (5, 24, 24))
    labels[2] = 0.0  # empty masks are part of the mean
    expected = ref_lovasz(logits, labels, per_image=per_image, variant=variant, symmetric=symmetric)
    got = lovasz(logits, labels, per_image=per_image, variant=variant, symmetric=symmetric)
    assert got.dtype == jnp.float32
    assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_full_size_batch_matches_numpy_reference():
    """The training shape (N, 128, 128, 1), under jit."""
    logits, labels = random_batch(2, (3, 128, 128, 1))
    got = jax.jit(losses.lovasz_hinge)(logits, labels)
    assert float(got) == pytest.approx(ref_lovasz(logits, labels, per_image=True, variant="elu+1"), rel=1e-5)


def test_channel_axis_is_optional():
    logits, labels = random_batch(3, (2, 9, 9))
    a = lovasz(logits, labels)
    b = lovasz(logits[..., None], labels[..., None])
    assert float(a) == float(b)


def test_per_image_is_mean_of_images_and_differs_from_whole_batch():
    logits, labels = random_batch(4, (4, 6, 6))
    per_image = lovasz(logits, labels, per_image=True, variant="relu")
    singles = [lovasz(logits[i : i + 1], labels[i : i + 1], variant="relu") for i in range(4)]
    assert float(per_image) == pytest.approx(float(np.mean(singles)), rel=1e-6)

    # Whole batch = one image holding every pixel of the batch.
    whole = lovasz(logits, labels, per_image=False, variant="relu")
    as_one_image = lovasz(logits.reshape(1, 4 * 6, 6), labels.reshape(1, 4 * 6, 6), variant="relu")
    assert float(whole) == pytest.approx(float(as_one_image), rel=1e-6)
    assert abs(float(whole) - float(per_image)) > 1e-3


@pytest.mark.parametrize("variant", ["relu", "elu+1"])
def test_empty_mask_loss_is_hinge_of_max_error(variant):
    """No positives: the Jaccard weights are (1, 0, ..., 0), so only the largest error counts."""
    rng = np.random.default_rng(5)
    logits = rng.uniform(-4.0, -0.5, size=(3, 8, 8)).astype(np.float32)  # max errors in (-3, 0.5)
    labels = np.zeros_like(logits)
    max_error = (1.0 + logits.reshape(3, -1)).max(axis=1).astype(np.float64)
    hinge = _hinge_np(max_error, variant)
    got = jax.vmap(lambda x, y: lovasz(x[None], y[None], variant=variant))(logits, labels)
    np.testing.assert_allclose(got, hinge, rtol=1e-6)

    # Only the pixel with the largest logit receives a gradient: hinge'(e) * de/dx = hinge'(e).
    grad = jax.grad(lambda x: lovasz(x[None], labels[:1], variant=variant))(logits[0])
    expected_grad = np.zeros_like(logits[0])
    expected_grad.flat[np.argmax(logits[0])] = _hinge_slope_np(max_error[:1], variant)[0]
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-6)


def test_elu_variant_is_relu_plus_one_when_errors_are_nonnegative():
    """elu(e) + 1 = e + 1 for e >= 0, and the Lovasz extension of +1 everywhere is +1."""
    rng = np.random.default_rng(6)
    labels = (rng.random((3, 10, 10)) < 0.5).astype(np.float32)
    logits = rng.uniform(-1.0, 1.0, size=labels.shape).astype(np.float32)  # |x| <= 1 -> e >= 0
    relu = lovasz(logits, labels, variant="relu")
    elu = lovasz(logits, labels, variant="elu+1")
    assert float(elu) == pytest.approx(float(relu) + 1.0, rel=1e-6)


@pytest.mark.parametrize("variant", ["relu", "elu+1"])
def test_symmetric_averages_the_flipped_problem(variant):
    logits, labels = random_batch(7, (3, 12, 12))
    forward = lovasz(logits, labels, variant=variant)
    flipped = lovasz(-logits, 1.0 - labels, variant=variant)
    both = lovasz(logits, labels, variant=variant, symmetric=True)
    assert float(both) == pytest.approx(0.5 * (float(forward) + float(flipped)), rel=1e-6)
    assert abs(float(forward) - float(flipped)) > 1e-3  # the average is not trivially one of them


def test_bf16_inputs_are_upcast():
    logits, labels = random_batch(8, (2, 32, 32, 1))
    logits_bf16 = jnp.asarray(logits * 50.0, dtype=jnp.bfloat16)  # large logits: exp overflow territory
    got = lovasz(logits_bf16, jnp.asarray(labels, jnp.bfloat16), symmetric=True)
    assert got.dtype == jnp.float32
    exact = ref_lovasz(np.asarray(logits_bf16, np.float32), labels, per_image=True, variant="elu+1", symmetric=True)
    assert float(got) == pytest.approx(exact, rel=1e-5)
    grad = jax.grad(lambda x: lovasz(x, labels))(logits_bf16)
    assert grad.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grad.astype(jnp.float32))))


def test_rejects_bad_inputs():
    x = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        losses.lovasz_hinge(x, x)
    with pytest.raises(ValueError, match="differ"):
        losses.lovasz_hinge(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="variant"):
        losses.lovasz_hinge(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), variant="softplus")


# ----------------------------------------------------------------------------------------------
# Lovasz hinge: gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, per_image, symmetric",
    [("relu", True, False), ("elu+1", True, True), ("relu", False, True), ("elu+1", False, False)],
)
def test_gradient_matches_central_differences_in_float64(variant, per_image, symmetric):
    """Away from ties and from the relu kink the loss is smooth, so finite differences apply."""
    logits, labels = random_batch(9, (3, 4, 5))
    labels[1] = 0.0
    with jax.enable_x64(True):
        x = jnp.asarray(logits, jnp.float64)
        y = jnp.asarray(labels, jnp.float64)
        errors = np.sort(np.concatenate([1.0 - logits * (2 * labels - 1), 1.0 + logits * (2 * labels - 1)]).ravel())
        assert np.min(np.abs(errors)) > 1e-3 and np.min(np.diff(errors)) > 1e-5, "seed gives near-ties"

        def loss(v):
            return lovasz(v, y, per_image=per_image, variant=variant, symmetric=symmetric)

        grad = np.asarray(jax.grad(loss)(x))
        assert grad.dtype == np.float64
        eps = 1e-6
        basis = jnp.eye(x.size, dtype=jnp.float64).reshape(-1, *x.shape)
        numeric = (jax.vmap(lambda d: loss(x + eps * d))(basis) - jax.vmap(lambda d: loss(x - eps * d))(basis)) / (
            2 * eps
        )
    np.testing.assert_allclose(grad.ravel(), np.asarray(numeric), atol=1e-8)


def test_gradient_matches_reference_with_constant_permutation():
    """Per image, d loss / d logits = hinge'(e) * Jaccard weight * (-sign), divided by N for the mean.

    The float32 weights are differences of Jaccard values in [0, 1], exact to about 2 ulp(1) = 2.4e-7;
    divided by the 4 images that is 6e-8 absolute.
    """
    logits, labels = random_batch(10, (4, 16, 16))
    grad = np.asarray(jax.grad(lambda x: lovasz(x, labels))(logits))
    for i in range(4):
        _, expected = ref_lovasz_image(logits[i], labels[i], "elu+1")
        np.testing.assert_allclose(grad[i].ravel(), expected / 4, rtol=1e-5, atol=6e-8)


# ----------------------------------------------------------------------------------------------
# BCE and dice
# ----------------------------------------------------------------------------------------------


@needs_torch
def test_bce_prob_matches_torch_including_clamp():
    """torch's BCELoss clamps each log at -100; p = 0 and p = 1 must give exactly those values."""
    rng = np.random.default_rng(12)
    probs = np.concatenate([rng.random(300), [0.0, 1.0, 0.0, 1.0, 1e-45, 1e-30, 1 - 1e-7]]).astype(np.float32)
    targets = np.concatenate([(rng.random(300) < 0.5), [1, 0, 0, 1, 1, 1, 0]]).astype(np.float32)
    for sl in (slice(None), slice(300, 302)):  # everything, then only the two fully clamped terms
        expected = F.binary_cross_entropy(torch.from_numpy(probs[sl]), torch.from_numpy(targets[sl])).item()
        assert float(losses.bce_prob(probs[sl], targets[sl])) == pytest.approx(expected, rel=1e-6)
    assert float(losses.bce_prob(probs[300:302], targets[300:302])) == pytest.approx(100.0)
    grad = jax.grad(losses.bce_prob)(jnp.asarray(probs), jnp.asarray(targets))
    assert bool(jnp.all(jnp.isfinite(grad)))


@needs_torch
def test_bce_prob_gradient_matches_torch_away_from_clamp():
    rng = np.random.default_rng(13)
    probs = rng.uniform(0.01, 0.99, size=50)
    targets = (rng.random(50) < 0.5).astype(np.float64)
    p_t = torch.tensor(probs, dtype=torch.float32, requires_grad=True)
    F.binary_cross_entropy(p_t, torch.tensor(targets, dtype=torch.float32)).backward()
    grad = jax.grad(losses.bce_prob)(jnp.asarray(probs, jnp.float32), jnp.asarray(targets, jnp.float32))
    np.testing.assert_allclose(grad, p_t.grad.numpy(), rtol=1e-5)


def test_soft_dice_by_hand():
    probs = np.array([[0.5, 1.0], [0.0, 0.25]], np.float32)[None]
    targets = np.array([[1.0, 1.0], [0.0, 0.0]], np.float32)[None]
    # sum(p*y) = 1.5, sum p = 1.75, sum y = 2: 1 - (3 + 1) / (1.75 + 2 + 1) = 1 - 4 / 4.75
    assert float(losses.soft_dice(probs, targets)) == pytest.approx(1.0 - 4.0 / 4.75, rel=1e-6)
    s = [1.0 / (1.0 + math.exp(-v)) for v in (0.5, 1.0, 0.0, 0.25)]
    by_hand = 1.0 - (2.0 * (s[0] + s[1]) + 1.0) / (sum(s) + 2.0 + 1.0)
    assert float(losses.soft_dice(probs, targets, double_sigmoid=True)) == pytest.approx(by_hand, rel=1e-6)


def test_soft_dice_is_batch_level():
    """One image fully right and one empty image predicted empty: dice over the batch, not a mean."""
    probs = np.stack([np.ones((3, 3)), np.zeros((3, 3))]).astype(np.float32)
    targets = probs.copy()
    assert float(losses.soft_dice(probs, targets)) == pytest.approx(0.0, abs=1e-7)
    probs[1, 0, 0] = 1.0  # one false positive pixel: 1 - (18 + 1) / (10 + 9 + 1)
    assert float(losses.soft_dice(probs, targets)) == pytest.approx(1.0 - 19.0 / 20.0, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Gated multi-loss and the traced switch
# ----------------------------------------------------------------------------------------------


multi_loss = jax.jit(
    losses.multi_loss, static_argnames=("symmetric", "double_sigmoid")
)


def _model_outputs(seed: int, n: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, 128, 128, 1)).astype(np.float32)
    masks = (rng.random((n, 128, 128, 1)) < 0.3).astype(np.float32)
    masks[0] = 0.0  # an image without salt: classifier target 0
    salt_prob = rng.uniform(0.05, 0.95, size=(n, 1)).astype(np.float32)
    return logits, salt_prob, masks


def _expected_multi_loss(logits, salt_prob, masks, *, use_lovasz: bool) -> float:
    """0.1 * BCE(p, any salt) + (Lovasz | dice + 0.2 * BCE(sigmoid)), from torch and the numpy reference."""
    has_salt = torch.from_numpy((masks.reshape(len(masks), -1).max(axis=1) > 0).astype(np.float32))
    bce_cls = F.binary_cross_entropy(torch.from_numpy(salt_prob[:, 0]), has_salt).item()
    if use_lovasz:
        seg = ref_lovasz(logits, masks, per_image=True, variant="elu+1")
    else:
        p = torch.sigmoid(torch.from_numpy(logits).double())
        y = torch.from_numpy(masks).double()
        dice = 1.0 - (2.0 * (p * y).sum() + 1.0) / (p.sum() + y.sum() + 1.0)
        seg = dice.item() + 0.2 * F.binary_cross_entropy(p, y).item()
    return 0.1 * bce_cls + seg


@needs_torch
@pytest.mark.parametrize("use_lovasz", [False, True])
def test_multi_loss_matches_references(use_lovasz):
    logits, salt_prob, masks = _model_outputs(14)
    loss, aux = multi_loss(logits, salt_prob, masks, use_lovasz=use_lovasz)
    expected = _expected_multi_loss(logits, salt_prob, masks, use_lovasz=use_lovasz)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert set(aux) == {"loss", "bce_cls", "seg", "dice", "bce", "lovasz", "use_lovasz"}
    assert float(aux["loss"]) == float(loss)
    assert float(aux["seg"]) == pytest.approx(float(loss) - 0.1 * float(aux["bce_cls"]), rel=1e-6)
    if use_lovasz:
        assert float(aux["lovasz"]) == float(aux["seg"]) and float(aux["dice"]) == 0.0
    else:
        assert float(aux["seg"]) == pytest.approx(float(aux["dice"]) + 0.2 * float(aux["bce"]), rel=1e-6)
        assert float(aux["lovasz"]) == 0.0


def test_multi_loss_options_reach_the_components():
    logits, salt_prob, masks = _model_outputs(16)
    _, aux = multi_loss(logits, salt_prob, masks, use_lovasz=True, symmetric=True)
    expected = ref_lovasz(logits, masks, per_image=True, variant="elu+1", symmetric=True)
    assert float(aux["lovasz"]) == pytest.approx(expected, rel=1e-5)
    _, aux = multi_loss(logits, salt_prob, masks, use_lovasz=False, double_sigmoid=True)
    twice = jax.nn.sigmoid(jax.nn.sigmoid(logits))
    by_formula = 1.0 - (2.0 * jnp.sum(twice * masks) + 1.0) / (jnp.sum(twice) + masks.sum() + 1.0)
    assert float(aux["dice"]) == pytest.approx(float(by_formula), rel=1e-6)


def test_loss_switch_at_the_given_epoch():
    schedule = losses.LossOptions(switch_epoch=20).use_lovasz
    assert [bool(schedule(e)) for e in (0, 19, 20, 21, 120)] == [False, False, True, True, True]
    assert bool(jax.jit(schedule)(jnp.int32(20)))


@needs_torch
def test_jitted_step_traces_once_across_the_switch():
    """A jitted value-and-grad step fed the epoch as an array compiles once and switches loss at 20."""
    logits, salt_prob, masks = _model_outputs(17, n=2)
    schedule = losses.LossOptions(switch_epoch=20).use_lovasz
    traces = 0

    @jax.jit
    def step(x, p, y, epoch):
        nonlocal traces
        traces += 1

        def loss_fn(x_):
            return losses.multi_loss(x_, p, y, use_lovasz=schedule(epoch))

        (loss, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(x)
        return loss, aux["use_lovasz"], jnp.sum(jnp.abs(grad))

    expected = {
        flag: _expected_multi_loss(logits, salt_prob, masks, use_lovasz=flag) for flag in (False, True)
    }
    for epoch in (0, 1, 19, 20, 21, 60):
        loss, switched, grad_mass = step(logits, salt_prob, masks, jnp.asarray(epoch, jnp.int32))
        assert bool(switched) == (epoch >= 20)
        assert float(loss) == pytest.approx(expected[epoch >= 20], rel=1e-5)
        assert np.isfinite(float(grad_mass)) and float(grad_mass) > 0
    assert traces == 1
