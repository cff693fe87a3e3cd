"""Damaged training checkpoints and saved models: detected, reported in one line, never trusted.

Each damage is made to the files orbax wrote, as a disk error, an interrupted copy or a stray
edit would: a truncated data file, an empty metadata file, a missing manifest, one flipped bit.
"""

from __future__ import annotations

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from salt_jax.models import archs, store
from salt_jax.training.checkpoint import DAMAGED, Checkpoints, NoIntactCheckpointError

pytestmark = pytest.mark.timeout(300)


def make_state(k: float) -> dict:
    """A small train-state-like pytree; values differ per checkpoint."""
    return {"params": {"w": jnp.arange(2000, dtype=jnp.float32) * 0.01 + k, "b": jnp.full((7,), k)},
            "step": jnp.asarray(int(k), jnp.int32)}


def data_files(state_dir: pathlib.Path) -> list[pathlib.Path]:
    """orbax's array data files under a checkpoint item, largest first."""
    return sorted((p for p in state_dir.glob("ocdbt.process_*/d/*") if p.is_file()), key=lambda p: -p.stat().st_size)


def flip_a_bit_that_loads_silently(state_dir: pathlib.Path, like) -> None:
    """Flips one bit of the largest data file, choosing a bit after which orbax still restores
    (other values, no error): the case that only the checksums can catch. The data is zstd
    compressed, so most single-bit flips decode silently; the first candidate usually works."""
    path = data_files(state_dir)[0]
    original = path.read_bytes()
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), like)
    for bit in range(len(original) * 8 // 2, len(original) * 8, 13):
        damaged = bytearray(original)
        damaged[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(damaged))
        try:
            with ocp.StandardCheckpointer() as c:
                restored = c.restore(state_dir, target)
        except Exception:  # noqa: BLE001 - a flip orbax detects itself; try the next bit
            continue
        if any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(like))):
            return
    raise AssertionError("no silently loading bit flip found")


DAMAGES = {
    "truncated_data_file": lambda d, like: data_files(d)[0].write_bytes(data_files(d)[0].read_bytes()[:50]),
    "empty_array_metadata": lambda d, like: (d / "_METADATA").write_text(""),
    "empty_meta_item": lambda d, like: (d.parent / "meta" / "metadata").write_text(""),
    "missing_manifest": lambda d, like: (d / "manifest.ocdbt").unlink(),
    "one_flipped_bit": flip_a_bit_that_loads_silently,
}


@pytest.fixture()
def two_checkpoints(tmp_path):
    ckpt = Checkpoints(tmp_path / "w" / "checkpoints")
    for step in (1, 2):
        ckpt.save(step, make_state(step), {"next_epoch": step})
    ckpt.close()
    return tmp_path / "w"


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_is_reported_and_the_previous_one_resumed(two_checkpoints, damage):
    workdir = two_checkpoints
    DAMAGES[damage](workdir / "checkpoints" / "2" / "state", make_state(2))
    ckpt, lines = Checkpoints(workdir / "checkpoints"), []
    state, meta = ckpt.restore_latest(make_state(0), report=lines.append)
    ckpt.close()
    assert meta["next_epoch"] == 1
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(make_state(1))):
        np.testing.assert_array_equal(a, b)
    assert len(lines) == 2 and all("\n" not in line for line in lines), lines
    assert f"damaged checkpoint {workdir / 'checkpoints' / '2'}: " in lines[0]
    # The damaged checkpoint is kept, out of the way of the step the run writes next.
    assert (workdir / DAMAGED / "2" / "state").is_dir()
    assert Checkpoints(workdir / "checkpoints").latest_step() == 1


def test_none_intact_says_so_and_how_to_start_over(two_checkpoints):
    workdir = two_checkpoints
    for step in ("1", "2"):
        DAMAGES["missing_manifest"](workdir / "checkpoints" / step / "state", None)
    ckpt, lines = Checkpoints(workdir / "checkpoints"), []
    with pytest.raises(NoIntactCheckpointError, match=r"no intact checkpoint in .*to start over, move") as err:
        ckpt.restore_latest(make_state(0), report=lines.append)
    ckpt.close()
    assert "\n" not in str(err.value) and len(lines) == 2
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]  # nothing moved


# ---------------------------------------------------------------------------- saved models (best/, converted)


@pytest.fixture()
def saved_model(tmp_path):
    model = archs.build("se_resnext_tiny", {"num_classes": 3}, seed=0)
    return store.save(tmp_path / "best", model, arch="se_resnext_tiny", model_kwargs={"num_classes": 3}), model


@pytest.mark.parametrize("damage", ["truncated_data_file", "missing_manifest", "one_flipped_bit", "empty_metadata"])
def test_damaged_saved_model_fails_its_load_in_one_line(saved_model, damage):
    from flax import nnx

    path, model = saved_model
    if damage == "empty_metadata":
        (path / "metadata.json").write_text("")
    else:
        DAMAGES[damage](path / "state", nnx.to_pure_dict(nnx.state(model)))
    with pytest.raises(store.CheckpointError, match=f"^{path}") as err:
        store.load(path)
    assert "\n" not in str(err.value) and "damaged" in str(err.value)


def test_model_without_checksums_is_refused(saved_model):
    path, _ = saved_model
    meta = store.read_metadata(path)
    del meta["checksums"]
    (path / "metadata.json").write_text(__import__("json").dumps(meta))
    with pytest.raises(store.CheckpointError, match="without array checksums"):
        store.load(path)
    shutil.rmtree(path)


def test_a_checkpoint_from_before_the_batch_stats_rename_resumes(tmp_path):
    # Older code stored the BatchNorm statistics under "rest"; such a workdir resumes, exactly.
    with_stats = lambda k: {**make_state(k), "batch_stats": {"mean": jnp.full((5,), k + 0.5)}}
    state = with_stats(3)
    old = {("rest" if key == "batch_stats" else key): v for key, v in state.items()}
    ckpt = Checkpoints(tmp_path / "checkpoints")
    ckpt.save(3, old, {"next_epoch": 3})
    ckpt.close()
    ckpt = Checkpoints(tmp_path / "checkpoints")
    restored, meta = ckpt.restore_latest(with_stats(0), report=pytest.fail)
    ckpt.close()
    assert meta["next_epoch"] == 3 and set(restored) == set(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
