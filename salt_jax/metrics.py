"""The competition metric: mean average precision over IoU thresholds 0.50, 0.55, ..., 0.95.

Each image holds at most one object, so its score is the fraction of thresholds t with IoU > t
(strictly); both masks empty scores 1, exactly one empty scores 0. The dataset score is the mean
over images.

Thresholds are compared exactly in integers: IoU > k/20  <=>  20 * intersection > k * union for
k = 10..19. Float thresholds such as np.arange(10) * 0.05 + 0.5 are off by an ulp (0.6 comes out
as 0.6000000000000001) and would misjudge an IoU lying exactly on a threshold.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# IoU threshold t_k = k / THRESHOLD_DENOMINATOR.
THRESHOLD_NUMERATORS = np.arange(10, 20)
THRESHOLD_DENOMINATOR = 20
# Score of an image hitting m thresholds, m = 0..10, as the nearest float32 to m / 10. A table, because
# XLA turns a division by the constant 10 into a multiplication by 0.1f, and 9 * 0.1f != 0.9f.
SCORE_OF_HITS = (np.arange(len(THRESHOLD_NUMERATORS) + 1) / len(THRESHOLD_NUMERATORS)).astype(np.float32)


def _check_shapes(y_true_shape: tuple[int, ...], y_pred_shape: tuple[int, ...]) -> None:
    if y_true_shape != y_pred_shape:
        raise ValueError(f"kaggle_score: y_true {y_true_shape} and y_pred {y_pred_shape} differ in shape")
    if len(y_true_shape) not in (3, 4) or (len(y_true_shape) == 4 and y_true_shape[-1] != 1):
        raise ValueError(f"kaggle_score: masks must be (N, H, W) or (N, H, W, 1), got shape {y_true_shape}")


def kaggle_score(y_true: jax.Array, y_pred: jax.Array) -> jax.Array:
    """Per-image competition score in JAX (jittable).

    Args:
      y_true, y_pred: binary masks (N, H, W) or (N, H, W, 1), bool or numeric (nonzero = salt).

    Returns:
      (N,) float32 scores in {0, 0.1, ..., 1}.
    """
    _check_shapes(tuple(y_true.shape), tuple(y_pred.shape))
    n = y_true.shape[0]
    t = y_true.reshape(n, -1) != 0
    p = y_pred.reshape(n, -1) != 0
    intersection = jnp.sum(t & p, axis=-1, dtype=jnp.int32)
    union = jnp.sum(t | p, axis=-1, dtype=jnp.int32)
    k = jnp.asarray(THRESHOLD_NUMERATORS, dtype=jnp.int32)
    hits = THRESHOLD_DENOMINATOR * intersection[:, None] > k[None, :] * union[:, None]
    score = jnp.asarray(SCORE_OF_HITS)[jnp.sum(hits, axis=-1, dtype=jnp.int32)]
    return jnp.where(union == 0, 1.0, score)


def kaggle_score_np(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Numpy twin of kaggle_score for host-side use: same inputs, (N,) float32 scores."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_shapes(y_true.shape, y_pred.shape)
    n = y_true.shape[0]
    t = y_true.reshape(n, -1) != 0
    p = y_pred.reshape(n, -1) != 0
    intersection = np.sum(t & p, axis=-1, dtype=np.int64)
    union = np.sum(t | p, axis=-1, dtype=np.int64)
    hits = THRESHOLD_DENOMINATOR * intersection[:, None] > THRESHOLD_NUMERATORS[None, :] * union[:, None]
    score = SCORE_OF_HITS[hits.sum(axis=-1)]
    return np.where(union == 0, np.float32(1.0), score)


def kaggle_map(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Dataset score: the mean of kaggle_score_np over images (the competition's number)."""
    return float(np.mean(kaggle_score_np(y_true, y_pred)))
