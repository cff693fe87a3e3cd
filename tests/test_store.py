"""salt_jax.models.store: round trip, atomic replacement, crash recovery, clear errors."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from salt_jax.models import archs, store

pytestmark = pytest.mark.timeout(120)
ARCH = "se_resnext_tiny"
KWARGS = {"num_classes": 5}


def random_model(seed: int) -> nnx.Module:
    """The tiny SENet with every state leaf drawn at random (positive variances); no eager init."""
    graphdef, state = nnx.split(archs.build(ARCH, KWARGS, abstract=True))
    rng = np.random.default_rng(seed)
    pure = jax.tree.map(lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def leaves(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


def same_state(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


def test_round_trip(tmp_path):
    model = random_model(0)
    store.save(tmp_path / "m", model, arch=ARCH, model_kwargs=KWARGS, metadata={"note": "round trip"})
    loaded = store.load(tmp_path / "m")
    assert same_state(loaded, model)
    assert loaded.layer1[0].bn1.use_running_average  # eval mode
    assert store.read_metadata(tmp_path / "m")["note"] == "round trip"
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(nnx.jit(lambda m, x: m(x))(loaded, x), nnx.jit(lambda m, x: m(x))(nnx.view(model, use_running_average=True), x))
    assert store.load(tmp_path / "m", dtype=jnp.bfloat16).dtype == jnp.bfloat16


def test_save_replaces_and_leaves_no_siblings(tmp_path):
    store.save(tmp_path / "m", random_model(0), arch=ARCH, model_kwargs=KWARGS)
    newer = random_model(1)
    store.save(tmp_path / "m", newer, arch=ARCH, model_kwargs=KWARGS)
    assert same_state(store.load(tmp_path / "m"), newer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


@pytest.mark.parametrize("crash_at_rename", [1, 2])
def test_crash_during_replacement_keeps_a_loadable_checkpoint(tmp_path, monkeypatch, crash_at_rename):
    """Rename 1 moves the old directory aside, rename 2 moves the new one into place."""
    old, new = random_model(0), random_model(1)
    store.save(tmp_path / "m", old, arch=ARCH, model_kwargs=KWARGS)
    real_rename, calls = pathlib.Path.rename, []

    def crashing_rename(self, target):
        calls.append(target)
        if len(calls) == crash_at_rename:
            raise KeyboardInterrupt("simulated crash")
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", crashing_rename)
    with pytest.raises(KeyboardInterrupt):
        store.save(tmp_path / "m", new, arch=ARCH, model_kwargs=KWARGS)
    monkeypatch.undo()
    # Before rename 1 the old checkpoint is intact; between the renames the complete new one is found.
    assert same_state(store.load(tmp_path / "m"), old if crash_at_rename == 1 else new)
    store.save(tmp_path / "m", old, arch=ARCH, model_kwargs=KWARGS)  # the next save cleans up
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_training_workdir_stands_for_its_best_model(tmp_path):
    from salt_jax.training.workdir import model_dir

    run = tmp_path / "run"
    store.save(run / "best", random_model(2), arch=ARCH, model_kwargs=KWARGS)
    (run / "metrics.jsonl").write_text("{}\n")
    assert model_dir(run) == run / "best" and model_dir(run / "best") == run / "best"
    from salt_jax import models  # the README's `models.load(RUN)`: a run stands for its best model

    assert same_state(models.load(run), random_model(2)) and same_state(models.load(run / "best"), random_model(2))
    (run / "best").rename(run / ".best.previous")  # a save of best/ that crashed between its renames
    assert model_dir(run) == run / "best" and store.find(model_dir(run)) == run / ".best.previous"
    with pytest.raises(store.CheckpointError, match="no salt_jax model checkpoint"):
        store.load(run)  # a workdir is not a saved model


@pytest.mark.parametrize("make", [lambda p: p.mkdir(), lambda p: None, lambda p: (p.mkdir(), (p / "metadata.json").write_text("{}"))])
def test_not_a_checkpoint_is_a_clear_error(tmp_path, make):
    path = tmp_path / "nothing"
    make(path)
    with pytest.raises(store.CheckpointError, match=r"nothing: no salt_jax model checkpoint \(expected metadata.json"):
        store.load(path)


def test_unknown_arch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown arch 'resnet9'"):
        store.save(tmp_path / "m", random_model(0), arch="resnet9")


@pytest.mark.parametrize("existing", ["user_dir", "user_file", "user_sibling"])
def test_save_never_replaces_what_it_did_not_write(tmp_path, existing):
    """A non-empty directory or a file that is not one of our checkpoints is refused, untouched."""
    target = tmp_path / "m"
    if existing == "user_dir":
        target.mkdir()
        (target / "w.pth").write_bytes(b"the user's weights")
        victim = target / "w.pth"
    elif existing == "user_file":
        target.write_bytes(b"the user's file")
        victim = target
    else:  # a user's directory that happens to carry the name save uses for its old copy
        store.save(target, random_model(0), arch=ARCH, model_kwargs=KWARGS)
        victim = tmp_path / ".m.previous" / "notes.txt"
        victim.parent.mkdir()
        victim.write_bytes(b"notes")
    before = victim.read_bytes()
    with pytest.raises(store.OverwriteError, match=r"refusing to replace it") as err:
        store.save(target, random_model(1), arch=ARCH, model_kwargs=KWARGS)
    assert "\n" not in str(err.value)
    assert victim.read_bytes() == before
    assert not (tmp_path / ".m.saving").exists()


def test_save_replaces_an_empty_directory(tmp_path):
    (tmp_path / "m").mkdir()
    model = random_model(3)
    store.save(tmp_path / "m", model, arch=ARCH, model_kwargs=KWARGS)
    assert same_state(store.load(tmp_path / "m"), model)
