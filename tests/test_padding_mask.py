"""Padding a batch for sharding and masking it out changes nothing: the loss, BatchNorm's batch
and running statistics and the parameter update equal those of the unpadded batch.

Epochs keep the last partial batch (as the original's DataLoader); on several devices a batch is
padded to a multiple of the device count and `valid` masks the padding (salt_jax/data/fold_data.py).
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

from salt_jax.losses import multi_loss
from salt_jax.models.layers import BatchNorm, example_weights
from salt_jax.data.fold_data import epoch_batches

pytestmark = pytest.mark.timeout(600)
REPO = pathlib.Path(__file__).resolve().parents[1]


def test_epoch_batches_keep_the_partial_batch_and_pad_for_devices():
    one = epoch_batches(23, 10, seed=1, epoch=2)
    assert [len(i) for i, _ in one] == [10, 10, 3] and all(v.all() for _, v in one)
    assert sorted(np.concatenate([i for i, _ in one]).tolist()) == list(range(23))  # each image once
    four = epoch_batches(23, 10, seed=1, epoch=2, n_devices=4)
    assert [len(i) for i, _ in four] == [12, 12, 4]
    assert [int(v.sum()) for _, v in four] == [10, 10, 3]
    for (i1, _), (i4, v4) in zip(one, four):  # the same images in the same order, padding after
        np.testing.assert_array_equal(i4[v4], i1)
        assert not v4[len(i1):].any()


def _batch(n, seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, 16, 16, 1)).astype(np.float32)
    masks = (rng.random((n, 16, 16, 1)) < rng.random((n, 1, 1, 1))).astype(np.float32)
    masks[1] = 0  # an empty mask among the valid images
    prob = rng.random((n, 1)).astype(np.float32)
    return logits, prob, masks


@pytest.mark.parametrize("lovasz", [False, True])
@pytest.mark.parametrize("options", [{}, {"double_sigmoid": True}, {"symmetric": True}])
def test_masked_loss_equals_the_loss_of_the_valid_images(lovasz, options):
    logits, prob, masks = _batch(5, seed=3)
    valid = np.array([1, 1, 1, 0, 0], bool)  # rows 3, 4: padding with arbitrary content
    expected, _ = multi_loss(logits[:3], prob[:3], masks[:3], use_lovasz=lovasz, **options)
    got, _ = multi_loss(logits, prob, masks, use_lovasz=lovasz, valid=valid, **options)
    unmasked, _ = multi_loss(logits, prob, masks, use_lovasz=lovasz, **options)
    # float32 sums over ~800 terms in another order: ~1e-7 relative.
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert abs(float(unmasked) - float(expected)) > 1e-3  # the padding would have mattered


def test_masked_batchnorm_equals_torch_on_the_valid_examples():
    """torch's BatchNorm2d (train mode) on the 3 valid examples is the reference: output rows,
    running mean and the unbiased running variance."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (5, 6, 7, 4)).astype(np.float32)
    x[3:] = rng.normal(50.0, 20.0, (2, 6, 7, 4))  # padding far from the data
    valid = jnp.asarray([1, 1, 1, 0, 0], bool)

    ref = torch.nn.BatchNorm2d(4, momentum=0.1, eps=1e-5)
    ref.train()
    out_ref = ref(torch.from_numpy(x[:3]).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()

    bn = BatchNorm(4)
    with example_weights(valid):
        out = bn(jnp.asarray(x))
    # float32 moments of 126 values per channel: agreement to ~1e-6.
    np.testing.assert_allclose(np.asarray(out)[:3], out_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], ref.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var[...], ref.running_var.numpy(), rtol=1e-5, atol=1e-6)


