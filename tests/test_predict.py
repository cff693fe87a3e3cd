"""salt_jax.predict: submission format, ensemble arithmetic, flip TTA, --eval and bad input.

Runs are real io checkpoints of the tiny SaltUNet. Their weights are drawn with numpy into the
abstract module (much faster than the module's own initialisers on a loaded 2-core machine);
"constant" runs have the final 1x1 conv zeroed and its bias set, so every pixel's probability
is sigmoid(bias), a number known by hand. The data folder is a small hand-made Kaggle layout.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from salt_jax import predict
from salt_jax.data.folds import mask_types, write_folds_csv
from salt_jax.data.kaggle import load_test
from salt_jax.data.rle import rle_encode
from salt_jax.models import archs, store

pytestmark = pytest.mark.timeout(600)

N_TEST = 5
BATCH = "--batch_size=2"  # every call compiles the same (2, 101, 101) program
P_HIGH, P_LOW = 0.7, 0.2  # probabilities of the two constant runs
FULL_RLE = "1 10201"  # a 101x101 mask of all salt


def _kaggle_rle(mask: np.ndarray) -> str:
    """Kaggle's RLE written out here: 1-based "start length" runs of the column-major pixels."""
    flat = np.concatenate([[0], mask.T.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    return " ".join(f"{s} {e - s}" for s, e in zip(edges[::2], edges[1::2]))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


# --------------------------------------------------------------------------- fixtures


def _tiny_unet(seed: int, constant_prob: float | None = None) -> nnx.Module:
    """A randomly initialised tiny SaltUNet; with `constant_prob`, one that predicts it everywhere."""
    model = archs.build("unet_tiny", seed=seed)
    if constant_prob is not None:
        model.final.kernel[...] = 0.0
        model.final.bias[...] = _logit(constant_prob)
    return model


def _straddling(model: nnx.Module, images: np.ndarray) -> nnx.Module:
    """`model` with its final bias shifted so that its median pixel of `images` sits at p = 0.5.

    Random weights (PyTorch's initialisation) can put every pixel on one side of 0.5; the bias
    adds to every logit after the gate, so the shift splits the predictions into salt and no salt.
    """
    eval_view = nnx.view(model, use_running_average=True, raise_if_not_found=False)  # shares the bias
    probs = predict.predict_probs(eval_view, images, batch_size=2, tta="none", progress=False)
    model.final.bias[...] = model.final.bias[...] - _logit(float(np.median(probs)))
    return model


def _make_run(root: Path, model: nnx.Module, *, fold: int | None = None, folds: np.ndarray | None = None,
              train_ids=None, masks=None, **config) -> Path:
    """A training-run directory: best/ checkpoint, config.json and (with a fold) folds.csv."""
    store.save(root / "best", model, arch="unet_tiny")
    if fold is not None:
        config["fold"] = fold
        write_folds_csv(root / "folds.csv", train_ids, folds, mask_types(masks))
    (root / "config.json").write_text(json.dumps({"encoder": "tiny", **config}))
    return root


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _train_masks() -> np.ndarray:
    """Seven masks: empty, full, top 81 rows (IoU with a full mask 81/101 = 0.802), twice; empty."""
    partial = np.zeros((101, 101), np.uint8)
    partial[:81] = 1
    one_of_each = [np.zeros((101, 101), np.uint8), np.ones((101, 101), np.uint8), partial]
    return np.stack(one_of_each * 2 + one_of_each[:1])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The data folder and the runs shared by the tests of this module."""
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    data = root / "data"
    masks = _train_masks()
    train_ids = [f"tr{i:04d}" for i in range(len(masks))]
    test_ids = [f"te{i:04d}" for i in (3, 1, 4, 0, 2)]  # not sorted: the order must be kept
    data.mkdir()
    with open(data / "train.csv", "w") as f:
        f.write("id,rle_mask\n" + "".join(f"{i},{rle_encode(m)}\n" for i, m in zip(train_ids, masks)))
    for i, m in zip(train_ids, masks):
        _write_png(data / "train" / "images" / f"{i}.png", rng.integers(0, 256, (101, 101), dtype=np.uint8))
        _write_png(data / "train" / "masks" / f"{i}.png", m * 255)
    (data / "sample_submission.csv").write_text("id,rle_mask\n" + "".join(f"{i},1 1\n" for i in test_ids))
    for i in test_ids:
        _write_png(data / "test" / "images" / f"{i}.png", rng.integers(0, 256, (101, 101), dtype=np.uint8))

    folds = np.array([0, 0, 0, 1, 2, 3, 4])  # every fold needs an id
    fold_kw = dict(folds=folds, train_ids=train_ids, masks=masks)
    runs = {
        "random": _make_run(root / "random", _straddling(_tiny_unet(1), load_test(data).images)),
        "high": _make_run(root / "high", _tiny_unet(2, P_HIGH), fold=0, **fold_kw),
        "low": _make_run(root / "low", _tiny_unet(3, P_LOW), fold=0, **fold_kw),
        "low_fold1": _make_run(root / "low_fold1", _tiny_unet(3, P_LOW), fold=1, **fold_kw),
    }
    return {"root": root, "data": data, "runs": runs, "test_ids": test_ids, "train_ids": train_ids,
            "masks": masks}


def _cli(world, *args: str) -> int:
    return predict.main([f"--data_dir={world['data']}", BATCH, "--no_progress", *args])


def _read_submission(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


# --------------------------------------------------------------------------- submission


def test_submission_is_kaggle_format(world, tmp_path):
    out, fig = tmp_path / "sub.csv", tmp_path / "grid.png"
    assert _cli(world, f"--runs={world['runs']['random']}", f"--out={out}", "--tta=none", f"--figure={fig}") == 0

    text = out.read_text()
    assert text.startswith("id,rle_mask\n") and text.endswith("\n") and "\r" not in text
    rows = _read_submission(out)
    assert rows[0] == ["id", "rle_mask"]
    assert [r[0] for r in rows[1:]] == world["test_ids"]  # sample_submission order
    # The expected masks come from the model itself, not from predict: reflect-pad 101 -> 128
    # with numpy, scale, repeat on 3 channels, sigmoid of the logits, crop [13:114], > 0.5.
    test = load_test(world["data"])
    x = np.pad(test.images, ((0, 0), (13, 14), (13, 14)), mode="reflect").astype(np.float32) / 255
    logits, _ = store.load(world["runs"]["random"] / "best")(jnp.asarray(np.repeat(x[..., None], 3, axis=-1)))
    expected = np.asarray(logits)[:, 13:114, 13:114, 0] > 0
    assert 0 < expected.mean() < 1  # a mix of salt and no salt, so the check below means something
    for (image_id, rle), want in zip(rows[1:], expected):
        assert rle == _kaggle_rle(want), image_id  # canonical RLE


    with Image.open(fig) as im:  # test images have no masks: 2 columns, one row per image
        assert im.format == "PNG" and im.size == (2 * 200, N_TEST * 200)


def test_empty_masks_are_empty_strings(world, tmp_path):
    out = tmp_path / "sub.csv"
    assert _cli(world, f"--runs={world['runs']['low']}", f"--out={out}", "--tta=none") == 0
    lines = out.read_text().splitlines()
    assert lines == ["id,rle_mask"] + [f"{i}," for i in world["test_ids"]]


# --------------------------------------------------------------------------- ensembles


def test_group_weights_are_normalised_and_split_within_groups(world):
    high, low = world["runs"]["high"], world["runs"]["low"]
    groups = predict.expand_groups([f"{high},{low}", str(high)])
    assert groups == [[high, low], [high]]
    members = predict.make_members(groups, predict.parse_weights(None, 2))
    assert [m.weight for m in members] == [0.25, 0.25, 0.5]
    assert predict.parse_weights("7,3", 2) == pytest.approx([0.7, 0.3])
    assert predict.parse_weights("0.7,0.3", 2) == pytest.approx([0.7, 0.3])

    images = load_test(world["data"]).images[:2]
    probs = predict.ensemble_probs(members, images, batch_size=2, tta="none", progress=False)
    np.testing.assert_allclose(probs, 0.25 * P_HIGH + 0.25 * P_LOW + 0.5 * P_HIGH, atol=1e-6)


def test_glob_expands_sorted(world):
    pattern = str(world["root"] / "low*")
    assert predict.expand_groups([pattern]) == [[world["runs"]["low"], world["runs"]["low_fold1"]]]


@pytest.mark.parametrize("weights, expected_rle", [("0.7,0.3", FULL_RLE), ("0.3,0.7", ""), (None, "")])
def test_weighted_ensemble_then_threshold(world, tmp_path, weights, expected_rle):
    # 0.7 * 0.7 + 0.3 * 0.2 = 0.55 -> salt; 0.3 * 0.7 + 0.7 * 0.2 = 0.35 and (0.7 + 0.2) / 2 = 0.45 -> none.
    out = tmp_path / "sub.csv"
    args = [f"--runs={world['runs']['high']}", f"--runs={world['runs']['low']}", f"--out={out}", "--tta=none"]
    assert _cli(world, *args, *([f"--run_weights={weights}"] if weights else [])) == 0
    assert {rle for _, rle in _read_submission(out)[1:]} == {expected_rle}


# --------------------------------------------------------------------------- flip TTA


class PixelLinear(nnx.Module):
    """mask_logit[i, j] = w[i, j] * x[i, j, 0] + c: position-dependent, so not flip-equivariant."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.w = nnx.Param(jnp.asarray(rng.normal(0, 3, (128, 128)), jnp.float32))
        self.c = nnx.Param(jnp.float32(-0.5))

    def __call__(self, x):
        logits = self.w[...] * x[..., 0] + self.c[...]
        return logits[..., None], jnp.ones((x.shape[0], 1), jnp.float32)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _hand_predictions(model: PixelLinear, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In numpy: (plain, flipped_back) probabilities on the padded 128x128 images."""
    w, c = np.asarray(model.w[...], np.float64), float(model.c[...])
    x = np.pad(images / 255.0, ((0, 0), (13, 14), (13, 14)), mode="reflect")  # 13 top/left, 14 bottom/right
    plain = _sigmoid(w * x + c)
    flipped_back = _sigmoid(w * x[:, :, ::-1] + c)[:, :, ::-1]
    return plain, flipped_back


CROP = (slice(None), slice(13, 114), slice(13, 114))


def _hand_tta(model: PixelLinear, images: np.ndarray) -> np.ndarray:
    plain, flipped_back = _hand_predictions(model, images)
    return 0.5 * (plain + flipped_back)[CROP]


def test_flip_tta_is_mean_with_unflipped_prediction_of_flipped_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 101, 101), dtype=np.uint8)
    model = PixelLinear(0)
    plain, flipped_back = _hand_predictions(model, images)
    assert np.abs(plain - flipped_back)[CROP].max() > 0.1  # TTA changes the answer for this model

    # batch 3 over 5 images: the last batch is padded and trimmed.
    got_none = predict.predict_probs(model, images, batch_size=3, tta="none", progress=False)
    got_flip = predict.predict_probs(model, images, batch_size=3, tta="flip", progress=False)
    np.testing.assert_allclose(got_none, plain[CROP], atol=1e-5)
    np.testing.assert_allclose(got_flip, _hand_tta(model, images), atol=1e-5)
    assert got_flip.dtype == np.float32 and got_flip.shape == (5, 101, 101)


# --------------------------------------------------------------------------- --eval


def _printed_scores(text: str) -> dict[str, float]:
    """'ensemble kaggle_map X' and '  run PATH kaggle_map X' lines -> {'ensemble' or PATH: X}."""
    scores = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[-2] == "kaggle_map":
            scores[words[-3] if words[0] == "run" else words[0]] = float(words[-1])
    return scores


def test_eval_scores_validation_fold(world, tmp_path, capsys):
    high, low = world["runs"]["high"], world["runs"]["low"]
    fig = tmp_path / "eval.png"
    assert _cli(world, f"--runs={high},{low}", "--eval", "--tta=none", f"--figure={fig}") == 0
    out = capsys.readouterr().out
    assert "3 train images of validation fold 0" in out
    # Fold 0 masks: empty, full, top 81 rows. "high" predicts all salt: scores 0, 1 and 0.7
    # (IoU 0.802 beats 0.50..0.80); "low" predicts nothing: 1, 0, 0; their mean 0.45 -> nothing.
    scores = _printed_scores(out)
    assert scores == pytest.approx({"ensemble": 1 / 3, str(high): 1.7 / 3, str(low): 1 / 3}, abs=1e-6)
    with Image.open(fig) as im:  # masks known: 3 columns, one row per fold-0 image
        assert im.size == (3 * 200, 3 * 200)


def test_eval_on_all_train_images_when_folds_differ(world, capsys):
    runs = world["runs"]
    assert _cli(world, f"--runs={runs['high']},{runs['low_fold1']}", "--eval", "--tta=none") == 0
    out = capsys.readouterr().out
    assert "all 7 train images" in out
    assert _printed_scores(out)[str(runs["high"])] == pytest.approx(3.4 / 7, abs=1e-6)  # 0, 1, .7, 0, 1, .7, 0


# --------------------------------------------------------------------------- bad input


def _data_without_one_test_image(world) -> Path:
    path = world["root"] / "data_missing"
    if not path.exists():
        shutil.copytree(world["data"], path)
        (path / "test" / "images" / f"{world['test_ids'][2]}.png").unlink()
    return path


BAD_CASES = {
    "no_checkpoint": (lambda w: [f"--runs={w['root'] / 'empty_run'}"], "empty_run"),
    "missing_test_image": (lambda w: [f"--runs={w['runs']['high']}", f"--data_dir={_data_without_one_test_image(w)}"],
                           "te0004"),
    "weights_count": (lambda w: [f"--runs={w['runs']['high']}", f"--runs={w['runs']['low']}", "--run_weights=1"],
                      "1 weights for 2"),
    "weight_zero": (lambda w: [f"--runs={w['runs']['high']}", f"--runs={w['runs']['low']}", "--run_weights=1,0"],
                    "weight 0.0"),
    "weight_negative": (lambda w: [f"--runs={w['runs']['high']}", f"--runs={w['runs']['low']}",
                                   "--run_weights=1.3,-0.3"], "weight -0.3"),
    "weight_nan": (lambda w: [f"--runs={w['runs']['high']}", "--run_weights=nan"], "weight nan"),
    "weight_text": (lambda w: [f"--runs={w['runs']['high']}", "--run_weights=a"], "'a'"),
    "glob_no_match": (lambda w: [f"--runs={w['root'] / 'nothing*'}"], "nothing*"),
    "not_a_directory": (lambda w: [f"--runs={w['root'] / 'absent'}"], "absent"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_fails_clearly_and_leaves_no_file(world, tmp_path, capsys, case):
    (world["root"] / "empty_run").mkdir(exist_ok=True)
    make_args, needle = BAD_CASES[case]
    out = tmp_path / "sub.csv"
    out.write_text("previous submission\n")
    assert _cli(world, *make_args(world), f"--out={out}") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err, err
    assert out.read_text() == "previous submission\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]  # no temporary file left


def test_command_line_exit_status(world, tmp_path):
    out = tmp_path / "sub.csv"
    empty = world["root"] / "empty_run"
    empty.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "salt_jax.predict", f"--runs={empty}", f"--out={out}",
                           f"--data_dir={world['data']}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no checkpoint" in proc.stderr and str(empty) in proc.stderr
    assert not out.exists()


MULTI_DEVICE_SCRIPT = """
import jax, numpy as np
from salt_jax import predict
from tests.test_predict import PixelLinear, _hand_tta
assert jax.device_count() == 3, jax.devices()
images = np.random.default_rng(1).integers(0, 256, (7, 101, 101), dtype=np.uint8)
model = PixelLinear(0)
for batch_size in (1, 4):  # batches of 3 and of 6 (rounded up to the device count), last one padded
    got = predict.predict_probs(model, images, batch_size=batch_size, tta="flip", progress=False)
    np.testing.assert_allclose(got, _hand_tta(model, images), atol=1e-5)
print("ok")
"""


def test_data_parallel_over_three_devices_matches_hand_computation():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=3", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", MULTI_DEVICE_SCRIPT], capture_output=True, text=True,
                          timeout=300, env=env, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.parametrize("where", ["directory", "under_a_file"])
def test_unwritable_out_fails_before_inference(world, tmp_path, capsys, monkeypatch, where):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path if where == "directory" else tmp_path / "a_file" / "sub.csv"

    def no_inference(*args, **kwargs):
        raise AssertionError("inference ran before --out was checked")

    monkeypatch.setattr(predict, "ensemble_probs", no_inference)
    assert _cli(world, f"--runs={world['runs']['high']}", f"--out={out}") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out=") and str(out) in err and err.count("\n") == 1, err
