"""Inference: flip TTA, fold and encoder ensembles, the Kaggle submission, and --eval.

    python -m salt_jax.predict --runs=runs/r101-fold* --runs=runs/r50-fold* --run_weights=0.7,0.3 \
        --data_dir=DIR --out=submission.csv [--tta=flip|none] [--threshold=0.5] [--batch_size=N] \
        [--eval] [--figure=PATH]

Ensembles. Each `--runs` value is a group: a comma list of run directories and/or globs. Runs in
a group weigh equally; groups weigh as `--run_weights` (one positive number per group,
normalised to sum 1, so `0.7,0.3` and `7,3` mean the same), or equally without it. A run's
weight is its group's weight divided by the group's size; the ensemble probability is the
weighted mean of the runs' probabilities, thresholded afterwards (`p > threshold`).
A run directory is a training workdir (its `best/` checkpoint is used) or a bare model
directory written by `salt_jax.models.save`.

Per run and image: the 101x101 uint8 image is reflect-padded to 128 (13 top/left, 14
bottom/right), scaled to [0, 1] and repeated on 3 channels, as in training (salt_jax.data.geometry);
the probability is sigmoid(mask_logits), cropped back to [13:114]. Flip TTA averages it with the
prediction for the horizontally flipped padded image, flipped back. Flipping the padded image (not
the 101 crop) is what training's augmentation showed the model: the flip is applied after padding.

--eval scores predictions of the TRAIN split of --data_dir with the Kaggle metric (mean over
images of `metrics.kaggle_score` on 101x101), for the ensemble and for each run. Images: the
validation fold of the runs when every run has a config.json fold and a folds.csv and all give
the same validation ids; otherwise every training image, and the report says so (those scores
include images the runs trained on, so they are optimistic). With `--tta=none` and one run this
is the run's validation metric as training computes it.

Inference is one jitted function per architecture, data-parallel over all local devices: a
1-D mesh with axis "data", the batch sharded with NamedSharding and the parameters
replicated; the last batch is padded up to the batch size (a multiple of the device count)
and trimmed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from salt_jax.cache import enable_compilation_cache
from salt_jax.data import geometry
from salt_jax.data.rle import rle_encode
from salt_jax.errors import UserError
from salt_jax.fileio import atomic_write
from salt_jax.metrics import kaggle_map
from salt_jax.mesh import data_mesh
from salt_jax.models import store
from salt_jax.training.workdir import model_dir

TTA_MODES = ("flip", "none")
FIGURE_SAMPLES = 8


class PredictError(UserError, ValueError):
    """Invalid command-line input; the message names the run, file or value."""


# --------------------------------------------------------------------------- single model


def _prob_128(model: nnx.Module, x: jax.Array) -> jax.Array:
    """x (B, 128, 128, 3) in [0, 1] -> salt probability (B, 128, 128) float32."""
    mask_logits, _ = model(x)
    return jax.nn.sigmoid(mask_logits[..., 0].astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("graphdef", "tta"))
def _forward(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array, *, tta: str) -> jax.Array:
    """uint8 images (B, 101, 101) -> probabilities (B, 101, 101) float32 (see module docstring)."""
    model = nnx.merge(graphdef, state)
    x = geometry.to_channels(geometry.to_unit(geometry.pad(images))[..., None])
    prob = _prob_128(model, x)
    if tta == "flip":
        prob = 0.5 * (prob + _prob_128(model, x[:, :, ::-1])[:, :, ::-1])
    return geometry.crop(prob)


def predict_probs(
    model: nnx.Module,
    images: np.ndarray,
    *,
    batch_size: int = 32,
    tta: str = "flip",
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    desc: str | None = None,
) -> np.ndarray:
    """Salt probabilities of one model for 101x101 images.

    Args:
      model: a SaltUNet (or any module with its call contract) in eval mode, e.g. `models.load(DIR)`.
      images: uint8 (N, 101, 101) raw images.
      batch_size: images per step over all devices; rounded up to a multiple of the device count
        and capped at N (rounded likewise) so small inputs do not pay for a large batch.
      tta: "flip" (mean with the un-flipped prediction of the flipped image) or "none".
      mesh: the device mesh (axis "data"); default `data_mesh()`.
      progress: show a tqdm bar on stderr; desc labels it.

    Returns:
      float32 (N, 101, 101) probabilities.
    """
    images = np.asarray(images)
    side = geometry.IMAGE_SIZE
    if images.ndim != 3 or images.shape[1:] != (side, side) or images.dtype != np.uint8:
        raise ValueError(f"predict_probs expects uint8 (N, 101, 101) images, got {images.dtype} {images.shape}")
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r}: expected one of {TTA_MODES}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: expected >= 1")
    n = len(images)
    if n == 0:
        return np.zeros((0, side, side), np.float32)
    mesh = mesh or data_mesh()
    n_dev = mesh.devices.size
    batch = _round_up(min(batch_size, n), n_dev)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    graphdef, state = nnx.split(model)
    state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))

    out = np.empty((n, side, side), np.float32)
    pending: tuple[int, int, jax.Array] | None = None  # fetch step k while step k+1 runs
    with tqdm(total=n, unit="img", desc=desc, disable=not progress, file=sys.stderr) as bar:
        for start in range(0, n, batch):
            chunk = images[start : start + batch]
            padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + chunk.shape[1:], np.uint8)])
            result = _forward(graphdef, state, jax.device_put(padded, batch_sharding), tta=tta)
            if pending is not None:
                _store(out, pending, bar)
            pending = (start, len(chunk), result)
        _store(out, pending, bar)
    return out


def _store(out: np.ndarray, pending: tuple[int, int, jax.Array], bar: tqdm) -> None:
    """Copy a finished batch (trimmed of its padding) into `out` and advance the bar."""
    start, count, result = pending
    out[start : start + count] = np.asarray(result)[:count]
    bar.update(count)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# --------------------------------------------------------------------------- runs and ensembles


@dataclasses.dataclass(frozen=True)
class Member:
    """One run of the ensemble: its directory, its weight, and its config.json (or {})."""

    path: Path
    weight: float
    config: dict


def expand_groups(specs: Sequence[str]) -> list[list[Path]]:
    """`--runs` values -> groups of run directories (comma lists; glob patterns expanded, sorted)."""
    groups = []
    for spec in specs:
        group = []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            if glob.has_magic(item):
                matches = sorted(glob.glob(item))
                if not matches:
                    raise PredictError(f"--runs pattern {item!r} matches no directory")
            else:
                matches = [item]
            for match in matches:
                if not os.path.isdir(match):
                    raise PredictError(f"run {match!r} is not a directory")
                group.append(Path(match))
        if not group:
            raise PredictError(f"--runs={spec!r} names no run")
        groups.append(group)
    return groups


def parse_weights(text: str | None, n_groups: int) -> list[float]:
    """`--run_weights` -> one weight per group, normalised to sum 1 (equal when not given)."""
    if text is None:
        return [1.0 / n_groups] * n_groups
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise PredictError(f"--run_weights={text!r}: expected comma-separated numbers") from None
    if len(weights) != n_groups:
        raise PredictError(f"--run_weights={text!r} has {len(weights)} weights for {n_groups} --runs groups")
    bad = [w for w in weights if not (math.isfinite(w) and w > 0)]
    if bad:
        raise PredictError(f"--run_weights={text!r}: weight {bad[0]} is not a positive finite number")
    total = sum(weights)
    return [w / total for w in weights]


def make_members(groups: list[list[Path]], group_weights: list[float]) -> list[Member]:
    """Flatten groups into members (weight = group weight / group size) after checking each run.

    Raises PredictError for a run without a checkpoint or with an unreadable config.json.
    """
    return [Member(path=path, weight=weight / len(group), config=_read_config(path))
            for group, weight in zip(groups, group_weights) for path in group]


def _read_config(path: Path) -> dict:
    """The run's config.json ({} for a bare model directory); checks that a checkpoint exists."""
    try:
        store.read_metadata(model_dir(path))
    except store.CheckpointError as e:
        raise PredictError(f"run {path}: no checkpoint ({e})") from None
    config_file = path / "config.json"
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise PredictError(f"run {path}: {config_file} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise PredictError(f"run {path}: {config_file} does not hold a JSON object")
    return config


def ensemble_probs(
    members: Sequence[Member],
    images: np.ndarray,
    *,
    batch_size: int,
    tta: str,
    each: Callable[[Member, np.ndarray], None] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Weighted mean of the members' probabilities, (N, 101, 101) float32.

    Models are loaded one at a time (memory holds one model and two probability arrays);
    `each(member, probs)` sees every member's own probabilities (used by --eval).
    """
    total = np.zeros(images.shape, np.float32)
    mesh = data_mesh()
    for member in members:
        model = store.load(model_dir(member.path))
        probs = predict_probs(model, images, batch_size=batch_size, tta=tta, mesh=mesh, progress=progress,
                              desc=member.path.name)
        total += np.float32(member.weight) * probs
        if each is not None:
            each(member, probs)
        del model
    return total


# --------------------------------------------------------------------------- evaluation


def eval_selection(members: Sequence[Member], train_ids: Sequence[str]) -> tuple[np.ndarray, str]:
    """Indices of the train images --eval scores, and a sentence saying which (module docstring)."""
    from salt_jax.data.folds import read_folds_csv  # the data package is only needed for --eval

    everything = np.arange(len(train_ids))
    selections = []
    for m in members:
        folds_csv = m.path / "folds.csv"
        if "fold" not in m.config or not folds_csv.is_file():
            return everything, f"all {len(train_ids)} train images (run {m.path} has no fold/folds.csv)"
        folds = read_folds_csv(folds_csv, train_ids)
        selections.append((m.config["fold"], np.flatnonzero(folds == m.config["fold"])))
    first_fold, first = selections[0]
    if any(not np.array_equal(sel, first) for _, sel in selections[1:]):
        return everything, (f"all {len(train_ids)} train images (the runs' validation folds differ; "
                            "scores include images they trained on)")
    return first, f"{len(first)} train images of validation fold {first_fold}"


# --------------------------------------------------------------------------- output


def write_submission(path: str | os.PathLike, ids: Sequence[str], probs: np.ndarray, threshold: float) -> None:
    """Kaggle's CSV: header `id,rle_mask`, one row per id in order, RLE of `probs > threshold`.

    Written to a temporary file beside `path`, then renamed: never a partial file at `path`.
    """
    if len(ids) != len(probs):
        raise ValueError(f"{len(ids)} ids for {len(probs)} predictions")
    lines = ["id,rle_mask"] + [f"{i},{rle_encode(p > threshold)}" for i, p in zip(ids, probs)]
    with atomic_write(path, "w", newline="") as f:
        f.write("\n".join(lines) + "\n")


def _figure_sample(n: int) -> np.ndarray:
    """A fixed spread of FIGURE_SAMPLES indices out of n (the same figure on every call)."""
    return np.unique(np.linspace(0, n - 1, min(n, FIGURE_SAMPLES)).round().astype(int))


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m salt_jax.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", action="append", required=True,
                   help="a group of runs: comma list of run directories or globs; repeat for more groups")
    p.add_argument("--run_weights", default=None,
                   help="one positive weight per --runs group, normalised to sum 1 (default: equal)")
    p.add_argument("--data_dir", default=None, help="Kaggle-layout data folder (default: the synthetic set)")
    p.add_argument("--out", default=None, help="submission CSV to write (required unless --eval)")
    p.add_argument("--tta", choices=TTA_MODES, default="flip")
    p.add_argument("--threshold", type=float, default=0.5, help="mask = probability > threshold")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--eval", action="store_true", help="print the Kaggle metric on labelled train images")
    p.add_argument("--figure", default=None, help="PNG grid of sample predictions")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> None:
    """Validate everything cheap first (runs, weights, data), then predict, then write outputs."""
    from salt_jax import viz
    from salt_jax.data.kaggle import load_test, load_train

    if args.out is None and not args.eval:
        raise PredictError("nothing to do: give --out=submission.csv and/or --eval")
    if not 0.0 < args.threshold < 1.0:
        raise PredictError(f"--threshold={args.threshold}: expected a probability in (0, 1)")
    if args.batch_size < 1:
        raise PredictError(f"--batch_size={args.batch_size}: expected >= 1")
    for flag, path in (("--out", args.out), ("--figure", args.figure)):
        if path is not None:
            _check_writable(flag, Path(path))
    groups = expand_groups(args.runs)
    members = make_members(groups, parse_weights(args.run_weights, len(groups)))
    data_dir = args.data_dir or _default_data_dir()
    test = load_test(data_dir) if args.out is not None else None
    train = load_train(data_dir) if args.eval else None
    kw = dict(batch_size=args.batch_size, tta=args.tta, progress=not args.no_progress)
    for m in members:
        print(f"run {m.path}  weight {m.weight:.4f}")

    figure_data = None
    if train is not None:
        index, what = eval_selection(members, train.ids)
        images, masks = train.images[index], train.masks[index]
        per_run = []
        probs = ensemble_probs(members, images, **kw,
                               each=lambda m, p: per_run.append((m, kaggle_map(masks, p > args.threshold))))
        print(f"eval on {what}, tta={args.tta}, threshold={args.threshold}")
        print(f"ensemble kaggle_map {kaggle_map(masks, probs > args.threshold):.6f}")
        for m, score in per_run:
            print(f"  run {m.path} kaggle_map {score:.6f}")
        figure_data = (images, masks, probs, [train.ids[i] for i in index])
    if test is not None:
        probs = ensemble_probs(members, test.images, **kw)
        write_submission(args.out, test.ids, probs, args.threshold)
        print(f"wrote {args.out}: {len(test.ids)} rows")
        figure_data = figure_data or (test.images, None, probs, list(test.ids))
    if args.figure is not None and figure_data is not None and len(figure_data[0]):
        images, masks, probs, ids = figure_data
        pick = _figure_sample(len(images))
        viz.prediction_grid(images[pick], None if masks is None else masks[pick], probs[pick], args.figure,
                            ids=[ids[i] for i in pick], n=len(pick), threshold=args.threshold)
        print(f"wrote {args.figure}")


def _check_writable(flag: str, path: Path) -> None:
    """Refuses, before any inference, an output that cannot be written (atomic_write creates
    missing folders, so the nearest existing one must be a writable directory)."""
    if path.is_dir():
        raise PredictError(f"{flag}={path} is a directory")
    if path.exists() and not os.access(path, os.W_OK):
        raise PredictError(f"{flag}={path} is not writable")
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PredictError(f"{flag}={path} cannot be written: {folder} is not a writable directory")


def _default_data_dir() -> str:
    """The built-in synthetic dataset, generated on first use."""
    from salt_jax.data.synthetic import ensure_default_data

    return os.fspath(ensure_default_data())


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry; returns the exit status (2 with a one-line message on bad input)."""
    args = build_parser().parse_args(argv)
    enable_compilation_cache()
    try:
        run(args)
    except UserError as e:  # PredictError, DataError, store.CheckpointError
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