STEP_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np
    from flax import nnx
    from jax.sharding import AxisType
    from salt_jax.models.initialize import init_module
    from salt_jax.models.unet import SaltUNet
    from salt_jax.losses import LossOptions
    from salt_jax.training.steps import Trainer, make_optimizer, replicate, shard_batch

    assert jax.device_count() == 2, jax.devices()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 128, 128), dtype=np.uint8)
    masks = np.zeros((6, 128, 128), np.uint8)
    masks[:, 40:90, 30:100] = 1
    masks[2] = 0
    model = init_module(lambda rngs: SaltUNet("tiny", rngs=rngs), 0)
    start = np.concatenate([np.ravel(x) for x in jax.tree.leaves(nnx.split(model, nnx.Param, ...)[1])])
    flat = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(tree))])

    def make_trainer(devices):
        mesh = jax.make_mesh((len(devices),), ("data",), devices=devices, axis_types=(AxisType.Auto,))
        # SGD: the update is linear in the gradient, so it compares gradients (Adam's first step
        # is ~lr * sign(g) and turns reduction-order noise on tiny gradients into 2 * lr).
        return Trainer(model, make_optimizer("cosine", 1e-4, 0.1), mesh, seed=0, loss=LossOptions(1))

    def one_step(trainer, idx, valid, epoch):
        put = lambda a: replicate(a, trainer.replicated)
        state, out = trainer.train_step(trainer.init_state(), put(images), put(masks),
                                      shard_batch(np.asarray(idx, np.int32), trainer.batch_sharded),
                                      shard_batch(np.asarray(valid, bool), trainer.batch_sharded),
                                      put(np.asarray(epoch, np.int32)))
        jax.block_until_ready(state)  # fake CPU devices: wait for every step (collectives)
        return {"loss": np.asarray(out["loss"]), "update": flat(state["params"]) - start, "stats": flat(state["batch_stats"])}

    one, two = make_trainer(jax.devices()[:1]), make_trainer(jax.devices())
    saved = {}
    for epoch in (0, 1):  # 0: BCE + dice, 1: Lovasz (LossOptions(1))
        runs = {"plain": one_step(one, [4, 0, 2], [True] * 3, epoch),
                "padded_one": one_step(one, [4, 0, 2, 0], [True, True, True, False], epoch),
                "padded_two": one_step(two, [4, 0, 2, 0], [True, True, True, False], epoch),
                "unmasked_two": one_step(two, [4, 0, 2, 0], [True] * 4, epoch)}
        saved.update({f"{run}/{epoch}/{k}": v for run, out in runs.items() for k, v in out.items()})
    np.savez(sys.argv[1], **saved)
""")


@pytest.mark.slow
def test_padded_batch_equals_the_unpadded_batch_on_one_and_two_devices(tmp_path):
    """A batch of 3 padded to 4 (one masked example) takes the step the 3 images take alone, on
    one device and sharded over 2 fake CPU devices (sync BN over the mesh): loss, parameter
    update and BatchNorm running statistics, in both loss rounds."""
    out = tmp_path / "steps.npz"
    cache = {k: v for k, v in os.environ.items() if k.startswith("JAX_PERSISTENT") or k == "JAX_COMPILATION_CACHE_DIR"}
    env = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", **cache}
    subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(out)], cwd=REPO, env=env, check=True, timeout=560)
    saved = np.load(out)

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    for epoch in (0, 1):
        plain = {k: saved[f"plain/{epoch}/{k}"] for k in ("loss", "update", "stats")}
        # Tolerances (measured, relative L2): on one device the padded BCE+dice update matches to
        # 2e-6 under jax 0.10.2 and to 1.0e-3 under jax 0.11.2 (float32 sums in another order,
        # amplified by train-mode BatchNorm on 3 images; the loss still agrees to 1e-5 and the
        # statistics to 1e-8), the Lovasz one to 1e-3, as its gradient jumps where sorted errors
        # tie, so 1e-7 noise in a logit can swap two pixels' Jaccard weights; across 2 devices 1e-3
        # (reduction order; the same without padding). Running statistics: 1e-8. Counting the
        # padding instead changes the update by ~100% and the statistics by 1.4e-3 (7% in the
        # worst layer): bounds of 1e-2 (update) and 1e-6 (statistics) keep the two apart by two
        # orders of magnitude or more.
        for run in ("padded_one", "padded_two"):
            got = {k: saved[f"{run}/{epoch}/{k}"] for k in ("loss", "update", "stats")}
            np.testing.assert_allclose(got["loss"], plain["loss"], rtol=1e-5, err_msg=run)
            update, stats = rel(got["update"], plain["update"]), rel(got["stats"], plain["stats"])
            print(f"{run} round {epoch}: update {update:.2e} stats {stats:.2e}")
            assert update < 1e-2 and stats < 1e-6, (run, epoch, update, stats)
        unmasked = {k: saved[f"unmasked_two/{epoch}/{k}"] for k in ("update", "stats")}
        update, stats = rel(unmasked["update"], plain["update"]), rel(unmasked["stats"], plain["stats"])
        print(f"unmasked round {epoch}: update {update:.2e} stats {stats:.2e}")
        assert update > 0.1 and stats > 1e-4, (epoch, update, stats)  # the padding would have mattered
