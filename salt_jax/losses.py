"""Training losses: Lovasz hinge, BCE on probabilities, soft dice, and the gated multi-loss.

Shapes follow docs/DESIGN.md: mask logits and masks are (N, 128, 128, 1) (a trailing channel of 1 is
optional everywhere here), the salt/no-salt gate is a probability (N, 1). Every loss upcasts its
inputs to at least float32 (bf16 activations are common on accelerators) and returns a 0-d array.
An optional `valid` (N,) 0/1 vector drops padded images (added so a batch splits evenly over
devices): the loss is then exactly the loss of the valid images alone.

The Lovasz hinge follows Berman, Rannen Triki & Blaschko, "The Lovasz-Softmax loss" (CVPR 2018):
errors e = 1 - logits * (2y - 1) are sorted in decreasing order and dotted with the gradient of the
Lovasz extension of the Jaccard loss, evaluated on the labels in that order. The permutation is a
constant for differentiation (as in the published algorithm), so the gradient reaches the logits
through a gather of the errors, and the weights carry no gradient.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

LOVASZ_VARIANTS = ("elu+1", "relu")


def _compute_dtype(x: jax.Array) -> jnp.dtype:
    """float32 for bf16/f16/f32/int inputs; float64 stays float64 (tests run in x64)."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _flatten_images(x: jax.Array, name: str) -> jax.Array:
    """(N, H, W) or (N, H, W, 1) -> (N, H*W)."""
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] != 1):
        raise ValueError(f"{name} must be (N, H, W) or (N, H, W, 1), got shape {x.shape}")
    return x.reshape(x.shape[0], -1)


