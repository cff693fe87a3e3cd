"""The training run: epochs, the loss switch, lr schedules, validation, checkpoints and logs.

`run(cfg)` trains one fold and returns a RunResult. Re-running with the same workdir resumes from
the latest checkpoint and continues exactly (same batches, augmentations and lr as an
uninterrupted run). Files in WORKDIR:
    inputs.json     what the run was started with: encoder, fold, and the source and content hash
                    of the data, the folds and the pretrained weights (a re-run with any other is refused)
    config.json     the TrainConfig (a re-run with another encoder/fold/... is refused)
    folds.csv       the folds used (id, fold, mask_type)
    metrics.jsonl   one JSON record per epoch
    checkpoints/    orbax, the last 2 epochs (full train state)
    best/           the best model by val_map (salt_jax.models.store format; models.load(WORKDIR/best))
    snapshots/      cosine recipe: the model at the end of each cycle
    curves.png, predictions.png, tensorboard/ (if tensorboardX is installed)
Every check of the user's input (flag values, the workdir on the file system and its record,
the data, the folds, the pretrained weights) runs before anything is written or compiled, and
fails with a one-line UserError (train.py: exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from salt_jax import checksums
from salt_jax.data import geometry, write_folds_csv
from salt_jax.data.fold_data import FoldData, Split, epoch_batches, eval_batches, load_fold, padded_size
from salt_jax.errors import UserError
from salt_jax.fileio import atomic_write
from salt_jax.losses import LossOptions
from salt_jax.metrics import kaggle_map
from salt_jax.models import archs, store
from salt_jax.training.checkpoint import Checkpoints
from salt_jax.training.config import TrainConfig, default_workdir, load_config_json
from salt_jax.training.schedules import ReduceOnPlateau, cosine_cycles
from salt_jax.training.workdir import BEST
from salt_jax.mesh import data_mesh
from salt_jax.training.steps import Trainer, make_optimizer, replicate, shard_batch

PROGRESS_EVERY = 10  # steps between (lagged) loss reads for the progress bar
FIGURE_ROWS = 8  # validation images in predictions.png


class IncompatibleRunError(UserError):
    """The workdir holds a run of another experiment (encoder, fold, data, folds, weights...)."""


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or infinite; nothing of that epoch is saved."""


@dataclasses.dataclass
class RunResult:
    """What a run leaves behind, for callers and tests."""

    workdir: pathlib.Path
    records: list[dict[str, Any]]
    best_val_map: float
    state: Any  # the final train state (params, batch_stats, opt_state, step)
    compiles: dict[str, int]  # jitted function -> number of compilations in this process
    empty_val_map: float  # val_map of predicting no salt anywhere: the baseline to beat
    start_val_map: float | None = None  # fine-tuning: the starting model's score, to be beaten

    def summary(self) -> str:
        """The run's last line: its best val_map next to the do-nothing baseline of the same fold."""
        return f"best val_map {self.best_val_map:.4f} (predicting no salt: {self.empty_val_map:.4f})"


