"""TrainConfig: the typed configuration behind `python train.py`, and its command line.

`parse_args(argv)` turns flags into a validated, fully resolved `TrainConfig` (encoder aliases
expanded, workdir and dtype filled in). Everything the training loop reads comes from here, and
the config is written to WORKDIR/config.json so a run can be identified (and refused when a
re-run in the same workdir would mix two different experiments).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from salt_jax.data.folds import FOLD_RULES

ENCODER_ALIASES = {
    "50": "se_resnext50_32x4d",
    "101": "se_resnext101_32x4d",
    "tiny": "tiny",
    "se_resnext50_32x4d": "se_resnext50_32x4d",
    "se_resnext101_32x4d": "se_resnext101_32x4d",
}
RECIPES = ("original", "cosine")
DTYPES = ("float32", "bfloat16")
N_FOLDS = 5

# Fields that define the experiment: resuming a workdir with a different value would silently
# mix two runs, so the loop refuses. (epochs may grow on resume; lr/patience only steer it.)
IDENTITY_FIELDS = ("encoder", "fold", "seed", "recipe", "batch_size", "switch_epoch", "cycle_epochs",
                   "symmetric_lovasz", "augment", "finetune_from", "fold_rule", "original_dice")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. See `build_parser` for what each field means."""

    encoder: str = "se_resnext50_32x4d"
    fold: int = 0
    data_dir: str | None = None  # None: the built-in synthetic dataset
    workdir: str | None = None  # None: default_workdir(encoder, fold, data_dir)
    epochs: int = 120
    switch_epoch: int = 20
    batch_size: int = 10
    lr: float = 1e-4
    weight_decay: float | None = None  # None: the recipe's (1e-4 original, 2e-4 cosine)
    pretrained: str | None = None
    finetune_from: str | None = None  # a run or model directory (salt_jax.training.finetune)
    dtype: str | None = None  # None: bfloat16 on accelerators, float32 on CPU
    seed: int = 0
    folds_csv: str | None = None
    fold_rule: str = "original"
    recipe: str = "original"
    cycle_epochs: int = 50
    min_lr: float = 1e-3  # cosine recipe: end of each cycle
    symmetric_lovasz: bool = False
    augment: bool = True  # False: train on the padded images as they are (debugging, parity tests)
    original_dice: bool = False
    plateau_patience: int = 10
    plateau_factor: float = 0.5
    demo: bool = False
    distributed: bool = False
    progress: bool = True

    @property
    def arch(self) -> str:
        """The models.io architecture name of this run's network."""
        return f"unet_{self.encoder}"

    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 2e-4 if self.recipe == "cosine" else 1e-4

    def identity(self) -> dict:
        """The fields a resumed run must share with the run that wrote the workdir."""
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the offending field; returns self for chaining."""
        problems = []
        if self.encoder not in ENCODER_ALIASES.values():
            problems.append(f"encoder={self.encoder!r}: expected one of {sorted(ENCODER_ALIASES)}")
        if not 0 <= self.fold < N_FOLDS:
            problems.append(f"fold={self.fold}: expected 0..{N_FOLDS - 1}")
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs}: expected >= 1")
        if self.switch_epoch < 0:
            problems.append(f"switch_epoch={self.switch_epoch}: expected >= 0")
        if self.seed < 0:
            problems.append(f"seed={self.seed}: expected >= 0")
        if self.batch_size < 1:
            problems.append(f"batch_size={self.batch_size}: expected >= 1")
        if not self.lr > 0:
            problems.append(f"lr={self.lr}: expected > 0")
        if self.fold_rule not in FOLD_RULES:
            problems.append(f"fold_rule={self.fold_rule!r}: expected one of {FOLD_RULES}")
        if self.recipe not in RECIPES:
            problems.append(f"recipe={self.recipe!r}: expected one of {RECIPES}")
        if self.cycle_epochs < 1:
            problems.append(f"cycle_epochs={self.cycle_epochs}: expected >= 1")
        if self.dtype is not None and self.dtype not in DTYPES:
            problems.append(f"dtype={self.dtype!r}: expected one of {DTYPES}")
        if not 0 < self.plateau_factor < 1:
            problems.append(f"plateau_factor={self.plateau_factor}: expected in (0, 1)")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        return self


def default_workdir(encoder: str, fold: int, data_dir: str | None) -> str:
    """runs/<encoder>-fold<k> for a user's data; runs/synthetic-<encoder>-fold<k> for the built-in
    synthetic set, so forgetting --data_dir once never resumes (or mixes into) a real-data run."""
    return f"runs/{'' if data_dir else 'synthetic-'}{encoder}-fold{fold}"


def demo_config(**overrides) -> TrainConfig:
    """`--demo`: tiny encoder on the synthetic set, sized for `make demo` to finish in 10 minutes
    on a 2-core CPU, virtualenv included.

    10 epochs over the 378 training images of fold 0 (~30 s an epoch on a quiet 2-core CPU),
    batch 9 (it divides 378, so no partial batch costs a second compilation), Adam lr 1e-3.
    Three demo-only departures from the original's recipe, all measured on this set
    (docs/RESULTS.md), because ~4,000 image views are all a CPU affords here:
    - no augmentation: in so few epochs the augmented images only slow the fit (and the
      augmentation costs ~10% of a step);
    - the Lovasz round from epoch 4 (BCE+dice for 4 epochs, or all but the last epoch of a
      shorter run): its margin lifts the logits off the threshold, where BCE+dice leaves them
      and where the eval-mode predictions flip from epoch to epoch;
    - the lr halves after every epoch without a better val_map (plateau patience 0, not 10).
    """
    base = dict(encoder="tiny", epochs=10, batch_size=9, lr=1e-3, dtype="float32", workdir="runs/demo",
                plateau_patience=0, augment=False, demo=True)
    base.update({k: v for k, v in overrides.items() if v is not None})
    base.setdefault("switch_epoch", min(4, base["epochs"] - 1))
    return TrainConfig(**base)


def _encoder(value: str) -> str:
    if value not in ENCODER_ALIASES:
        raise argparse.ArgumentTypeError(f"unknown encoder {value!r}; choose from {sorted(ENCODER_ALIASES)}")
    return ENCODER_ALIASES[value]


def _int_in(lo: int, hi: int | None):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if number < lo or (hi is not None and number > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{number} out of range (expected {bound})")
        return number

    return parse


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value} must be > 0")
    return number


class _OneLineParser(argparse.ArgumentParser):
    """Bad flags are one line on stderr (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="train.py",
        description="Train the salt UNet on one fold (data-parallel over every local device).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--encoder", type=_encoder, default="se_resnext50_32x4d",
                   help="50 | 101 | tiny (or the full names se_resnext50_32x4d, se_resnext101_32x4d)")
    p.add_argument("--fold", type=_int_in(0, N_FOLDS - 1), default=0, help="validation fold 0..4")
    p.add_argument("--data_dir", default=None,
                   help="Kaggle-layout folder (train.csv, train/images, train/masks, depths.csv); "
                        "default: the built-in synthetic set, generated on first use")
    p.add_argument("--workdir", default=None,
                   help="where checkpoints, metrics.jsonl, config.json, best/ go; default runs/<encoder>-fold<k> "
                        "(runs/synthetic-<encoder>-fold<k> without --data_dir). "
                        "Re-running the same command resumes from the latest checkpoint there")
    p.add_argument("--epochs", type=_int_in(1, None), default=120, help="total epochs (both loss rounds)")
    p.add_argument("--switch_epoch", type=_int_in(0, None), default=20,
                   help="first epoch with the Lovasz loss (BCE+dice before); Adam moments reset there")
    p.add_argument("--batch_size", type=_int_in(1, None), default=10,
                   help="GLOBAL batch, split over all devices (sync BatchNorm sees the whole global batch); the "
                        "last partial batch of an epoch is kept, as in the original. A batch that does not "
                        "divide over the devices is padded and the padding masked out of the loss and "
                        "BatchNorm (wasted compute: on many devices prefer a multiple of their count)")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="initial learning rate (default 1e-4 for --recipe=original, 0.01 for cosine)")
    p.add_argument("--weight_decay", type=float, default=None,
                   help="coupled L2 added to the gradient (default 1e-4 original, 2e-4 cosine)")
    p.add_argument("--pretrained", default=None,
                   help="converted ImageNet SE-ResNeXt checkpoint dir (convert/torch_to_flax.py); "
                        "without it the encoder starts from random weights")
    p.add_argument("--finetune_from", default=None, metavar="DIR",
                   help="the original's fine-tuning stage from a run's best model (a run directory: its fold and "
                        "folds.csv are reused) or from a converted model (with --fold): Lovasz only, Adam lr 1e-6, "
                        "batch 12, 75 epochs, fresh plateau; best/ only when the starting val_map is beaten. "
                        "Default workdir DIR-finetune; other flags given explicitly still apply")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="compute dtype (parameters stay float32); default bfloat16 on GPU/TPU, float32 on CPU")
    p.add_argument("--seed", type=_int_in(0, None), default=0, help="initialisation, shuffling and augmentation seed")
    p.add_argument("--folds_csv", default=None,
                   help="your own folds (columns id,fold; fold -1 = unused); default: --fold_rule's split")
    p.add_argument("--fold_rule", choices=FOLD_RULES, default="original",
                   help="original: ids with 1-9 salt pixels are left out, the rest split into the original's "
                        "stratified 5 folds; validate_tiny: every id is split and the tiny masks are validated "
                        "on (never trained on): other folds than the original's")
    p.add_argument("--recipe", choices=RECIPES, default="original",
                   help="original: Adam + reduce-on-plateau; cosine: SGD momentum 0.9, cosine cycles "
                        "lr -> 0.001 with a snapshot per cycle (the top solutions' recipe)")
    p.add_argument("--cycle_epochs", type=_int_in(1, None), default=50, help="cosine recipe: epochs per cycle")
    p.add_argument("--symmetric_lovasz", action="store_true",
                   help="use (L(x,y) + L(-x,1-y))/2 as the Lovasz loss")
    p.add_argument("--no_augment", action="store_true",
                   help="train without the augmentation chain (the original always augments): to debug a run, "
                        "or to check a training step against another implementation")
    p.add_argument("--original_dice", action="store_true",
                   help="the original's dice, which applies the sigmoid twice (its seg_loss passes "
                        "probabilities to a dice that applies sigmoid again); default: the correct dice")
    p.add_argument("--plateau_patience", type=_int_in(0, None), default=10,
                   help="original recipe: epochs without val_map gain before halving the lr")
    p.add_argument("--distributed", action="store_true",
                   help="multi-process run: call jax.distributed.initialize() (coordinator from the "
                        "environment, e.g. JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (logs only)")
    p.add_argument("--demo", action="store_true",
                   help="tiny encoder, synthetic data, 6 epochs of batch 8 with the lr halved after every epoch "
                        "without gain and Lovasz on the last: a few minutes on a CPU; other flags given "
                        "explicitly still apply")
    return p