def _mean_over_images(per_image: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Mean of (N,) per-image values over the valid images (all images when valid is None)."""
    if valid is None:
        return jnp.mean(per_image)
    v = valid.astype(per_image.dtype)
    return jnp.sum(per_image * v) / jnp.sum(v)


def _lovasz_jaccard_weights(labels_sorted: jax.Array) -> jax.Array:
    """Gradient of the Lovasz extension of the Jaccard loss at labels sorted by decreasing error.

    labels_sorted: (N, P) in {0, 1}. Returns (N, P): w_i = J_i - J_{i-1} with
    J_i = 1 - (P - cumsum(y)_i) / (P + cumsum(1 - y)_i), P = number of positives.
    The union is never 0 (it counts at least one pixel), so an empty mask gives w = (1, 0, ..., 0).
    Counts are exact in float32 up to 2**24 pixels per row.
    """
    positives = labels_sorted.sum(axis=-1, keepdims=True)
    intersection = positives - jnp.cumsum(labels_sorted, axis=-1)
    union = positives + jnp.cumsum(1.0 - labels_sorted, axis=-1)
    jaccard = 1.0 - intersection / union
    return jnp.concatenate([jaccard[:, :1], jnp.diff(jaccard, axis=-1)], axis=-1)


def _lovasz_rows(logits: jax.Array, labels: jax.Array, variant: str) -> jax.Array:
    """Lovasz hinge of each row: logits, labels (R, P) -> (R,).

    All rows are sorted by one batched argsort (no Python loop over images).
    """
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    perm = jnp.argsort(lax.stop_gradient(errors), axis=-1, descending=True)
    errors_sorted = jnp.take_along_axis(errors, perm, axis=-1)
    weights = lax.stop_gradient(_lovasz_jaccard_weights(jnp.take_along_axis(labels, perm, axis=-1)))
    if variant == "relu":
        hinge = jax.nn.relu(errors_sorted)
    else:  # "elu+1": smooth and positive; correct pixels (e < 0) keep a small gradient exp(e)
        hinge = jax.nn.elu(errors_sorted) + 1.0
    return jnp.sum(hinge * weights, axis=-1)


def lovasz_hinge(
    logits: jax.Array,
    labels: jax.Array,
    *,
    per_image: bool = True,
    variant: str = "elu+1",
    symmetric: bool = False,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Binary Lovasz hinge loss (Berman et al. 2018).

    Args:
      logits: (N, H, W) or (N, H, W, 1) raw scores (any float dtype; computed in >= float32).
      labels: same shape, binary {0, 1}.
      per_image: True = Lovasz of each image, then the mean over images (empty masks included);
        False = one Lovasz over all pixels of the batch.
      variant: "elu+1" uses elu(e) + 1 on the errors (the original solution), "relu" the standard hinge.
      symmetric: average with the loss of the flipped problem, (L(x, y) + L(-x, 1 - y)) / 2.
      valid: (N,) 0/1, images to count (per_image only); None = all.

    Returns:
      0-d loss. For an empty mask the loss of that image is hinge(max error).
    """
    if variant not in LOVASZ_VARIANTS:
        raise ValueError(f"lovasz_hinge: variant must be one of {LOVASZ_VARIANTS}, got {variant!r}")
    if logits.shape != labels.shape:
        raise ValueError(f"lovasz_hinge: logits {logits.shape} and labels {labels.shape} differ in shape")
    dtype = _compute_dtype(logits)
    x = _flatten_images(logits, "logits").astype(dtype)
    y = _flatten_images(labels, "labels").astype(dtype)
    if not per_image:
        if valid is not None:
            raise ValueError("lovasz_hinge: valid needs per_image=True")
        x, y = x.reshape(1, -1), y.reshape(1, -1)
    loss = _mean_over_images(_lovasz_rows(x, y, variant), valid)
    if symmetric:
        loss = 0.5 * (loss + _mean_over_images(_lovasz_rows(-x, 1.0 - y, variant), valid))
    return loss


def _clamped_log(p: jax.Array) -> jax.Array:
    """max(log p, -100) with a finite gradient (0 where clamped) even at p == 0.

    A plain jnp.maximum(jnp.log(p), -100) has gradient 0 * inf = nan at p == 0, so the log only
    sees positive values (the double-where pattern).
    """
    positive = p > 0
    log_p = jnp.log(jnp.where(positive, p, 1.0))
    return jnp.where(positive, jnp.maximum(log_p, -100.0), -100.0)


def bce_prob(probs: jax.Array, targets: jax.Array, *, valid: jax.Array | None = None) -> jax.Array:
    """Mean binary cross-entropy of probabilities, logs clamped at -100 like torch's BCELoss.

    probs in [0, 1], targets in [0, 1], any matching shapes. Returns a 0-d mean (over the
    elements of the valid images: `valid` (N,) 0/1 on the leading axis). Saturated
    probabilities (exactly 0 or 1, common after a float32 sigmoid) give a finite loss (100 per
    element) and a zero gradient through the clamped term.
    """
    dtype = _compute_dtype(probs)
    p, y = probs.astype(dtype), targets.astype(dtype)
    elements = -(y * _clamped_log(p) + (1.0 - y) * _clamped_log(1.0 - p))
    if valid is None:
        return jnp.mean(elements)
    return _mean_over_images(jnp.mean(elements.reshape(elements.shape[0], -1), axis=-1), valid)


def soft_dice(probs: jax.Array, targets: jax.Array, *, double_sigmoid: bool = False,
              valid: jax.Array | None = None) -> jax.Array:
    """Batch-level soft dice loss with smoothing 1: 1 - (2 sum(p*y) + 1) / (sum p + sum y + 1).

    probs: probabilities (N, ...), targets: same shape. Sums run over the whole batch (the valid
    images of it: `valid` (N,) 0/1). double_sigmoid=True reproduces the original solution's quirk
    of applying a sigmoid to the (already sigmoided) probabilities inside its dice.
    """
    dtype = _compute_dtype(probs)
    p, y = probs.astype(dtype), targets.astype(dtype)
    if double_sigmoid:
        p = jax.nn.sigmoid(p)
    if valid is not None:
        v = valid.astype(dtype).reshape((-1,) + (1,) * (p.ndim - 1))
        p, y = p * v, y * v
    return 1.0 - (2.0 * jnp.sum(p * y) + 1.0) / (jnp.sum(p) + jnp.sum(y) + 1.0)


def seg_loss_bce_dice(
    mask_logits: jax.Array, masks: jax.Array, *, double_sigmoid: bool = False, valid: jax.Array | None = None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Warm-up segmentation loss: dice(sigmoid(logits)) + 0.2 * BCE(sigmoid(logits), mask).

    The BCE is on probabilities (clamped like torch's BCELoss), as in the original.
    Returns (loss, {"dice", "bce"}).
    """
    probs = jax.nn.sigmoid(mask_logits.astype(_compute_dtype(mask_logits)))
    dice = soft_dice(probs, masks, double_sigmoid=double_sigmoid, valid=valid)
    bce = bce_prob(probs, masks, valid=valid)
    return dice + 0.2 * bce, {"dice": dice, "bce": bce}


def multi_loss(
    mask_logits: jax.Array,
    salt_prob: jax.Array,
    masks: jax.Array,
    *,
    use_lovasz: jax.Array | bool,
    symmetric: bool = False,
    double_sigmoid: bool = False,
    valid: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The original's gated loss: 0.1 * BCE(salt_prob, any salt) + seg.

    seg = dice + 0.2 * BCE on sigmoid(mask_logits) while use_lovasz is false, else the per-image
    Lovasz hinge. The branch is chosen with lax.cond on a traced value, so one jitted step serves
    every epoch; `LossOptions.use_lovasz` decides the switch.

    Args:
      mask_logits: (N, 128, 128, 1) logits.
      salt_prob: (N, 1) salt probability (already sigmoided) from the classifier head.
      masks: (N, 128, 128, 1) float {0, 1} (padded, augmented).
      use_lovasz: bool or 0-d bool array (may be traced).
      symmetric: passed to lovasz_hinge (the original's "elu+1" hinge, per image).
      double_sigmoid: passed to soft_dice.
      valid: (N,) 0/1, the images to count (padding = 0); None = all.

    Returns:
      (loss, aux) with aux = {"loss", "bce_cls", "seg", "dice", "bce", "lovasz", "use_lovasz"}; the
      components of the branch not taken are 0 (it is not computed).
    """
    n = masks.shape[0]
    has_salt = jnp.any(masks.reshape(n, -1) > 0.5, axis=-1)
    bce_cls = bce_prob(salt_prob.reshape(n), has_salt, valid=valid)
    dtype = _compute_dtype(mask_logits)
    mask_logits, masks = mask_logits.astype(dtype), masks.astype(dtype)
    zero = jnp.zeros((), dtype)

    def warmup_branch(logits: jax.Array, target: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        seg, parts = seg_loss_bce_dice(logits, target, double_sigmoid=double_sigmoid, valid=valid)
        return seg, {**parts, "lovasz": zero}

    def lovasz_branch(logits: jax.Array, target: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        lovasz = lovasz_hinge(logits, target, per_image=True, symmetric=symmetric, valid=valid)
        return lovasz, {"dice": zero, "bce": zero, "lovasz": lovasz}

    use_lovasz = jnp.asarray(use_lovasz, dtype=bool)
    seg, parts = lax.cond(use_lovasz, lovasz_branch, warmup_branch, mask_logits, masks)
    loss = 0.1 * bce_cls.astype(dtype) + seg
    aux = {"loss": loss, "bce_cls": bce_cls, "seg": seg, **parts, "use_lovasz": use_lovasz}
    return loss, aux


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """The training loss of a run: when it switches, and the Lovasz and dice forms.

    switch_epoch: first Lovasz epoch (the original: 20); symmetric: the symmetric Lovasz hinge;
    double_sigmoid: the original's dice (sigmoid applied twice, `--original_dice`; see soft_dice).
    """

    switch_epoch: int
    symmetric: bool = False
    double_sigmoid: bool = False

    def use_lovasz(self, epoch):
        """The one place the loss switch is decided: Lovasz from `switch_epoch` on, BCE+dice before.

        `epoch` is an int (the training loop: the round's name, the optimizer reset) or a traced
        int array (the jitted steps: a 0-d bool array, so the switch never recompiles).
        """
        return epoch >= self.switch_epoch

    def __call__(self, mask_logits, salt_prob, masks, *, epoch, valid=None):
        """multi_loss with these options and the loss kind of `epoch`."""
        return multi_loss(mask_logits, salt_prob, masks, use_lovasz=self.use_lovasz(epoch),
                          symmetric=self.symmetric, double_sigmoid=self.double_sigmoid, valid=valid)