def run(cfg: TrainConfig) -> RunResult:
    """Trains `cfg.fold` for `cfg.epochs` epochs (resuming if WORKDIR holds a checkpoint)."""
    try:
        cfg.validate()
    except ValueError as err:
        raise UserError(str(err)) from None
    if cfg.distributed:
        _initialize_distributed()
    workdir = pathlib.Path(cfg.workdir or default_workdir(cfg.encoder, cfg.fold, cfg.data_dir)).absolute()
    _check_workdir(workdir)
    pretrained = _load_pretrained(cfg)
    data, split = load_fold(_data_dir(cfg), cfg.fold, folds_csv=cfg.folds_csv, fold_rule=cfg.fold_rule)
    empty_val_map = all_empty_map(data.val_masks)
    mesh = data_mesh()
    _check_batch(cfg, len(data.train_images))
    _claim_workdir(workdir, cfg, _inputs(cfg, split), split)  # the first write
    log = _Logger(workdir, progress=cfg.progress)
    trainer = build_trainer(cfg, _build_model(cfg, pretrained), mesh)
    loss = trainer.loss
    arrays = {k: replicate(v, trainer.replicated) for k, v in dataclasses.asdict(data).items() if k != "val_ids"}

    ckpt = Checkpoints(workdir / "checkpoints")
    state = trainer.init_state()
    progress = _fresh_progress(cfg)
    restored = ckpt.restore_latest(state, report=log.info)
    if restored is not None:
        state, progress = restored
        log.info(f"resumed {workdir} at epoch {progress['next_epoch']} (best val_map {progress['best_val_map']:.4f})")
    elif cfg.finetune_from:  # best/ must beat the starting model (salt_jax.training.finetune)
        progress["best_val_map"] = progress["start_val_map"] = _starting_val_map(trainer, state, arrays, cfg)
        log.info(f"fine-tuning {cfg.finetune_from}: its val_map is {progress['start_val_map']:.4f} (eval mode); "
                 f"best/ is written only by an epoch that beats it")
    elif not cfg.pretrained:
        log.warn("no --pretrained checkpoint: the encoder starts from random weights (expect a much lower "
                 "val_map than the ImageNet-initialised original)")
    log.rewrite_metrics(progress["history"])
    _repair_best(workdir, ckpt, state, progress, trainer, cfg, log)
    plateau = ReduceOnPlateau(**progress["plateau"])
    cosine = (cosine_cycles(max_lr=cfg.lr, min_lr=cfg.min_lr, cycle_epochs=cfg.cycle_epochs, epochs=cfg.epochs)
              if cfg.recipe == "cosine" else None)
    n_dev = mesh.devices.size
    log.info(f"{cfg.arch} fold {cfg.fold}: {len(data.train_images)} train / {len(data.val_images)} val images, "
             f"global batch {cfg.batch_size} (last partial batch kept) on {n_dev} {jax.default_backend()} device(s)"
             + (f", padded to {padded_size(cfg.batch_size, n_dev)} and masked" if cfg.batch_size % n_dev else "")
             + f"; predicting no salt scores val_map {empty_val_map:.4f}")

    last_probs = None
    since_last_record = time.perf_counter()
    try:
        for epoch in range(progress["next_epoch"], cfg.epochs):
            if epoch > 0 and loss.use_lovasz(epoch) and not loss.use_lovasz(epoch - 1):
                state = trainer.reset_optimizer(state)  # fresh moments for the Lovasz round
                plateau.reset()
            lr = plateau.lr if cosine is None else float(cosine(epoch))
            state = trainer.set_lr(state, lr)
            state, train_loss, seconds = _train_epoch(trainer, state, arrays, cfg, epoch, data, log)
            val_start = time.perf_counter()
            val_loss, val_map, last_probs = _evaluate(trainer, state, arrays, cfg, epoch)
            record = {
                "epoch": epoch, "step": int(state["step"]), "round": "lovasz" if loss.use_lovasz(epoch) else "bce_dice",
                "switch_epoch": cfg.switch_epoch, "train_loss": train_loss, "val_loss": val_loss, "val_map": val_map,
                "lr": lr, "seconds": seconds, "images_per_s": _images(data, cfg) / seconds,
                "val_seconds": time.perf_counter() - val_start,
            }
            if cfg.recipe == "original":
                plateau.step(val_map)
            if val_map > progress["best_val_map"]:
                progress["best_val_map"] = val_map
                store.save(workdir / BEST, trainer.model(state), arch=cfg.arch, metadata=_best_metadata(cfg, record))
            record["best_val_map"] = progress["best_val_map"]
            # The epoch as a user waits for it, so that the figures add up to the run: since the
            # previous epoch's record, i.e. its checkpoint (started below, async after awaiting
            # the one before), this epoch's training, validation and best/ export.
            now = time.perf_counter()
            record["epoch_seconds"], since_last_record = now - since_last_record, now
            progress.update(next_epoch=epoch + 1, plateau=dataclasses.asdict(plateau),
                            history=progress["history"] + [record])
            ckpt.save(epoch + 1, state, progress)
            log.epoch(record)
            if cfg.recipe == "cosine" and (epoch + 1) % cfg.cycle_epochs == 0:
                k = (epoch + 1) // cfg.cycle_epochs
                store.save(workdir / "snapshots" / f"cycle-{k}", trainer.model(state), arch=cfg.arch,
                              metadata={"epoch": epoch, "cycle": k, "val_map": val_map})
    finally:
        ckpt.close()
        log.close()
    if cfg.finetune_from and progress["best_val_map"] == progress["start_val_map"]:
        log.info(f"no epoch beat the starting val_map of {cfg.finetune_from}: {workdir / BEST} not written")
    if (last_probs is None and progress["history"] and jax.process_count() == 1
            and not (workdir / "predictions.png").is_file()):
        # A re-run of a finished run (no epoch left) redraws a figure that a crash left unwritten.
        last_probs = _evaluate(trainer, state, arrays, cfg, progress["next_epoch"] - 1)[2]
    _pictures(workdir, progress["history"], data, last_probs, log)
    compiles = {"train_step": trainer.train_step_flat._cache_size(), "eval_step": trainer.eval_step._cache_size()}
    return RunResult(workdir, progress["history"], progress["best_val_map"], state, compiles, empty_val_map,
                     progress.get("start_val_map"))


