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
    for key in ("train_loss", "val_loss", "val_map", "lr", "seconds", "images_per_s", "val_seconds", "epoch_seconds"):
        assert all(np.isfinite(r[key]) for r in records), key
    # The epoch's wall time holds its training and its validation, each timed on its own.
    assert all(r["epoch_seconds"] >= r["seconds"] + r["val_seconds"] > r["seconds"] > 0 for r in records)
    assert [r["round"] for r in records] == ["bce_dice", "lovasz", "lovasz"]
    assert [r["step"] for r in records] == [4, 8, 12]
    # The Lovasz hinge (elu+1) is >= 1 per image in expectation at random init; dice+BCE stays < 1.3.
    assert records[0]["train_loss"] < records[1]["train_loss"]
    # One compilation each, across the loss switch, the lr writes and the optimizer reset.
    assert fresh3.compiles == {"train_step": 1, "eval_step": 1}
    for name in ("config.json", "folds.csv", "curves.png", "predictions.png", "best/metadata.json"):
        assert (workdir / name).is_file(), name
    from salt_jax.models import store

    best = store.read_metadata(workdir / "best")
    assert best["arch"] == "unet_tiny"
    assert best["val_map"] == max(r["val_map"] for r in records)


def test_predict_eval_reproduces_the_best_val_map(fresh3, data_dir, capsys):
    """`predict --eval --tta=none` on a run scores its validation fold with its best model: the
    same number the training loop recorded, as predict's docstring promises. Both take the crop
    and scaling from data.geometry; what this checks is predict's choice of images (the run's
    folds.csv and fold) and model (best/), and that its p > 0.5 with numpy's metric equals the
    eval step's logits > 0 with the jitted metric."""
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


def test_damaged_latest_checkpoint_resumes_from_the_intact_one(fresh3, data_dir, tmp_path, capsys):
    """64 bytes overwritten in the latest checkpoint's largest data file (which once loaded, then
    turned the loss NaN): reported in one line, the run redoes the last epoch from the previous
    checkpoint and ends exactly where an undamaged run ends."""
    import shutil

    workdir = tmp_path / "w"
    shutil.copytree(fresh3.workdir, workdir)
    data = max((workdir / "checkpoints" / "3" / "state").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
    data.write_bytes(bytes(raw))
    capsys.readouterr()
    resumed = run(tiny(data_dir, workdir, epochs=3))
    out = capsys.readouterr().out
    assert f"damaged checkpoint {workdir / 'checkpoints' / '3'}: " in out
    assert f"resumed {workdir} at epoch 2" in out
    for a, b in zip(params_of(resumed), params_of(fresh3)):
        np.testing.assert_array_equal(a, b)


def test_refuses_a_workdir_of_another_experiment(fresh3, data_dir):
    with pytest.raises(IncompatibleRunError, match="fold"):
        run(tiny(data_dir, fresh3.workdir, fold=1))


def test_non_finite_loss_stops_and_saves_nothing(data_dir, tmp_path):
    # lr 1e30 sends the weights to ~1e30 after the first step; the activations then overflow.
    with pytest.raises(NonFiniteLossError, match=r"global step \d+") as err:
        run(tiny(data_dir, tmp_path / "w", epochs=1, lr=1e30))
    assert "global step 0" not in str(err.value)  # the first loss is computed before any update
    assert "good" not in str(err.value)  # nothing vouches for checkpoints it did not verify
    assert Checkpoints(tmp_path / "w" / "checkpoints").latest_step() is None


PARALLEL_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax
    from salt_jax.training import TrainConfig, run
    data_dir, workdir, out, distributed = sys.argv[1:5]
    cfg = TrainConfig(encoder="tiny", data_dir=data_dir, workdir=workdir, epochs=1, switch_epoch=1,
                      batch_size=8, lr=1e-3, min_lr=1e-3, dtype="float32", progress=False, recipe="cosine",
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

    SGD (the cosine recipe, lr constant at 1e-3 here: min_lr = lr) keeps the comparisons tight: Adam's first
    steps are ~lr * sign(grad), which turns reduction-order noise on near-zero gradients into
    differences of up to 2 * lr per step (measured 6e-3 after 4 steps), proving nothing.
    """
    return params_of(run(tiny(data_dir, tmp_path_factory.mktemp("one") / "w", epochs=1, recipe="cosine",
                                min_lr=1e-3)))


def _initial_params() -> list[np.ndarray]:
    """The parameters every run here starts from: training's init_module build of seed 0."""
    from salt_jax.models.initialize import init_module
    from salt_jax.models.unet import SaltUNet

    model = init_module(lambda rngs: SaltUNet("tiny", rngs=rngs), 0)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.split(model, nnx.Param, ...)[1])]


