"""Tests of salt_jax.metrics: hand-worked cases, exact thresholds, and an exact-fraction reference."""

from __future__ import annotations

from fractions import Fraction

import jax
import numpy as np
import pytest

from salt_jax import metrics

pytestmark = pytest.mark.timeout(60)

kaggle_score = jax.jit(metrics.kaggle_score)


def fraction_reference(y_true: np.ndarray, y_pred: np.ndarray) -> list[float]:
    """The competition rule with exact rational IoU and thresholds, one image at a time."""
    scores = []
    for t, p in zip(y_true.astype(bool), y_pred.astype(bool)):
        union = int(np.logical_or(t, p).sum())
        if union == 0:
            scores.append(1.0)
            continue
        iou = Fraction(int(np.logical_and(t, p).sum()), union)
        scores.append(sum(iou > Fraction(k, 20) for k in range(10, 20)) / 10)
    return scores


def masks_with(intersection: int, only_true: int, only_pred: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A (size,) pair of masks with the given overlap counts, laid out left to right."""
    t = np.zeros(size, np.uint8)
    p = np.zeros(size, np.uint8)
    t[:intersection] = p[:intersection] = 1
    t[intersection : intersection + only_true] = 1
    p[intersection + only_true : intersection + only_true + only_pred] = 1
    return t, p


def test_hand_worked_cases():
    cases = [
        # (intersection, only in truth, only in prediction) -> score
        ((3, 2, 0), 0.2),  # IoU 3/5 = 0.6 exactly: hits 0.50 and 0.55, not 0.60
        ((3, 1, 1), 0.2),  # same IoU, misses on both sides
        ((4, 1, 0), 0.6),  # IoU 0.8: hits 0.50 .. 0.75
        ((1, 1, 0), 0.0),  # IoU 0.5 exactly: not a hit even at 0.50
        ((10, 0, 0), 1.0),  # perfect
        ((19, 1, 0), 0.9),  # IoU 0.95 exactly: all but the last
        ((0, 0, 0), 1.0),  # both empty
        ((0, 5, 0), 0.0),  # prediction empty
        ((0, 0, 5), 0.0),  # truth empty
        ((0, 3, 3), 0.0),  # disjoint
    ]
    pairs = [masks_with(*counts) for counts, _ in cases]
    y_true = np.stack([t for t, _ in pairs]).reshape(-1, 4, 8)
    y_pred = np.stack([p for _, p in pairs]).reshape(-1, 4, 8)
    expected = np.array([score for _, score in cases], np.float32)
    np.testing.assert_array_equal(np.asarray(kaggle_score(y_true, y_pred)), expected)
    np.testing.assert_array_equal(metrics.kaggle_score_np(y_true, y_pred), expected)
    assert metrics.kaggle_map(y_true, y_pred) == pytest.approx(expected.mean())


@pytest.mark.parametrize("k", range(10, 20))
def test_iou_exactly_on_each_threshold_is_not_a_hit(k):
    """IoU = k/20 exactly (intersection k, union 20) hits only the thresholds below k/20."""
    t, p = masks_with(k, 20 - k, 0)
    t, p = t.reshape(1, 4, 8), p.reshape(1, 4, 8)
    expected = (k - 10) / 10
    assert float(kaggle_score(t, p)[0]) == pytest.approx(expected)
    assert float(metrics.kaggle_score_np(t, p)[0]) == pytest.approx(expected)


def test_jax_numpy_and_exact_reference_agree_on_random_masks():
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.random((n, 12, 12)) < rng.uniform(0, 0.6, size=(n, 1, 1))
    # Predictions: the truth with some pixels flipped, so IoUs spread over the whole range.
    flips = rng.random((n, 12, 12)) < rng.uniform(0, 0.3, size=(n, 1, 1))
    pred = truth ^ flips
    truth[:20] = False  # empty truths, some with empty predictions
    pred[:10] = False
    expected = np.array(fraction_reference(truth, pred), np.float32)
    assert len(np.unique(expected)) >= 8, "random masks should cover most score levels"
    np.testing.assert_array_equal(metrics.kaggle_score_np(truth, pred), expected)
    np.testing.assert_array_equal(np.asarray(kaggle_score(truth, pred)), expected)


def test_accepts_channel_axis_and_numeric_masks():
    rng = np.random.default_rng(1)
    truth = (rng.random((8, 101, 101)) < 0.3).astype(np.float32)
    pred = (rng.random((8, 101, 101)) < 0.3).astype(np.uint8)
    expected = np.array(fraction_reference(truth, pred), np.float32)
    for t, p in ((truth, pred), (truth[..., None], pred[..., None])):
        np.testing.assert_array_equal(metrics.kaggle_score_np(t, p), expected)
        np.testing.assert_array_equal(np.asarray(kaggle_score(t, p)), expected)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.kaggle_score_np(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        metrics.kaggle_score(np.zeros((2, 4, 4, 3)), np.zeros((2, 4, 4, 3)))
