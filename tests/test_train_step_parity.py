"""Train-step parity: salt_jax's real training step against the original's, written in PyTorch here.

From identical weights (our PyTorch build of the original UNet, convert/torch_unet.py, converted
with convert.torch_to_flax), both sides train on one fixed batch with augmentation off:
`STEPS_PER_ROUND` Adam steps with BCE+dice, then a fresh Adam at the same lr and as many steps
with the Lovasz hinge. The PyTorch side is the original's training step
(torch_training/main_albunet_gated.py and torch_loss/losses.py of
terkelbo/TGS-Salt-Kaggle-Competition, written anew below): its loss lambdas with the 0.1
classifier weight, its dice that applies a sigmoid to probabilities (hence salt_jax's
`double_sigmoid` here, to compare like with like), torch.optim.Adam(weight_decay=1e-4), BatchNorm
in train mode. The JAX side is salt_jax.training.steps.Trainer with make_optimizer, as train.py
builds it; nothing of it is re-implemented here.
"""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from tests.torch_reference import require_torch_reference

torch, reference = require_torch_reference()  # every test here needs torch (and Cadene's senet.py)
F = torch.nn.functional

from convert.torch_to_flax import convert_state  # noqa: E402
from convert.torch_unet import TorchSaltUNet  # noqa: E402
from salt_jax.mesh import data_mesh  # noqa: E402
from salt_jax.losses import LossOptions  # noqa: E402
from salt_jax.training.steps import Trainer, make_optimizer, replicate, shard_batch  # noqa: E402

pytestmark = pytest.mark.timeout(600)

LR = 1e-4  # the original's
WEIGHT_DECAY = 1e-4
STEPS_PER_ROUND = 3
SWITCH_EPOCH = 1  # the JAX step picks the loss from the epoch: 0 -> BCE+dice, 1 -> Lovasz


# ---------------------------------------------------------------------------------------- PyTorch side


def original_dice(probs, target):
    """The original's dice_loss: it is handed sigmoid(logits) and applies the sigmoid once more."""
    p = torch.sigmoid(probs).reshape(-1)
    t = target.reshape(-1)
    return 1 - (2.0 * (p * t).sum() + 1.0) / (p.sum() + t.sum() + 1.0)


def original_lovasz(logits, labels):
    """The original's lovasz_hinge(per_image=True): Berman's algorithm with elu(e) + 1 as the hinge."""
    losses = []
    for lg, lb in zip(logits, labels):
        lg, lb = lg.reshape(-1), lb.reshape(-1)
        errors = 1.0 - lg * (2.0 * lb - 1.0)
        errors_sorted, perm = torch.sort(errors, descending=True)
        gt = lb[perm]
        intersection = gt.sum() - gt.cumsum(0)
        union = gt.sum() + (1.0 - gt).cumsum(0)
        jaccard = 1.0 - intersection / union
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
        losses.append(torch.dot(F.elu(errors_sorted) + 1.0, grad))
    return torch.stack(losses).mean()


