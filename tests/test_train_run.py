"""End-to-end tiny training runs on CPU: outputs, the loss switch, resume exactness, refusals.

One 40-image synthetic dataset (fold 0: 32 train, 8 validation), the tiny encoder, batch 8
(4 steps an epoch). The suite's persistent compilation cache (conftest.py, inherited by the
subprocess) keeps the repeated runs from recompiling the same step.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from salt_jax.data.synthetic import generate
from salt_jax.training import IncompatibleRunError, NonFiniteLossError, TrainConfig, run
from salt_jax.training.checkpoint import Checkpoints

pytestmark = pytest.mark.timeout(900)
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "tgs", n_train=40, n_test=2, seed=3)


def tiny(data_dir, workdir, **kw) -> TrainConfig:
    base = dict(encoder="tiny", data_dir=str(data_dir), workdir=str(workdir), epochs=3, switch_epoch=1,
                batch_size=8, lr=1e-3, dtype="float32", progress=False)
    return TrainConfig(**{**base, **kw})


def params_of(result) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(result.state["params"])]


@pytest.fixture(scope="module")
def fresh3(data_dir, tmp_path_factory):
    """An uninterrupted 3-epoch run (switch at epoch 1)."""
    return run(tiny(data_dir, tmp_path_factory.mktemp("fresh3") / "w"))


def test_run_writes_outputs_and_switches_loss_without_recompiling(fresh3):
    workdir = fresh3.workdir
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for key in ("train_loss", "val_loss", "val_map", "lr", "seconds", "images_per_s"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert [r["round"] for r in records] == ["bce_dice", "lovasz", "lovasz"]
    assert [r["step"] for r in records] == [4, 8, 12]
    # The Lovasz hinge (elu+1) is >= 1 per image in expectation at random init; dice+BCE stays < 1.3.
    assert records[0]["train_loss"] < records[1]["train_loss"]
    # One compilation each, across the loss switch, the lr writes and the optimizer reset.
    assert fresh3.compiles == {"train_step": 1, "eval_step": 1}
    for name in ("config.json", "folds.csv", "curves.png", "predictions.png", "best/metadata.json"):
        assert (workdir / name).is_file(), name
    from salt_jax.models import io

    best = io.read_metadata(workdir)
    assert best["arch"] == "unet_tiny"
    assert best["val_map"] == max(r["val_map"] for r in records)


def test_predict_eval_reproduces_the_best_val_map(fresh3, data_dir, capsys):
    """`predict --eval --tta=none` on a run scores its validation fold with its best model: the
    same number the training loop recorded (same crop, threshold and metric)."""
    from salt_jax import predict

    assert predict.main(["--runs", str(fresh3.workdir), "--data_dir", str(data_dir), "--eval", "--tta=none",
                         "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "8 train images of validation fold 0" in printed
    score = float(printed.split("ensemble kaggle_map ")[1].split()[0])
    assert abs(score - fresh3.best_val_map) < 1e-6, printed


def test_resume_continues_exactly(fresh3, data_dir, tmp_path):
    workdir = tmp_path / "w"
    run(tiny(data_dir, workdir, epochs=2))
    # A checkpoint a killed process left half-written must be ignored by the resume.
    (workdir / "checkpoints" / "3.orbax-checkpoint-tmp-1700000000").mkdir()
    resumed = run(tiny(data_dir, workdir, epochs=3))
    assert [r["epoch"] for r in resumed.records] == [0, 1, 2]
    for a, b in zip(params_of(resumed), params_of(fresh3)):
        np.testing.assert_array_equal(a, b)
    assert Checkpoints(workdir / "checkpoints").latest_step() == 3
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2]


def test_refuses_a_workdir_of_another_experiment(fresh3, data_dir):
    with pytest.raises(IncompatibleRunError, match="fold"):
        run(tiny(data_dir, fresh3.workdir, fold=1))


def test_non_finite_loss_stops_and_saves_nothing(data_dir, tmp_path):
    # lr 1e30 sends the weights to ~1e30 after the first step; the activations then overflow.
    with pytest.raises(NonFiniteLossError, match=r"global step \d+") as err:
        run(tiny(data_dir, tmp_path / "w", epochs=1, lr=1e30))
    assert "global step 0" not in str(err.value)  # the first loss is computed before any update
    assert Checkpoints(tmp_path / "w" / "checkpoints").latest_step() is None


PARALLEL_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax
    from salt_jax.training import TrainConfig, run
    data_dir, workdir, out, distributed = sys.argv[1:5]
    cfg = TrainConfig(encoder="tiny", data_dir=data_dir, workdir=workdir, epochs=1, switch_epoch=1,
                      batch_size=8, lr=1e-3, dtype="float32", progress=False, recipe="cosine",
                      distributed=distributed == "1")
    result = run(cfg)
    assert len(jax.devices()) == 2, jax.devices()
    if jax.process_index() == 0:
        np.savez(out, *[np.asarray(x) for x in jax.tree.leaves(result.state["params"])])
""")


