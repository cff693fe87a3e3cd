"""train.py flags -> TrainConfig, and the host-side lr schedules (no compilation: fast)."""

import dataclasses
import json
import pathlib
import re
import shlex

import pytest

from salt_jax.training.config import TrainConfig, build_parser, load_config_json, parse_args

REPO = pathlib.Path(__file__).resolve().parents[1]


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
    assert cosine.lr == 0.01 and cosine.weight_decay == 2e-4
    assert parse_args([]).weight_decay == 1e-4
    # The same resolution without the command line: the dataclass is the one source of defaults.
    assert (TrainConfig(recipe="cosine").lr, TrainConfig().lr) == (0.01, 1e-4)
    assert parse_args(["--recipe=cosine", "--weight_decay=0"]).weight_decay == 0.0


def test_untyped_flags_take_the_dataclass_defaults():
    cfg = parse_args([])
    assert dataclasses.replace(cfg, workdir=None) == TrainConfig()


def test_every_config_field_has_a_flag():
    dests = {a.dest for a in build_parser()._actions if a.option_strings} - {"help", "demo"}
    assert dests == {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = parse_args(["--recipe=cosine", "--min_lr=1e-4", "--plateau_factor=0.1"])
    assert (cfg.min_lr, cfg.plateau_factor) == (1e-4, 0.1)


def test_original_recipe_options_default_to_the_original():
    cfg = parse_args([])
    assert cfg.fold_rule == "original" and not cfg.original_dice
    cfg = parse_args(["--original_dice", "--fold_rule=validate_tiny"])
    assert cfg.original_dice and cfg.fold_rule == "validate_tiny"
    assert {"original_dice", "fold_rule"} <= set(cfg.identity())  # a resume may not change them


def test_demo_defaults_are_its_documented_choices():
    # docs/RESULTS.md: 14 epochs without augmentation, Lovasz from epoch 7, plateau patience 0.
    cfg = parse_args(["--demo"])
    assert cfg.encoder == "tiny" and cfg.data_dir is None and cfg.workdir == "runs/demo"
    assert (cfg.epochs, cfg.switch_epoch, cfg.batch_size, cfg.lr) == (14, 7, 9, 1e-3)
    assert not cfg.augment and cfg.plateau_patience == 0 and cfg.progress


def test_demo_keeps_explicit_flags():
    # A shorter demo keeps at least its last epoch for the Lovasz round.
    cfg = parse_args(["--demo", "--epochs=2"])
    assert cfg.encoder == "tiny" and cfg.epochs == 2 and cfg.switch_epoch == 1
    assert parse_args(["--demo", "--epochs", "5"]).epochs == 5
    assert cfg.progress and not parse_args(["--demo", "--no_progress"]).progress
    switched_off = parse_args(["--demo", "--no_augment", "--no_progress"])
    assert not switched_off.augment and not switched_off.progress
    assert parse_args(["--demo", "--epochs=2", "--switch_epoch=0"]).switch_epoch == 0
    assert parse_args(["--demo", "--batch_size=6", "--lr=2e-3"]).batch_size == 6


def test_abbreviated_flags_are_refused(capsys):
    # With abbreviations on, argparse read --epo=5 as --epochs=5 while the preset logic did not see
    # it typed, so `--demo --epo=5` trained the demo's 6 epochs.
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--demo", "--epo=5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --epo=5" in err and err.count("\n") == 1, err


def test_old_config_json_with_the_demo_field_still_loads():
    cfg = parse_args(["--demo"])
    old = json.loads(cfg.to_json()) | {"demo": True}  # what versions before issue 14 wrote
    assert load_config_json(json.dumps(old)) == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        load_config_json(json.dumps(old | {"epochz": 3}))


def _documented_commands() -> list[list[str]]:
    """Every `python train.py ...` command in README.md and docs/*.md, continuation lines joined."""
    commands = []
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = path.read_text().replace("\\\n", " ")
        for match in re.finditer(r"python train\.py([^`\n]*)", text):
            commands.append(shlex.split(match.group(1), comments=True))
    return commands


def test_documented_commands_parse():
    commands = _documented_commands()
    assert len(commands) >= 4, commands  # README's run and fine-tune lines, --help, RESULTS' lines
    parser = build_parser()
    for argv in commands:
        if argv == ["--help"]:
            continue
        parser.parse_args(argv)  # flags and values as written (a --finetune_from DIR need not exist here)
        if not any(a.startswith("--finetune_from") for a in argv):
            parse_args(argv)


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
    (["--plateau_factor=1"], "plateau_factor=1.0: expected in (0, 1)"),
    (["--weight_decay=-1"], "must be >= 0"),
    # A cosine cycle from lr 1e-4 to the default min_lr 1e-3 would raise the lr.
    (["--recipe=cosine", "--lr=1e-4"], "lr=0.0001 is below min_lr=0.001"),
    (["--demo", "--recipe=cosine", "--min_lr=0.01"], "is below min_lr=0.01"),
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
    assert parse_args(["--recipe=cosine", "--lr=1e-4", "--min_lr=1e-5"]).lr == 1e-4
