"""TrainConfig: the typed configuration behind `python train.py`, and its command line.

The dataclass holds every default; the parser adds one flag per field and no defaults of its own
(a flag not typed is absent from the parsed namespace), so `parse_args(argv)` builds
`TrainConfig(**typed flags)` or a preset (`--demo`, `--finetune_from`) overridden by the typed
flags, then validates it: bad values and invalid combinations are one line and exit status 2.
Abbreviated flags are refused (`--epo=5` is not `--epochs=5`), so a script's flags keep their
meaning when a flag is added. Everything the training loop reads comes from here, and the config
is written to WORKDIR/config.json so a run can be identified (and refused when a re-run in the
same workdir would mix two different experiments).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Sequence

from salt_jax.data.folds import FOLD_RULES
from salt_jax.models import archs, presets

RECIPES = ("original", "cosine")
# The lr and coupled L2 of each recipe when not given (lr=None / weight_decay=None).
RECIPE_DEFAULTS = {"original": {"lr": 1e-4, "weight_decay": 1e-4}, "cosine": {"lr": 0.01, "weight_decay": 2e-4}}
DTYPES = ("float32", "bfloat16")
N_FOLDS = 5

# Fields that define the experiment: resuming a workdir with a different value would silently
# mix two runs, so the loop refuses. (epochs may grow on resume; lr/patience only steer it.)
IDENTITY_FIELDS = ("encoder", "fold", "seed", "recipe", "batch_size", "switch_epoch", "cycle_epochs",
                   "symmetric_lovasz", "augment", "finetune_from", "fold_rule", "original_dice")
# Fields that config.json files of older versions hold and TrainConfig no longer has.
RETIRED_FIELDS = ("demo",)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run; the defaults are the original's recipe. `build_parser` says what each field means.

    lr and weight_decay left None take the recipe's (RECIPE_DEFAULTS) when the config is made.
    """

    encoder: str = "se_resnext50_32x4d"
    fold: int = 0
    data_dir: str | None = None  # None: the built-in synthetic dataset
    workdir: str | None = None  # None: default_workdir(encoder, fold, data_dir)
    epochs: int = 120
    switch_epoch: int = 20
    batch_size: int = 10
    lr: float | None = None  # None: the recipe's (1e-4 original, 0.01 cosine)
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
    distributed: bool = False
    progress: bool = True

    def __post_init__(self):
        for name, value in RECIPE_DEFAULTS.get(self.recipe, {}).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)  # frozen: set once, while being made

    @property
    def arch(self) -> str:
        """The saved-model architecture name of this run's network (salt_jax.models.archs)."""
        return archs.UNET_PREFIX + self.encoder

    def identity(self) -> dict:
        """The fields a resumed run must share with the run that wrote the workdir."""
        return {name: getattr(self, name) for name in IDENTITY_FIELDS}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the offending field; returns self for chaining."""
        problems = []
        if self.encoder not in presets.names():
            problems.append(f"encoder={self.encoder!r}: expected one of {presets.names()}")
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
        if self.lr is None or not self.lr > 0:  # None: an unknown recipe left it unresolved
            problems.append(f"lr={self.lr}: expected > 0")
        if self.weight_decay is None or not self.weight_decay >= 0:
            problems.append(f"weight_decay={self.weight_decay}: expected >= 0")
        if self.fold_rule not in FOLD_RULES:
            problems.append(f"fold_rule={self.fold_rule!r}: expected one of {FOLD_RULES}")
        if self.recipe not in RECIPES:
            problems.append(f"recipe={self.recipe!r}: expected one of {RECIPES}")
        if self.cycle_epochs < 1:
            problems.append(f"cycle_epochs={self.cycle_epochs}: expected >= 1")
        if not self.min_lr >= 0:
            problems.append(f"min_lr={self.min_lr}: expected >= 0")
        if self.recipe == "cosine" and self.lr is not None and self.lr < self.min_lr:
            # Each cycle would anneal from lr *up* to min_lr: never what a cosine schedule means.
            problems.append(f"lr={self.lr} is below min_lr={self.min_lr}: a cosine cycle would raise the lr; "
                            f"give an lr >= min_lr (or lower --min_lr)")
        if self.dtype is not None and self.dtype not in DTYPES:
            problems.append(f"dtype={self.dtype!r}: expected one of {DTYPES}")
        if self.plateau_patience < 0:
            problems.append(f"plateau_patience={self.plateau_patience}: expected >= 0")
        if not 0 < self.plateau_factor < 1:
            problems.append(f"plateau_factor={self.plateau_factor}: expected in (0, 1)")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        return self


def default_workdir(encoder: str, fold: int, data_dir: str | None) -> str:
    """runs/<encoder>-fold<k> for a user's data; runs/synthetic-<encoder>-fold<k> for the built-in
    synthetic set, so forgetting --data_dir once never resumes (or mixes into) a real-data run."""
    return f"runs/{'' if data_dir else 'synthetic-'}{encoder}-fold{fold}"


# `--demo`: three demo-only departures from the original's recipe, all measured on the synthetic
# set (docs/RESULTS.md), because ~5,000 image views are all a CPU's 10 minutes afford there:
# - no augmentation: in so few epochs the augmented images only slow the fit (and the
#   augmentation costs ~10% of a step);
# - the Lovasz round from epoch 7 (switch_epoch = min(DEMO_SWITCH_EPOCH, epochs - 1) unless
#   given): BCE+dice first finds the salt, then the hinge's margin lifts the logits off the
#   threshold, where BCE+dice leaves them and where the eval-mode predictions flip from epoch to
#   epoch (epoch 4 or 6 scored lower at the end of the same budget);
# - the lr halves after every epoch without a better val_map (plateau patience 0, not 10).
DEMO_PRESET = dict(encoder="tiny", epochs=14, batch_size=9, lr=1e-3, dtype="float32", workdir="runs/demo",
                   plateau_patience=0, augment=False)
DEMO_SWITCH_EPOCH = 7


def demo_config(**overrides) -> TrainConfig:
    """`--demo`: tiny encoder on the synthetic set, sized for `make demo` to finish in 10 minutes
    on a 2-core CPU, virtualenv included.

    14 epochs over the 378 training images of fold 0 (~33 s an epoch on a quiet 2-core CPU),
    batch 9 (it divides 378, so no partial batch costs a second compilation), Adam lr 1e-3, and
    the departures of DEMO_PRESET. `overrides` (typed flags) win.
    """
    fields = {**DEMO_PRESET, **overrides}
    fields.setdefault("switch_epoch", min(DEMO_SWITCH_EPOCH, fields["epochs"] - 1))
    return TrainConfig(**fields)


def _encoder(value: str) -> str:
    try:
        return presets.get(value).name
    except presets.UnknownPresetError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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


def _float_above(lo: float, *, inclusive: bool = False):
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not (number >= lo if inclusive else number > lo):
            raise argparse.ArgumentTypeError(f"{value} must be {'>=' if inclusive else '>'} {lo:g}")
        return number

    return parse


class _OneLineParser(argparse.ArgumentParser):
    """Bad flags are one line on stderr (no usage block) and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def _field_flag(p: argparse.ArgumentParser, name: str, help: str, *, flag: str | None = None, **kwargs) -> None:
    """`--name` for TrainConfig.`name`: no parser default (an untyped flag stays out of the
    namespace); the help shows the dataclass default unless `help` already says it or the flag
    is a switch."""
    if "default" not in help and "action" not in kwargs:
        help = f"{help} (default: {_DEFAULTS[name]})"
    p.add_argument(flag or f"--{name}", dest=name, default=argparse.SUPPRESS, help=help, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="train.py",
        description="Train the salt UNet on one fold (data-parallel over every local device).",
        allow_abbrev=False,
    )
    _field_flag(p, "encoder", "an architecture preset (salt_jax/models/presets.py): " + " | ".join(presets.choices()),
                type=_encoder)
    _field_flag(p, "fold", f"validation fold 0..{N_FOLDS - 1}", type=_int_in(0, N_FOLDS - 1))
    _field_flag(p, "data_dir", "Kaggle-layout folder (train.csv, train/images, train/masks, depths.csv); "
                               "default: the built-in synthetic set, generated on first use")
    _field_flag(p, "workdir", "where checkpoints, metrics.jsonl, config.json, best/ go; default runs/<encoder>-fold<k> "
                              "(runs/synthetic-<encoder>-fold<k> without --data_dir). "
                              "Re-running the same command resumes from the latest checkpoint there")
    _field_flag(p, "epochs", "total epochs (both loss rounds)", type=_int_in(1, None))
    _field_flag(p, "switch_epoch", "first epoch with the Lovasz loss (BCE+dice before); Adam moments reset there",
                type=_int_in(0, None))
    _field_flag(p, "batch_size", "GLOBAL batch, split over all devices (sync BatchNorm sees the whole global batch); the "
                                 "last partial batch of an epoch is kept, as in the original. A batch that does not "
                                 "divide over the devices is padded and the padding masked out of the loss and "
                                 "BatchNorm (wasted compute: on many devices prefer a multiple of their count)",
                type=_int_in(1, None))
    by_recipe = {name: ", ".join(f"{v[name]:g} {r}" for r, v in RECIPE_DEFAULTS.items()) for name in ("lr", "weight_decay")}
    _field_flag(p, "lr", f"initial learning rate (default by --recipe: {by_recipe['lr']})",
                type=_float_above(0))
    _field_flag(p, "weight_decay", f"coupled L2 added to the gradient (default by --recipe: {by_recipe['weight_decay']})",
                type=_float_above(0, inclusive=True))
    _field_flag(p, "pretrained", "converted ImageNet SE-ResNeXt checkpoint dir (convert/torch_to_flax.py); "
                                 "without it the encoder starts from random weights (default: none)")
    _field_flag(p, "finetune_from", "the original's fine-tuning stage from a run's best model (a run directory: its "
                                    "fold and folds.csv are reused) or from a converted model (with --fold): Lovasz "
                                    "only, Adam lr 1e-6, batch 12, 75 epochs, fresh plateau; best/ only when the "
                                    "starting val_map is beaten. Default workdir DIR-finetune; other flags given "
                                    "explicitly still apply (default: none)", metavar="DIR")
    _field_flag(p, "dtype", "compute dtype (parameters stay float32); default bfloat16 on GPU/TPU, float32 on CPU",
                choices=DTYPES)
    _field_flag(p, "seed", "initialisation, shuffling and augmentation seed", type=_int_in(0, None))
    _field_flag(p, "folds_csv", "your own folds (columns id,fold; fold -1 = unused); default: --fold_rule's split")
    _field_flag(p, "fold_rule", "original: ids with 1-9 salt pixels are left out, the rest split into the original's "
                                "stratified 5 folds; validate_tiny: every id is split and the tiny masks are "
                                "validated on (never trained on): other folds than the original's",
                choices=FOLD_RULES)
    _field_flag(p, "recipe", "original: Adam + reduce-on-plateau; cosine: SGD momentum 0.9, cosine cycles "
                             "lr -> --min_lr with a snapshot per cycle (the top solutions' recipe)", choices=RECIPES)
    _field_flag(p, "cycle_epochs", "cosine recipe: epochs per cycle", type=_int_in(1, None))
    _field_flag(p, "min_lr", "cosine recipe: the lr each cycle anneals to (at most --lr)",
                type=_float_above(0, inclusive=True))
    _field_flag(p, "symmetric_lovasz", "use (L(x,y) + L(-x,1-y))/2 as the Lovasz loss", action="store_true")
    _field_flag(p, "augment", "train without the augmentation chain (the original always augments): to debug a run, "
                              "or to check a training step against another implementation",
                flag="--no_augment", action="store_false")
    _field_flag(p, "original_dice", "the original's dice, which applies the sigmoid twice (its seg_loss passes "
                                    "probabilities to a dice that applies sigmoid again); default: the correct dice",
                action="store_true")
    _field_flag(p, "plateau_patience", "original recipe: epochs without val_map gain before the lr is cut",
                type=_int_in(0, None))
    _field_flag(p, "plateau_factor", "original recipe: the lr is multiplied by this on a plateau (0 < f < 1)",
                type=_float_above(0))
    _field_flag(p, "distributed", "multi-process run: call jax.distributed.initialize() (coordinator from the "
                                  "environment, e.g. JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID)",
                action="store_true")
    _field_flag(p, "progress", "no progress bar (logs only)", flag="--no_progress", action="store_false")
    p.add_argument("--demo", action="store_true",
                   help=f"tiny encoder, synthetic data, {DEMO_PRESET['epochs']} epochs of batch "
                        f"{DEMO_PRESET['batch_size']} without augmentation, Lovasz from epoch {DEMO_SWITCH_EPOCH}, the lr halved after "
                        f"every epoch without gain: minutes on a CPU; other flags given explicitly still apply")
    return p


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Flags -> validated TrainConfig. Bad values or combinations: one line on stderr, exit 2."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))  # only the flags typed (no parser defaults)
    demo = given.pop("demo")
    try:
        if given.get("finetune_from"):
            from salt_jax.training.finetune import finetune_config

            if demo:
                raise ValueError("--demo and --finetune_from exclude each other")
            cfg = finetune_config(given.pop("finetune_from"), **given)
        elif demo:
            cfg = demo_config(**given)
        else:
            cfg = TrainConfig(**given)
        if cfg.workdir is None:
            cfg = dataclasses.replace(cfg, workdir=default_workdir(cfg.encoder, cfg.fold, cfg.data_dir))
        return cfg.validate()
    except ValueError as err:
        parser.error(str(err))


def load_config_json(text: str) -> TrainConfig:
    """Inverse of TrainConfig.to_json (unknown keys are an error naming them).

    Tolerates the fields that older versions wrote and that no longer exist ("demo": the demo is
    a preset of values, which the file holds anyway), so their workdirs still resume.
    """
    data = json.loads(text)
    for retired in RETIRED_FIELDS:
        data.pop(retired, None)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"config.json has unknown fields {unknown}")
    return TrainConfig(**data)