def _env(tmp_path, **extra) -> dict:
    cache = {k: v for k, v in os.environ.items() if k.startswith("JAX_PERSISTENT") or k == "JAX_COMPILATION_CACHE_DIR"}
    return {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **cache, **extra}


@pytest.fixture(scope="module")
def one_device_params(data_dir, tmp_path_factory):
    """The reference: the same global batches on this process's single CPU device.

    SGD (the cosine recipe, lr constant at 1e-3 here) keeps the comparisons tight: Adam's first
    steps are ~lr * sign(grad), which turns reduction-order noise on near-zero gradients into
    differences of up to 2 * lr per step (measured 6e-3 after 4 steps), proving nothing.
    """
    return params_of(run(tiny(data_dir, tmp_path_factory.mktemp("one") / "w", epochs=1, recipe="cosine")))


def _assert_same_params(one, out):
    two = np.load(out)
    assert len(one) == len(two.files)
    for i, a in enumerate(one):
        np.testing.assert_allclose(a, two[f"arr_{i}"], rtol=1e-4, atol=1e-5, err_msg=f"leaf {i}")


@pytest.mark.slow
def test_two_devices_match_one_device(data_dir, tmp_path, one_device_params):
    """The same global batch on 2 (fake CPU) devices and on 1 gives the same parameters (sync BN)."""
    out = tmp_path / "params2.npz"
    env = _env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    subprocess.run([sys.executable, "-c", PARALLEL_SCRIPT, str(data_dir), str(tmp_path / "w2"), str(out), "0"],
                   cwd=REPO, env=env, check=True, timeout=800)
    _assert_same_params(one_device_params, out)


@pytest.mark.slow
def test_two_processes_match_one_device(data_dir, tmp_path, one_device_params):
    """Multi-host data parallelism on one machine: 2 processes (1 CPU device each, gloo
    collectives) joined by jax.distributed, each feeding its half of every global batch."""
    with socket.socket() as s:  # a free port for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "params2.npz"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PARALLEL_SCRIPT, str(data_dir), str(tmp_path / "w2"), str(out), "1"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=_env(tmp_path, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                     JAX_PROCESS_ID=str(rank)))
        for rank in range(2)
    ]
    try:
        logs = [p.communicate(timeout=800)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    _assert_same_params(one_device_params, out)


def test_pretrained_encoder_initialises_the_unet(tmp_path):
    """`--pretrained DIR` (a converted ImageNet SENet) fills the UNet's encoder as the original:
    stages copied whole, stem kernel and BN affine copied, stem BN statistics fresh."""
    from salt_jax.models import io
    from salt_jax.training.loop import _build_model

    senet = io.build("se_resnext_tiny", seed=7)
    senet.layer0.bn1.mean[...] = senet.layer0.bn1.mean[...] + 0.5  # must NOT reach the UNet
    io.save(tmp_path / "imagenet", senet, arch="se_resnext_tiny")
    unet = _build_model(tiny(tmp_path, tmp_path / "w", pretrained=str(tmp_path / "imagenet")))

    flat = lambda m: {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(m))}  # noqa: E731
    src, dst = flat(senet.layer3), flat(unet.encoder.layer3)
    assert src.keys() == dst.keys()
    for path in src:
        np.testing.assert_array_equal(src[path], dst[path])
    np.testing.assert_array_equal(senet.layer0.conv1.kernel[...], unet.encoder.layer0.conv1.kernel[...])
    np.testing.assert_array_equal(senet.layer0.bn1.scale[...], unet.encoder.layer0.bn1.scale[...])
    np.testing.assert_array_equal(unet.encoder.layer0.bn1.mean[...], 0.0)

    other = tmp_path / "other"  # another encoder's checkpoint: refused from its metadata alone
    (other / "state").mkdir(parents=True)  # no weights at all: they must never be read
    (other / "metadata.json").write_text('{"arch": "se_resnext50_32x4d"}')
    with pytest.raises(ValueError, match="holds 'se_resnext50_32x4d', but --encoder is 'tiny'"):
        _build_model(tiny(tmp_path, tmp_path / "w2", pretrained=str(other)))


def test_all_empty_baseline_is_the_share_of_empty_masks_on_the_crop():
    """Hand-worked: predicting no salt scores 1 on an empty 101x101 mask and 0 on any other."""
    from salt_jax.training.loop import RunResult, all_empty_map

    masks = np.zeros((4, 128, 128), np.uint8)  # padded 101 -> 128, the crop is [13:114]
    masks[1, 60, 60] = 1  # one salt pixel: not empty
    masks[2, :13, :] = 1  # salt only in the reflect padding: empty once cropped
    masks[3, 13:114, 13:114] = 1  # all salt
    assert all_empty_map(masks) == 0.5  # images 0 and 2
    result = RunResult(pathlib.Path("w"), [], best_val_map=0.71234, state=None, compiles={}, empty_val_map=0.5)
    assert result.summary() == "best val_map 0.7123 (predicting no salt: 0.5000)"