# Flags that switch a TrainConfig field off: argparse dest -> field (so --demo keeps them too).
_NEGATED = {"no_augment": "augment", "no_progress": "progress"}


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Flags -> validated TrainConfig. Exits with a usage message on bad values (argparse)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    explicit = {_NEGATED.get(a.dest, a.dest) for a in parser._actions if a.option_strings and _given(a, argv)}
    fields = dict(
        encoder=args.encoder, fold=args.fold, data_dir=args.data_dir, workdir=args.workdir,
        epochs=args.epochs, switch_epoch=args.switch_epoch, batch_size=args.batch_size, lr=args.lr,
        weight_decay=args.weight_decay, pretrained=args.pretrained, dtype=args.dtype, seed=args.seed,
        folds_csv=args.folds_csv, fold_rule=args.fold_rule, recipe=args.recipe, cycle_epochs=args.cycle_epochs,
        symmetric_lovasz=args.symmetric_lovasz, original_dice=args.original_dice, augment=not args.no_augment,
        plateau_patience=args.plateau_patience,
        distributed=args.distributed, progress=not args.no_progress,
    )
    if args.finetune_from:
        from salt_jax.training.finetune import finetune_config

        if args.demo:
            parser.error("--demo and --finetune_from exclude each other")
        try:
            cfg = finetune_config(args.finetune_from, **{k: v for k, v in fields.items() if k in explicit})
        except ValueError as err:
            parser.error(str(err))
    elif args.demo:
        cfg = demo_config(**{k: v for k, v in fields.items() if k in explicit})
    else:
        if fields["lr"] is None:
            fields["lr"] = 0.01 if args.recipe == "cosine" else 1e-4
        cfg = TrainConfig(**fields)
    if cfg.workdir is None:
        cfg = dataclasses.replace(cfg, workdir=default_workdir(cfg.encoder, cfg.fold, cfg.data_dir))
    try:
        return cfg.validate()
    except ValueError as err:
        parser.error(str(err))


def _given(action: argparse.Action, argv: Sequence[str] | None) -> bool:
    """Whether a flag was typed on the command line (so --demo does not override it)."""
    tokens = sys.argv[1:] if argv is None else list(argv)
    return any(t == opt or t.startswith(opt + "=") for t in tokens for opt in action.option_strings)


def load_config_json(text: str) -> TrainConfig:
    """Inverse of TrainConfig.to_json (unknown keys are an error naming them)."""
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config.json has unknown fields {unknown}")
    return TrainConfig(**data)