def original_round(model, images, masks, *, lovasz: bool, steps: int) -> list[float]:
    """One training round of the original: a fresh Adam, `steps` steps on the same batch."""
    bce = torch.nn.BCELoss()

    def seg_loss(pred, target):
        if lovasz:
            return original_lovasz(pred, target)
        return original_dice(torch.sigmoid(pred), target) + 0.2 * bce(torch.sigmoid(pred), target)

    def class_loss(pred, target):
        return 0.1 * bce(pred, target)

    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    target = (masks.reshape(len(masks), -1).amax(dim=1) > 0.5).float()  # any salt in the image
    model.train(True)
    losses = []
    for _ in range(steps):
        y_pred, classification = model(images)
        loss = class_loss(classification.view(len(images), -1), target.view(len(images), -1)) + seg_loss(y_pred, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------- the batch


def fixed_batch() -> tuple[np.ndarray, np.ndarray]:
    """4 uint8 128x128 images and 0/1 masks: one empty (classifier target 0), three with salt."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 128, 128), dtype=np.uint8)
    rows, cols = np.mgrid[:128, :128]
    masks = np.stack([
        np.zeros((128, 128), bool),
        (rows - 60) ** 2 + (cols - 70) ** 2 < 30**2,  # a disk
        rows > 80 + 10 * np.sin(cols / 9),  # salt below a wavy top
        (np.abs(rows - 30) < 4) & (np.abs(cols - 90) < 6),  # a small body
    ]).astype(np.uint8)
    return images, masks


def flat(module) -> dict[tuple, np.ndarray]:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(module))}


# ---------------------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    t_model = TorchSaltUNet("tiny")
    reference.randomize_batchnorm(t_model, seed=1)  # non-default statistics: their update is checked
    start = {k: v.numpy().copy() for k, v in t_model.state_dict().items()}

    images_u8, masks_u8 = fixed_batch()
    # The JAX step's input pipeline: uint8 / 255 as float32, the gray channel repeated 3 times.
    x = torch.from_numpy(np.repeat((images_u8.astype(np.float32) / 255.0)[:, None], 3, axis=1))
    y = torch.from_numpy(masks_u8.astype(np.float32)[:, None])
    torch_losses = original_round(t_model, x, y, lovasz=False, steps=STEPS_PER_ROUND)
    torch_losses += original_round(t_model, x, y, lovasz=True, steps=STEPS_PER_ROUND)
    t_end = {k: v.numpy().copy() for k, v in t_model.state_dict().items()}

    trainer = Trainer(convert_state("unet_tiny", start), make_optimizer("original", WEIGHT_DECAY, LR), data_mesh(),
                      seed=0, loss=LossOptions(SWITCH_EPOCH, double_sigmoid=True), augment=False)
    state = trainer.init_state()
    arrays = [replicate(a, trainer.replicated) for a in (images_u8, masks_u8)]
    idx = shard_batch(np.arange(len(images_u8), dtype=np.int32), trainer.batch_sharded)
    valid = shard_batch(np.ones(len(images_u8), bool), trainer.batch_sharded)  # no padding: all real
    jax_losses = []
    for epoch in (0, SWITCH_EPOCH):
        if epoch == SWITCH_EPOCH:  # the loop's loss switch: fresh moments, same lr
            state = trainer.set_lr(trainer.reset_optimizer(state), LR)
        for _ in range(STEPS_PER_ROUND):
            state, out = trainer.train_step(state, *arrays, idx, valid, replicate(np.int32(epoch), trainer.replicated))
            jax_losses.append(float(out["loss"]))
    return {
        "torch_losses": torch_losses, "jax_losses": jax_losses,
        "start": flat(convert_state("unet_tiny", start)),
        "torch": flat(convert_state("unet_tiny", t_end)),
        "jax": flat(trainer.model(state)),
        "param_paths": {p for p, _ in nnx.to_flat_state(nnx.state(trainer.model(state), nnx.Param))},
    }


def test_losses_match_every_step(trained):
    t, j = np.array(trained["torch_losses"]), np.array(trained["jax_losses"])
    rel = np.abs(j - t) / np.abs(t)
    # Measured: <= 6e-7 (float32 noise; the first step of each round from identical weights).
    assert rel.max() <= 1e-4, rel
    assert t[STEPS_PER_ROUND] > t[STEPS_PER_ROUND - 1]  # the Lovasz round did start


def test_parameters_and_batchnorm_statistics_match(trained):
    """Tolerances, from float32 noise measured here (tiny UNet, 2 x 3 steps at lr 1e-4, 2-core CPU).

    Parameters: Adam's steps are about lr * sign(gradient) whatever the gradient's size, so
    elements whose gradient is at float32 noise level (reduction order differs between the
    frameworks) step by +-lr on either side at random. Compared as the relative L2 distance of the
    two parameter changes over the whole model: measured 0.015, tolerance 0.03. Wrong optimizers
    measured on the same batch: Adam b2=0.99 0.053, eps=1e-6 0.13, decoupled (AdamW) or no weight
    decay 0.33, the single-sigmoid dice 0.42 (the decay ones change the losses by only 7e-5).
    Per element, two trajectories stepping at most ~lr can drift at most 2 lr a step apart.
    BatchNorm running statistics follow from activations of those weights: measured max 3.4e-4 of
    the statistic's largest magnitude, tolerance 1e-3 (and they did move by far more than that).
    """
    start, t_end, j_end = trained["start"], trained["torch"], trained["jax"]
    assert t_end.keys() == j_end.keys()
    params = sorted(p for p in t_end if p in trained["param_paths"])
    stats = sorted(p for p in t_end if p not in trained["param_paths"])
    assert params and stats

    t_delta = np.concatenate([(t_end[p] - start[p]).ravel() for p in params])
    j_delta = np.concatenate([(j_end[p] - start[p]).ravel() for p in params])
    rel = np.linalg.norm(j_delta - t_delta) / np.linalg.norm(t_delta)
    assert rel <= 0.03, rel
    assert np.abs(j_delta - t_delta).max() <= 2 * LR * 2 * STEPS_PER_ROUND

    for p in stats:
        scale = np.abs(t_end[p]).max()
        assert np.abs(j_end[p] - t_end[p]).max() <= 1e-3 * scale, p
        assert np.abs(t_end[p] - start[p]).max() > 1e-2 * scale, p  # the update is not vacuous
