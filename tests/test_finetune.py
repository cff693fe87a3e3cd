"""Fine-tuning (`train.py --finetune_from`): the original's stage end to end on the tiny model.

The source is a 1-epoch tiny run on a 40-image synthetic set whose folds.csv is NOT the default
split, so a fine-tuning that re-derived its folds would validate on other images (and score the
starting model differently from the source's own record).
"""

import csv
import json

import numpy as np
import pytest

from salt_jax.data import load_train
from salt_jax.data.synthetic import generate
from salt_jax.models import archs, store
from salt_jax.training import TrainConfig, loop, parse_args, run

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "tgs", n_train=40, n_test=2, seed=3)


@pytest.fixture(scope="module")
def source(data_dir, tmp_path_factory):
    """A finished 1-epoch run on fold 0 of a user-supplied split (id i -> fold i % 5)."""
    root = tmp_path_factory.mktemp("source")
    folds = root / "my_folds.csv"
    with open(folds, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "fold"])
        writer.writerows([i, k % 5] for k, i in enumerate(load_train(data_dir).ids))
    cfg = TrainConfig(encoder="tiny", data_dir=str(data_dir), workdir=str(root / "run"), epochs=1, switch_epoch=1,
                      batch_size=8, lr=1e-3, dtype="float32", progress=False, folds_csv=str(folds))
    return run(cfg)


def folds_of(path) -> list[tuple[str, str]]:
    with open(path, newline="") as f:
        return [(row["id"], row["fold"]) for row in csv.DictReader(f)]


def test_config_is_the_originals_stage_on_the_sources_fold(source):
    cfg = parse_args(["--finetune_from", str(source.workdir)])
    run_cfg = json.loads((source.workdir / "config.json").read_text())
    assert (cfg.encoder, cfg.fold, cfg.data_dir) == ("tiny", 0, run_cfg["data_dir"])
    assert cfg.folds_csv == str(source.workdir / "folds.csv")  # the folds the run used, not its input file
    # torch_training/finetune.py: Lovasz only, Adam(lr=1e-6, weight_decay=1e-4), batch 12, 75 epochs,
    # ReduceLROnPlateau(patience=10, factor=0.5, mode="max").
    recipe = (cfg.switch_epoch, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs)
    assert recipe == (0, 1e-6, 1e-4, 12, 75)
    assert (cfg.recipe, cfg.plateau_patience, cfg.plateau_factor) == ("original", 10, 0.5)
    assert cfg.workdir == f"{source.workdir}-finetune" and cfg.finetune_from == str(source.workdir)
    # RUN/best names the same run; explicit flags still apply.
    assert parse_args(["--finetune_from", str(source.workdir / "best"), "--epochs=3"]) == \
        parse_args(["--finetune_from", str(source.workdir), "--epochs", "3"])


@pytest.mark.parametrize("extra, needle", [
    (["--fold=1"], "was trained for fold 0"),
    (["--encoder=50"], "holds a tiny UNet"),
    (["--folds_csv=x.csv"], "the run's own"),
    (["--pretrained=x"], "--pretrained"),
    (["--demo"], "exclude each other"),
])
def test_contradicting_flags_exit_with_a_message(source, extra, needle, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--finetune_from", str(source.workdir), *extra])
    assert exit_info.value.code == 2
    assert needle in capsys.readouterr().err


def test_bad_sources_exit_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--finetune_from", str(tmp_path / "nothing")])
    assert exit_info.value.code == 2 and "nothing: no salt_jax model checkpoint" in capsys.readouterr().err
    model = tmp_path / "converted"  # what convert.torch_to_flax writes: a model, no fold, no folds
    store.save(model, archs.build("unet_tiny"), arch="unet_tiny")
    with pytest.raises(SystemExit):
        parse_args(["--finetune_from", str(model)])
    assert "pass --fold" in capsys.readouterr().err
    cfg = parse_args(["--finetune_from", str(model), "--fold=2"])
    assert (cfg.encoder, cfg.fold, cfg.folds_csv, cfg.workdir) == ("tiny", 2, None, f"{model}-finetune")
    store.save(tmp_path / "senet", archs.build("se_resnext_tiny"), arch="se_resnext_tiny")
    with pytest.raises(SystemExit):
        parse_args(["--finetune_from", str(tmp_path / "senet"), "--fold=0"])
    assert "not a salt UNet" in capsys.readouterr().err


def test_finetunes_resumes_and_keeps_the_sources_fold(source, tmp_path):
    # Batch 8 as the source run (and tests/test_train_run.py): its compiled steps are reused from the cache.
    argv = ["--finetune_from", str(source.workdir), "--workdir", str(tmp_path / "ft"), "--no_progress", "--batch_size=8"]
    first = run(parse_args([*argv, "--epochs=1"]))
    # The starting model scored on the source's validation fold, in eval mode: the source's own record.
    assert first.start_val_map == pytest.approx(source.best_val_map, abs=1e-6)
    assert folds_of(first.workdir / "folds.csv") == folds_of(source.workdir / "folds.csv")
    resumed = run(parse_args([*argv, "--epochs=2"]))
    assert [r["epoch"] for r in resumed.records] == [0, 1]
    assert [r["round"] for r in resumed.records] == ["lovasz", "lovasz"]
    assert [r["lr"] for r in resumed.records] == [1e-6, 1e-6]
    assert resumed.start_val_map == first.start_val_map  # kept in the checkpoint, not measured again
    beaten = [r for r in resumed.records if r["val_map"] > resumed.start_val_map]
    if beaten:
        assert store.read_metadata(resumed.workdir / "best")["val_map"] == max(r["val_map"] for r in beaten)
    else:
        assert not (resumed.workdir / "best").exists()


@pytest.mark.parametrize("start, written", [(2.0, False), (-1.0, True)])
def test_best_is_written_only_when_the_start_is_beaten(source, tmp_path, monkeypatch, start, written):
    """val_map lies in [0, 1]: a starting score of 2 can never be beaten, one of -1 always is."""
    monkeypatch.setattr(loop, "_starting_val_map", lambda *args: start)
    result = run(parse_args(["--finetune_from", str(source.workdir), "--workdir", str(tmp_path / "ft"),
                             "--epochs=1", "--no_progress", "--batch_size=8"]))
    assert (result.workdir / "best").exists() == written
    assert result.best_val_map == (result.records[0]["val_map"] if written else start)
    assert np.isfinite(result.records[0]["val_map"])