def _assert_same_params(one, out):
    """The parameter updates (final - initial) of the 4 steps agree to 5e-2 in relative L2.

    float32 gradients of this net differ by ~1e-3 (relative L2) between 1 and 2 devices from the
    reduction order alone, and the differences add up over steps: measured 1.1e-3, 2.6e-3,
    4.0e-3, 5.0e-3 after steps 1..4 on random images, 2.0e-2 after the 4 steps here (updates of
    ~2e-5 per parameter, so elementwise tolerances sit at the edge of the noise). A wrong
    sharding or BN statistics over part of the batch change the whole update (~100% for
    unmasked padding, tests/test_padding_mask.py).
    """
    two = np.load(out)
    start = _initial_params()
    assert len(one) == len(two.files) == len(start)
    mine = np.concatenate([(a - s).ravel() for a, s in zip(one, start)])
    theirs = np.concatenate([(two[f"arr_{i}"] - s).ravel() for i, s in enumerate(start)])
    relative = np.linalg.norm(theirs - mine) / np.linalg.norm(mine)
    assert relative < 5e-2, relative


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
    from salt_jax.models import archs, store
    from salt_jax.errors import UserError
    from salt_jax.training.loop import _build_model, _load_pretrained

    senet = archs.build("se_resnext_tiny", seed=7)
    senet.layer0.bn1.mean[...] = senet.layer0.bn1.mean[...] + 0.5  # must NOT reach the UNet
    store.save(tmp_path / "imagenet", senet, arch="se_resnext_tiny")
    cfg = tiny(tmp_path, tmp_path / "w", pretrained=str(tmp_path / "imagenet"))
    unet = _build_model(cfg, _load_pretrained(cfg))

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
    with pytest.raises(UserError, match="holds 'se_resnext50_32x4d', but --encoder is 'tiny'"):
        _load_pretrained(tiny(tmp_path, tmp_path / "w2", pretrained=str(other)))


# ---------------------------------------------------------------------------- bad input to train.py


def _saved_tiny_senet(path: pathlib.Path) -> pathlib.Path:
    from salt_jax.models import archs, store

    return store.save(path, archs.build("se_resnext_tiny", seed=1), arch="se_resnext_tiny")


def _truncate_largest_data_file(model_dir: pathlib.Path) -> pathlib.Path:
    data = max((model_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:40])
    return model_dir


def _copy_data(data_dir, target: pathlib.Path, change) -> pathlib.Path:
    import shutil

    shutil.copytree(data_dir, target)
    change(target)
    return target


def _swap_two_images(root: pathlib.Path) -> None:
    a, b = sorted((root / "train" / "images").glob("*.png"))[:2]
    first = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(first)


BAD_TRAIN_INPUT = {  # name: (extra flags from (data_dir, tmp_path), what the one line must name)
    "data_dir_missing": (lambda d, t: [f"--data_dir={t / 'nowhere'}"], "data folder"),
    "train_csv_header_only": (lambda d, t: [f"--data_dir={_copy_data(d, t / 'd', lambda r: (r / 'train.csv').write_text('id,rle_mask' + chr(10)))}"],
                              "train.csv lists no ids"),
    "folds_csv_missing": (lambda d, t: [f"--folds_csv={t / 'folds.csv'}"], "missing folds CSV"),
    "batch_larger_than_fold": (lambda d, t: ["--batch_size=64"], "--batch_size 64 is larger than the 32"),
    "workdir_is_a_file": (lambda d, t: [f"--workdir={t / 'f'}"], "exists and is not a directory"),
    "workdir_under_a_file": (lambda d, t: [f"--workdir={t / 'f' / 'w'}"], "is not a writable directory"),
    "workdir_holds_user_files": (lambda d, t: [f"--workdir={t / 'mine'}"], "holds no training run"),
    "pretrained_missing": (lambda d, t: [f"--pretrained={t / 'nowhere'}"], "no salt_jax model checkpoint"),
    "pretrained_bad_metadata": (lambda d, t: [f"--pretrained={_bad_metadata(t / 'p')}"], "damaged checkpoint metadata"),
    "pretrained_other_encoder": (lambda d, t: [f"--pretrained={_other_arch(t / 'p')}"], "holds 'se_resnext50_32x4d'"),
    "pretrained_damaged": (lambda d, t: [f"--pretrained={_truncate_largest_data_file(_saved_tiny_senet(t / 'p'))}"],
                           "damaged checkpoint, its arrays cannot be read"),
}


def _bad_metadata(path: pathlib.Path) -> pathlib.Path:
    (path / "state").mkdir(parents=True)
    (path / "metadata.json").write_text('{"arch": ')
    return path


def _other_arch(path: pathlib.Path) -> pathlib.Path:
    (path / "state").mkdir(parents=True)  # no weights at all: they must never be read
    (path / "metadata.json").write_text('{"arch": "se_resnext50_32x4d"}')
    return path


def _train_main(argv, capsys) -> tuple[int, str]:
    import train

    capsys.readouterr()
    status = train.main(argv)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(BAD_TRAIN_INPUT))