def build_trainer(cfg: TrainConfig, model: nnx.Module, mesh) -> Trainer:
    """The Trainer (jitted train and eval steps) of `cfg` for `model`: what a run trains with, and
    what benchmarks/bench_grid.py times."""
    return Trainer(model, make_optimizer(cfg.recipe, cfg.weight_decay, cfg.lr), mesh, seed=cfg.seed,
                   loss=LossOptions(cfg.switch_epoch, cfg.symmetric_lovasz, cfg.original_dice), augment=cfg.augment)


def all_empty_map(val_masks_128: np.ndarray) -> float:
    """val_map of an all-empty prediction on padded (N, 128, 128) masks, scored on the 101x101 crop.

    An empty prediction scores 1 on an empty mask and 0 on any other, so this is the share of
    empty validation masks: what a model must beat to have learned anything.
    """
    masks = geometry.crop(val_masks_128)
    return kaggle_map(masks, np.zeros_like(masks))


# ---------------------------------------------------------------------------------------------- setup


def _initialize_distributed() -> None:
    """`jax.distributed.initialize()`, also for plain local processes.

    On clusters JAX detects everything (SLURM, Open MPI, Kubernetes, Cloud TPU). Elsewhere the
    coordinator comes from JAX_COORDINATOR_ADDRESS, and the process count and rank from
    JAX_NUM_PROCESSES / JAX_PROCESS_ID, which JAX itself does not read. CPU processes exchange
    their collectives through gloo (the CPU client has no other cross-process transport).
    """
    env = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
    kwargs = {arg: int(os.environ[var]) for arg, var in env.items() if os.environ.get(var)}
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)


def _data_dir(cfg: TrainConfig) -> pathlib.Path:
    if cfg.data_dir:
        return pathlib.Path(cfg.data_dir)
    from salt_jax.data.synthetic import ensure_default_data

    return ensure_default_data()


# Files of ours that mark a directory as a training workdir (the first ones a run writes).
WORKDIR_MARKERS = ("inputs.json", "config.json")


