"""train.py flags -> TrainConfig, and the host-side lr schedules (no compilation: fast)."""

import math

import pytest

from salt_jax.training.config import TrainConfig, parse_args
from salt_jax.training.plateau import ReduceOnPlateau, cosine_cycle_lr


def test_encoder_aliases_and_default_workdir():
    cfg = parse_args(["--encoder=101", "--fold=2"])
    assert cfg.encoder == "se_resnext101_32x4d" and cfg.fold == 2
    # Without --data_dir the run trains on the synthetic set: its default workdir says so, so that
    # forgetting --data_dir once never resumes a real-data run with synthetic data.
    assert cfg.workdir == "runs/synthetic-se_resnext101_32x4d-fold2"
    assert parse_args(["--encoder=101", "--fold=2", "--data_dir=/d"]).workdir == "runs/se_resnext101_32x4d-fold2"
    assert cfg.epochs == 120 and cfg.switch_epoch == 20 and cfg.batch_size == 10 and cfg.lr == 1e-4
    assert parse_args(["--encoder", "se_resnext50_32x4d"]).arch == "unet_se_resnext50_32x4d"


def test_recipe_defaults():
    cosine = parse_args(["--recipe=cosine"])
    assert cosine.lr == 0.01 and cosine.resolved_weight_decay() == 2e-4
    assert parse_args([]).resolved_weight_decay() == 1e-4


def test_original_recipe_options_default_to_the_original():
    cfg = parse_args([])
    assert cfg.fold_rule == "original" and not cfg.original_dice
    cfg = parse_args(["--original_dice", "--fold_rule=validate_tiny"])
    assert cfg.original_dice and cfg.fold_rule == "validate_tiny"
    assert {"original_dice", "fold_rule"} <= set(cfg.identity())  # a resume may not change them


def test_demo_defaults_are_its_documented_choices():
    # docs/RESULTS.md: 10 epochs without augmentation, Lovasz from epoch 4, plateau patience 0.
    cfg = parse_args(["--demo"])
    assert cfg.demo and cfg.encoder == "tiny" and cfg.data_dir is None and cfg.workdir == "runs/demo"
    assert (cfg.epochs, cfg.switch_epoch, cfg.batch_size, cfg.lr) == (10, 4, 9, 1e-3)
    assert not cfg.augment and cfg.plateau_patience == 0 and cfg.progress


def test_demo_keeps_explicit_flags():
    # A shorter demo keeps at least its last epoch for the Lovasz round.
    cfg = parse_args(["--demo", "--epochs=2"])
    assert cfg.demo and cfg.encoder == "tiny" and cfg.epochs == 2 and cfg.switch_epoch == 1
    assert parse_args(["--demo", "--epochs=2", "--switch_epoch=0"]).switch_epoch == 0
    assert parse_args(["--demo", "--batch_size=6", "--lr=2e-3"]).batch_size == 6
    assert not parse_args(["--demo", "--no_progress"]).progress


def test_augmentation_is_on_unless_switched_off():
    assert parse_args([]).augment and not parse_args(["--no_augment"]).augment


@pytest.mark.parametrize("argv, needle", [
    (["--encoder=152"], "unknown encoder"),
    (["--fold=5"], "out of range"),
    (["--fold=x"], "not an integer"),
    (["--epochs=0"], "out of range"),
    (["--lr=-1"], "must be > 0"),
    (["--recipe=adamw"], "invalid choice"),
    (["--dtype=float16"], "invalid choice"),
    (["--batch_size=0"], "out of range"),
    (["--seed=-1"], "--seed: -1 out of range"),
    (["--fold_rule=all"], "invalid choice"),
])
def test_bad_flags_exit_with_a_message(argv, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("train.py: error: ") and err.count("\n") == 1, err


def test_config_validate_names_the_field():
    with pytest.raises(ValueError, match="fold=7"):
        TrainConfig(fold=7).validate()


def test_plateau_matches_torch_rule_by_hand():
    # mode max, patience 2, factor 0.5: the lr halves on the 3rd epoch without a new best.
    p = ReduceOnPlateau(lr=1.0, patience=2, factor=0.5)
    lrs = [p.step(m) for m in (0.5, 0.6, 0.6, 0.59, 0.6, 0.7, 0.7)]
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    # An improvement below the relative threshold (1e-4) does not count.
    q = ReduceOnPlateau(lr=1.0, patience=0, factor=0.5, best=0.5)
    assert q.step(0.50001) == 0.5


def test_cosine_cycles_restart():
    lr = [cosine_cycle_lr(e, max_lr=0.01, min_lr=0.001, cycle_epochs=4) for e in range(9)]
    assert all(math.isclose(lr[e], 0.01) for e in (0, 4, 8))
    assert math.isclose(lr[2], 0.0055)
    assert all(a > b for a, b in zip(lr[:3], lr[1:4]))
