"""Fine-tuning: the original's last stage, from a trained model into a run of its own.

    python train.py --finetune_from=runs/se_resnext50_32x4d-fold0          # one of our runs (its best/)
    python train.py --finetune_from=runs/orig50-fold0 --fold=0 --data_dir=DIR  # a converted original

The original (torch_training/finetune.py of terkelbo/TGS-Salt-Kaggle-Competition) reloads each
fold's best model and trains it again with the Lovasz loss only: a fresh Adam at lr 1e-6 with
coupled L2 1e-4, batch 12, 75 epochs and a fresh reduce-on-plateau (mode max, patience 10,
factor 0.5), on the same folds. It first scores the reloaded model on the validation fold and
overwrites the model only when an epoch beats that score. `FINETUNE_RECIPE` holds these numbers;
the training loop does the rest (salt_jax.training.loop: the starting score, then "best/ only
when beaten").

The source is either a run directory of ours (config.json, folds.csv, best/) or a model
directory (salt_jax.models.store, e.g. `convert.torch_to_flax --arch unet_...` output). A run gives
its encoder, fold, data and folds.csv, so the fine-tuning validates on exactly the images that
model never trained on; a converted original gives only its architecture, and the fold must be
named (the original's folds are our default split). Fine-tuning writes into its own workdir
(default `<source>-finetune`) and resumes like any run.

Departure: the original scored the reloaded model with BatchNorm still in train mode (its model
is in train mode after loading), so each validation batch was normalised by its own statistics
and the running statistics absorbed the validation set before fine-tuning began. We score it in
eval mode, as every epoch is scored: the number to beat is then the score of the model as saved
and as `predict` uses it, the comparison is like with like, and fine-tuning starts from the
source's own statistics, untouched by validation images.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from salt_jax.errors import UserError
from salt_jax.models import archs, store
from salt_jax.training.config import TrainConfig, load_config_json
from salt_jax.training.workdir import BEST, model_dir

# torch_training/finetune.py: Lovasz from the first epoch (switch at 0), Adam(lr=1e-6,
# weight_decay=1e-4), DataLoader(batch_size=12), epochs [20, 75] with the first round skipped.
FINETUNE_RECIPE: dict[str, Any] = dict(epochs=75, lr=1e-6, batch_size=12, switch_epoch=0, weight_decay=1e-4,
                                       recipe="original", plateau_patience=10, plateau_factor=0.5)


@dataclasses.dataclass(frozen=True)
class Source:
    """What a fine-tuning source fixes. fold/folds_csv/data_dir are None for a bare model."""

    path: pathlib.Path  # absolute; a run directory or a model directory
    encoder: str
    fold: int | None
    folds_csv: str | None
    data_dir: str | None


def read_source(path: str | pathlib.Path) -> Source:
    """Reads a run directory (or its best/) or a saved UNet. Raises ValueError naming the file."""
    path = pathlib.Path(path).absolute()
    if not (path / "config.json").is_file() and path.name == BEST and (path.parent / "config.json").is_file():
        path = path.parent  # RUN/best: the run it belongs to knows the fold and the folds
    try:
        meta = store.read_metadata(model_dir(path))
        arch = archs.parse(meta["arch"])
    except (store.CheckpointError, archs.UnknownArchError) as err:
        raise ValueError(f"--finetune_from: {err}") from None
    if arch.kind != "unet":
        raise ValueError(f"--finetune_from: {path} holds {meta['arch']!r}, not a salt UNet")
    encoder = arch.preset.name
    if not (path / "config.json").is_file():
        return Source(path, encoder, meta.get("fold"), None, None)
    run = load_config_json((path / "config.json").read_text())
    folds = path / "folds.csv"
    if not folds.is_file():
        raise ValueError(f"--finetune_from: {folds} is missing; fine-tuning validates on the run's own folds")
    return Source(path, run.encoder, run.fold, str(folds), run.data_dir)


def finetune_config(source_path: str | pathlib.Path, **given) -> TrainConfig:
    """The TrainConfig of fine-tuning `source_path`: FINETUNE_RECIPE, the source's encoder, fold,
    data and folds, then the fields in `given` (flags typed on the command line).

    Raises ValueError (naming the flag) when `given` contradicts the source.
    """
    src = read_source(source_path)
    problems = []
    if "encoder" in given and given["encoder"] != src.encoder:
        problems.append(f"--encoder={given['encoder']}, but {src.path} holds a {src.encoder} UNet")
    if "fold" in given and src.fold is not None and given["fold"] != src.fold:
        problems.append(f"--fold={given['fold']}, but {src.path} was trained for fold {src.fold}")
    if "fold" not in given and src.fold is None:
        problems.append(f"{src.path} does not say which fold it was trained for: pass --fold")
    if "folds_csv" in given and src.folds_csv is not None:  # one of our runs: its folds are the point
        problems.append(f"--folds_csv: fine-tuning validates on the run's own {src.folds_csv}")
    if given.get("pretrained"):
        problems.append("--pretrained: fine-tuning starts from the whole --finetune_from model")
    if problems:
        raise ValueError("--finetune_from: " + "; ".join(problems))
    fields = {**FINETUNE_RECIPE, "encoder": src.encoder, "fold": src.fold, "folds_csv": src.folds_csv,
              "data_dir": src.data_dir, "workdir": f"{src.path}-finetune", **given, "finetune_from": str(src.path)}
    return TrainConfig(**fields).validate()


def load_start_model(cfg: TrainConfig, dtype: str):
    """The source's model (eval mode), checked against the run's architecture."""
    import jax.numpy as jnp

    source = model_dir(cfg.finetune_from)
    arch = store.read_metadata(source)["arch"]
    if not archs.is_a(arch, "unet", cfg.encoder):
        raise UserError(f"--finetune_from {cfg.finetune_from} holds {arch!r}, but this run is {cfg.arch!r}")
    return store.load(source, dtype=jnp.dtype(dtype))