def _check_workdir(workdir: pathlib.Path) -> None:
    """--workdir must be new, empty, or one of our runs, and writable (read-only checks)."""
    if workdir.exists() or workdir.is_symlink():
        if not workdir.is_dir():
            raise UserError(f"--workdir {workdir} exists and is not a directory")
        names = {p.name for p in workdir.iterdir()}
        if names and not names & set(WORKDIR_MARKERS):
            raise UserError(f"--workdir {workdir} is a non-empty directory that holds no training run "
                            f"(no {WORKDIR_MARKERS[0]}); choose another --workdir")
        if not os.access(workdir, os.W_OK | os.X_OK):
            raise UserError(f"--workdir {workdir} is not writable")
        return
    parent = next(p for p in workdir.parents if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--workdir {workdir} cannot be created: {parent} is not a writable directory")


def _inputs(cfg: TrainConfig, split: Split) -> dict[str, Any]:
    """What the run is started with (WORKDIR/inputs.json): sources for people, content hashes to compare."""
    pretrained = None
    if cfg.pretrained:
        recorded = store.read_metadata(cfg.pretrained)["checksums"]
        pretrained = {"source": str(pathlib.Path(cfg.pretrained).absolute()), "content": checksums.json_checksum(recorded)}
    return {
        "encoder": cfg.encoder,
        "fold": cfg.fold,
        "data": {"source": str(pathlib.Path(cfg.data_dir).absolute()) if cfg.data_dir else "built-in synthetic set",
                 "content": split.data_key},
        "folds": {"source": str(pathlib.Path(cfg.folds_csv).absolute()) if cfg.folds_csv else "stratified split",
                  "content": split.folds_key},
        "pretrained": pretrained,
    }


def _input_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'name: then -> now' for every input whose identity (content, not path) differs."""

    def identity(value):
        return value.get("content") if isinstance(value, dict) else value

    def describe(value) -> str:
        if isinstance(value, dict):
            return f"{value.get('source')} (content {str(value.get('content'))[:12]})"
        return "none" if value is None else repr(value)

    return [f"{key}: {describe(old.get(key))} then -> {describe(new[key])} now"
            for key in new if identity(old.get(key)) != identity(new[key])]


def _read_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable ({checksums.read_error(err)}); it marks the run in "
                        f"{path.parent}: restore it, or use another --workdir") from None


def _claim_workdir(workdir: pathlib.Path, cfg: TrainConfig, inputs: dict[str, Any], split: Split) -> None:
    """Refuses a workdir of another experiment; then writes inputs.json (once), config.json, folds.csv."""
    config_path, inputs_path = (workdir / name for name in ("config.json", "inputs.json"))
    if config_path.is_file():
        try:
            old = load_config_json(json.dumps(_read_json(config_path)))
        except (TypeError, ValueError) as err:
            raise UserError(f"{config_path}: not a training config ({err})") from None
        if old.identity() != cfg.identity():
            diff = {k: (v, cfg.identity()[k]) for k, v in old.identity().items() if cfg.identity()[k] != v}
            raise IncompatibleRunError(
                f"{workdir} holds a run with another configuration {diff} (field: (there, requested)); "
                f"use another --workdir")
    if inputs_path.is_file():
        differences = _input_differences(_read_json(inputs_path), inputs)
        if differences:
            raise IncompatibleRunError(f"{workdir} was started with other inputs ({'; '.join(differences)}); "
                                       f"re-run with the inputs it was started with, or use another --workdir")
    if jax.process_index() == 0:
        if not inputs_path.is_file():  # the record of the start; a resume never rewrites it
            with atomic_write(inputs_path) as f:
                f.write(json.dumps(inputs, indent=2, sort_keys=True) + "\n")
        with atomic_write(config_path) as f:
            f.write(cfg.to_json() + "\n")
        write_folds_csv(workdir / "folds.csv", split.ids, split.folds, split.mask_types)


def _check_batch(cfg: TrainConfig, n_train: int) -> None:
    if cfg.batch_size > n_train:
        raise UserError(f"--batch_size {cfg.batch_size} is larger than the {n_train} training images of fold {cfg.fold}")


def _load_pretrained(cfg: TrainConfig) -> nnx.Module | None:
    """The weights the run starts from, verified before anything is written: the whole
    --finetune_from model, or the --pretrained encoder (arch from its metadata first, then its
    checksums); None for a random start."""
    if cfg.finetune_from:
        from salt_jax.training.finetune import load_start_model

        return load_start_model(cfg, _compute_dtype(cfg))
    if not cfg.pretrained:
        return None
    arch = store.read_metadata(cfg.pretrained)["arch"]  # refuse before loading the weights
    if not archs.is_a(arch, "senet", cfg.encoder):
        raise UserError(f"--pretrained {cfg.pretrained} holds {arch!r}, but --encoder is {cfg.encoder!r}")
    return store.load(cfg.pretrained)


def _compute_dtype(cfg: TrainConfig) -> str:
    return cfg.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")


def _build_model(cfg: TrainConfig, pretrained: nnx.Module | None) -> nnx.Module:
    """The model to train: the fine-tuning source itself, or a fresh UNet (with the ImageNet encoder)."""
    from salt_jax.models.initialize import init_module
    from salt_jax.models.unet import SaltUNet, init_encoder_from_imagenet

    if cfg.finetune_from:
        return pretrained
    dtype = jnp.dtype(_compute_dtype(cfg))
    # Host-side init: eagerly (or under nnx.jit) XLA compiles the initialisers for ~30 s on CPU.
    model = init_module(lambda rngs: SaltUNet(cfg.encoder, rngs=rngs, dtype=dtype), cfg.seed)
    if pretrained is not None:
        init_encoder_from_imagenet(model, pretrained)
    return model


def _best_metadata(cfg: TrainConfig, record: dict[str, Any]) -> dict[str, Any]:
    return {"epoch": record["epoch"], "val_map": record["val_map"], "fold": cfg.fold, "encoder": cfg.encoder}


def _repair_best(workdir: pathlib.Path, ckpt: Checkpoints, state_like, progress: dict[str, Any], trainer: Trainer,
                 cfg: TrainConfig, log: "_Logger") -> None:
    """Completes best/ when a crash (or a person) left it missing: an interrupted save's complete
    copy is moved into place, else the best epoch's checkpoint is exported again if still kept.
    A fine-tuning run whose epochs never beat its starting model has no best/, by design."""
    best = workdir / BEST
    if log.primary and store.finish_interrupted_save(best):
        log.info(f"completed {best} from an interrupted save")
    if jax.process_count() > 1:  # every process must see the same best/ before deciding to save
        multihost_utils.sync_global_devices("salt_jax.loop.repair_best")
    history = progress["history"]
    if not history or best.exists():
        return
    top = max(history, key=lambda r: r["val_map"])
    if top["val_map"] <= progress.get("start_val_map", -1.0):
        return
    if top["epoch"] + 1 not in ckpt.all_steps():
        log.info(f"{best} is missing and the checkpoint of its epoch {top['epoch']} is no longer kept; "
                 f"best/ is written again when val_map improves")
        return
    state, _ = ckpt.restore(top["epoch"] + 1, state_like)
    store.save(best, trainer.model(state), arch=cfg.arch, metadata=_best_metadata(cfg, top))
    log.info(f"rebuilt {best} from the checkpoint of epoch {top['epoch']}")


def _fresh_progress(cfg: TrainConfig) -> dict[str, Any]:
    """The host-side part of the train state (checkpointed as JSON next to the arrays)."""
    plateau = ReduceOnPlateau(cfg.lr, patience=cfg.plateau_patience, factor=cfg.plateau_factor)
    return {"next_epoch": 0, "best_val_map": -1.0, "plateau": dataclasses.asdict(plateau), "history": [],
            "identity": cfg.identity()}


def _images(data: FoldData, cfg: TrainConfig) -> int:
    return len(data.train_images)  # every image, every epoch (the partial batch is kept)


# ---------------------------------------------------------------------------------------------- epochs


def _train_epoch(trainer: Trainer, state, arrays, cfg: TrainConfig, epoch: int, data: FoldData, log: "_Logger"):
    """One pass over the training batches of `epoch`. Returns (state, mean loss, seconds).

    The host never waits for the device inside the epoch except for a lagged loss read every
    PROGRESS_EVERY steps (and, on multi-device CPU, after each step: XLA's CPU collectives can
    deadlock when steps are dispatched asynchronously on few cores).
    """
    batches = epoch_batches(len(data.train_images), cfg.batch_size, seed=cfg.seed, epoch=epoch,
                            n_devices=trainer.mesh.devices.size)
    sync_each_step = _must_sync_each_step()
    first_step = int(state["step"])
    epoch_arg = replicate(np.asarray(epoch, np.int32), trainer.replicated)
    losses = []
    bar = tqdm(total=len(data.train_images), unit="img", unit_scale=True, leave=False, disable=not log.show_progress,
               desc=f"epoch {epoch}")
    start = time.perf_counter()
    leaves, tree = jax.tree.flatten(state)  # flat for the whole epoch: see Trainer.train_step_flat
    for i, (idx, valid) in enumerate(batches):
        leaves, out = trainer.train_step_flat(tree, leaves, arrays["train_images"], arrays["train_masks"],
                                              shard_batch(idx, trainer.batch_sharded),
                                              shard_batch(valid, trainer.batch_sharded), epoch_arg)
        losses.append(out["loss"])
        if sync_each_step:
            jax.block_until_ready(leaves)
        if i % PROGRESS_EVERY == 0 and i > 0:
            _check_finite(losses[-2:-1], first_step + i - 1, epoch)
            bar.set_postfix(loss=f"{float(losses[-2]):.4f}")
        bar.update(int(valid.sum()))
    values = np.asarray(jax.device_get(losses), np.float64)
    seconds = time.perf_counter() - start
    bar.close()
    _check_finite(values, first_step, epoch)
    return jax.tree.unflatten(tree, leaves), float(values.mean()), seconds


def _must_sync_each_step() -> bool:
    """XLA's CPU collectives can deadlock with asynchronously dispatched steps on few cores."""
    return jax.default_backend() == "cpu" and len(jax.devices()) > 1


def _check_finite(values, first_step: int, epoch: int) -> None:
    values = np.asarray(jax.device_get(list(values)) if isinstance(values, list) else values, np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        step = first_step + int(bad[0])
        raise NonFiniteLossError(
            f"non-finite training loss ({values[bad[0]]}) at global step {step} (epoch {epoch}); stopped "
            f"without saving anything of epoch {epoch} (checkpoints written before it are unchanged)")


def _evaluate(trainer: Trainer, state, arrays, cfg: TrainConfig, epoch: int):
    """Eval-mode validation over every image.

    Returns (val_loss, val_map, probs of the first batches holding FIGURE_ROWS images).
    """
    idx, valid = eval_batches(len(arrays["val_images"]), padded_size(cfg.batch_size, trainer.mesh.devices.size))
    epoch_arg = replicate(np.asarray(epoch, np.int32), trainer.replicated)
    totals, first_probs = [], []
    for b in range(len(idx)):
        sums, probs = trainer.eval_step(state["params"], state["batch_stats"], arrays["val_images"], arrays["val_masks"],
                                      shard_batch(idx[b], trainer.batch_sharded),
                                      shard_batch(valid[b], trainer.batch_sharded), epoch_arg)
        if _must_sync_each_step():
            jax.block_until_ready(sums)
        totals.append(sums)
        if len(first_probs) * cfg.batch_size < FIGURE_ROWS:
            first_probs.append(probs)
    totals = jax.device_get(totals)
    count = sum(float(t["count"]) for t in totals)
    val_loss = sum(float(t["loss_sum"]) for t in totals) / count
    val_map = sum(float(t["score_sum"]) for t in totals) / count
    return val_loss, val_map, first_probs


def _starting_val_map(trainer: Trainer, state, arrays, cfg: TrainConfig) -> float:
    """Fine-tuning: the score of the model it starts from, measured like every epoch (eval mode)."""
    return _evaluate(trainer, state, arrays, cfg, 0)[1]


# ---------------------------------------------------------------------------------------------- outputs


class _Logger:
    """metrics.jsonl, TensorBoard (if tensorboardX is importable) and console lines; process 0 only.

    Kept in our hands rather than clu.metric_writers: metrics.jsonl must be rewritten to the
    checkpoint's history on resume (a writer library only appends), clu's TensorBoard writer needs
    TensorFlow (tensorboardX is a small optional extra), and what is left is five add_scalar calls.
    """

    def __init__(self, workdir: pathlib.Path, *, progress: bool):
        self.primary = jax.process_index() == 0
        self.show_progress = self.primary and progress
        self.metrics_path = workdir / "metrics.jsonl"
        self.tb = None
        if self.primary:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                pass
            else:
                self.tb = SummaryWriter(str(workdir / "tensorboard"))

    def info(self, message: str) -> None:
        if self.primary:
            print(message, flush=True)

    def warn(self, message: str) -> None:
        if self.primary:
            warnings.warn(message, stacklevel=2)

    def rewrite_metrics(self, history: list[dict]) -> None:
        """metrics.jsonl = the checkpoint's history (drops epochs after the checkpoint we resume from)."""
        if self.primary:
            with atomic_write(self.metrics_path) as f:
                f.write("".join(json.dumps(r) + "\n" for r in history))

    def epoch(self, record: dict) -> None:
        if not self.primary:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key in ("train_loss", "val_loss", "val_map", "lr", "images_per_s"):
                self.tb.add_scalar(key, record[key], record["epoch"])
        print(f"epoch {record['epoch']:3d} [{record['round']}] train_loss {record['train_loss']:.4f} "
              f"val_loss {record['val_loss']:.4f} val_map {record['val_map']:.4f} lr {record['lr']:.2e} "
              f"{record['images_per_s']:.1f} img/s {record['seconds']:.1f}s (epoch {record['epoch_seconds']:.1f}s)",
              flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _pictures(workdir: pathlib.Path, history: list[dict], data: FoldData, probs, log: _Logger) -> None:
    """curves.png from the history; predictions.png from the first validation images of the last evaluation.

    Multi-process runs skip predictions.png: the batch is spread over processes.
    """
    if not log.primary or not history:
        return
    from salt_jax import viz

    viz.plot_curves(history, workdir / "curves.png")
    if probs is not None and jax.process_count() == 1:
        n = min(FIGURE_ROWS, len(data.val_ids))
        probs = np.concatenate([np.asarray(jax.device_get(p)) for p in probs])
        viz.prediction_grid(geometry.crop(data.val_images[:n]), geometry.crop(data.val_masks[:n]),
                            probs[:n], workdir / "predictions.png",
                            ids=data.val_ids[:n], n=n)