def test_bad_input_is_one_line_exit_2_before_any_write_or_compile(data_dir, tmp_path, capsys, monkeypatch, case):
    from salt_jax.training import loop

    (tmp_path / "f").write_text("a user's file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's notes")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def no_compile(*args, **kwargs):
        raise AssertionError("the model was built before the input was validated")

    monkeypatch.setattr(loop, "Trainer", no_compile)
    extra, needle = BAD_TRAIN_INPUT[case]
    workdir = tmp_path / "w"
    status, err = _train_main(["--encoder=tiny", f"--data_dir={data_dir}", f"--workdir={workdir}", "--epochs=1",
                               "--batch_size=8", "--dtype=float32", "--no_progress", *extra(data_dir, tmp_path)], capsys)
    assert status == 2
    assert err.startswith("train.py: error: ") and err.count("\n") == 1 and needle in err, err
    assert not workdir.exists()
    assert all(p.read_bytes() == data for p, data in before.items())


def _resume_refusals(data_dir, fresh3, tmp_path):
    """(extra flags, what the refusal must name) for re-runs of fresh3 with other inputs."""
    folds = (fresh3.workdir / "folds.csv").read_text().splitlines()
    rows = [line.split(",") for line in folds[1:]]
    j = next(j for j, r in enumerate(rows) if r[1] != rows[0][1])  # two ids of different folds: swap them
    rows[0][1], rows[j][1] = rows[j][1], rows[0][1]
    (tmp_path / "my_folds.csv").write_text("\n".join([folds[0], *(",".join(r) for r in rows)]) + "\n")
    return {
        "other_data": ([f"--data_dir={_copy_data(data_dir, tmp_path / 'd2', _swap_two_images)}"], "data: "),
        "other_folds": ([f"--folds_csv={tmp_path / 'my_folds.csv'}"], "folds: stratified split"),
        "added_pretrained": ([f"--pretrained={_saved_tiny_senet(tmp_path / 'p')}"], "pretrained: none then"),
    }


def test_resume_with_other_inputs_is_refused_naming_the_difference(data_dir, fresh3, tmp_path, capsys):
    """Another --data_dir (same names, other bytes), other folds or another --pretrained:
    refused before anything in the workdir changes."""
    before = {p: p.read_bytes() for p in fresh3.workdir.rglob("*") if p.is_file()}
    for name, (extra, needle) in _resume_refusals(data_dir, fresh3, tmp_path).items():
        argv = ["--encoder=tiny", f"--data_dir={data_dir}", f"--workdir={fresh3.workdir}", "--epochs=3",
                "--switch_epoch=1", "--batch_size=8", "--lr=1e-3", "--dtype=float32", "--no_progress", *extra]
        status, err = _train_main(argv, capsys)
        assert status == 2, name
        assert err.count("\n") == 1 and "was started with other inputs" in err and needle in err, (name, err)
    assert {p: p.read_bytes() for p in fresh3.workdir.rglob("*") if p.is_file()} == before


def test_small_batch_finishes_and_a_rerun_repairs_figures_and_best(data_dir, tmp_path, capsys):
    """Batch 4 < the 8 images of predictions.png (the figure spans two validation batches). A re-run
    of the finished run redraws missing figures, completes best/ from an interrupted save (crash
    between its two renames: only .best.previous left), and rebuilds a deleted best/ from the
    checkpoint of its epoch."""
    from salt_jax.models import store

    workdir = tmp_path / "w"
    first = run(tiny(data_dir, workdir, epochs=2, batch_size=4))
    assert (workdir / "predictions.png").is_file()
    best_meta = store.read_metadata(workdir / "best")
    best_leaves = [np.asarray(x) for x in jax.tree.leaves(nnx.state(store.load(workdir / "best")))]

    (workdir / "predictions.png").unlink()
    (workdir / "curves.png").unlink()
    (workdir / "best").rename(workdir / ".best.previous")
    again = run(tiny(data_dir, workdir, epochs=2, batch_size=4))
    assert again.records == first.records
    assert (workdir / "predictions.png").is_file() and (workdir / "curves.png").is_file()
    assert not (workdir / ".best.previous").exists() and store.read_metadata(workdir / "best") == best_meta

    import shutil

    shutil.rmtree(workdir / "best")
    capsys.readouterr()
    run(tiny(data_dir, workdir, epochs=2, batch_size=4))
    assert f"rebuilt {workdir / 'best'} from the checkpoint of epoch {best_meta['epoch']}" in capsys.readouterr().out
    rebuilt = store.read_metadata(workdir / "best")
    assert {k: rebuilt[k] for k in ("epoch", "val_map", "checksums")} == {k: best_meta[k] for k in ("epoch", "val_map", "checksums")}
    for a, b in zip(jax.tree.leaves(nnx.state(store.load(workdir / "best"))), best_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


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
