"""The saved-model format: `metadata.json` + an orbax checkpoint of the model state.

A saved model directory holds
    metadata.json   {"arch", "model_kwargs", "format", "checksums", ...}; written last, so it marks
                    completion. "arch" names the network (salt_jax.models.archs); "checksums": a
                    digest of every array (salt_jax.checksums)
    state/          orbax StandardCheckpointer checkpoint of nnx.state(model) as a pure dict
`load` rebuilds the module from `arch` with `nnx.eval_shape`, so nothing is allocated twice,
restores the state, checks every array against its checksum and returns the module in eval
mode. A damaged checkpoint (unreadable files, or arrays that differ from their checksums) is a
one-line CheckpointError naming it; nothing damaged is returned.

Replacing is atomic, by hand, because orbax cannot: it writes a NEW checkpoint atomically (into
a temporary directory, renamed when complete), but `save(..., force=True)` over an existing one
first deletes it, so a crash during the write would lose both. So the new checkpoint is written
into the sibling `.<name>.saving`, the old directory (if any) renamed to `.<name>.previous`, the
new one renamed into place and the old one removed. A crash at any point leaves a complete
checkpoint that `load` finds: the directory itself, or else the complete `.saving` (newer), or
else `.previous`.

`save` only ever replaces, moves or removes what it wrote itself: a target (or sibling) that
exists and is not laid out as one of our checkpoints (only `metadata.json` and `state/`) is
refused with `OverwriteError` before anything is written; `check_target` runs the same check
for callers that want to refuse early (the converter, before reading its input).

A training workdir is not a saved model: its best model is `WORKDIR/best`
(salt_jax.training.workdir.model_dir).
"""

from __future__ import annotations

import datetime
import json
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from flax import nnx

from salt_jax import checksums
from salt_jax.errors import UserError
from salt_jax.models import archs

METADATA = "metadata.json"
STATE = "state"
# The format's name since its version 2 (with array checksums), after the module that first wrote it.
FORMAT = "salt_jax.models.io/2"


class CheckpointError(UserError, FileNotFoundError):
    """A directory that holds no loadable salt_jax model checkpoint."""


class OverwriteError(UserError, FileExistsError):
    """Saving would replace a file or directory that is not a salt_jax model checkpoint."""


def save(
    directory: str | pathlib.Path,
    model: nnx.Module,
    *,
    arch: str,
    model_kwargs: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Writes `model` to `directory` atomically (see the module docstring); returns the path.

    Args:
      directory: target directory; replaced if it exists.
      model: the module; all its state (parameters and BatchNorm statistics) is saved.
      arch: the network (salt_jax.models.archs, e.g. "unet_tiny"); `load` rebuilds the module with it.
      model_kwargs: JSON-serialisable constructor arguments (e.g. {"num_classes": 1000});
        the compute dtype and grouped-conv implementation are load-time choices, not saved.
      metadata: any extra JSON-serialisable facts (source file, hashes, metrics...).
    """
    archs.parse(arch)  # raises UnknownArchError before anything is written
    directory = pathlib.Path(directory).absolute()
    check_target(directory)
    saving, previous = _siblings(directory)
    # Multi-process runs: every process takes part in orbax's save (a collective), and only
    # process 0 touches the file system around it, between barriers.
    primary = jax.process_index() == 0
    state = nnx.to_pure_dict(nnx.state(model))
    metadata = {**(metadata or {}), "checksums": checksums.tree_checksums(state)}
    if primary:
        shutil.rmtree(saving, ignore_errors=True)  # a crashed earlier save
        saving.mkdir(parents=True)
    _barrier(f"salt_jax.store.save:start:{directory}")

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(saving / STATE, state)
        checkpointer.wait_until_finished()
    if primary:
        _write_metadata_and_swap(directory, saving, previous, arch, model_kwargs, metadata)
    _barrier(f"salt_jax.store.save:done:{directory}")
    return directory


def check_target(directory: str | pathlib.Path) -> None:
    """Raises OverwriteError unless `save(directory, ...)` would only replace our own files.

    Allowed: nothing there, an empty directory, or a directory holding nothing but
    `metadata.json` and `state/` (a checkpoint of ours, complete or not); the same for the
    `.saving` / `.previous` siblings that `save` clears.
    """
    directory = pathlib.Path(directory).absolute()
    for path in (directory, *_siblings(directory)):
        if not (path.exists() or path.is_symlink()):
            continue
        if path.is_symlink() or not path.is_dir():
            raise OverwriteError(f"{path} exists and is not a directory; refusing to replace it "
                                 f"(choose another output path)")
        names = {p.name for p in path.iterdir()}
        if not names <= {METADATA, STATE}:
            raise OverwriteError(
                f"{path} is a non-empty directory that is not a salt_jax model ({_few(sorted(names))}); "
                f"refusing to replace it (choose another output path, or empty it yourself)")


def _few(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _write_metadata_and_swap(directory, saving, previous, arch, model_kwargs, metadata) -> None:
    """Completes `saving` with metadata.json, then renames it into place (old copy aside first)."""
    record = {
        "format": FORMAT,
        "arch": arch,
        "model_kwargs": model_kwargs or {},
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(metadata or {}),
    }
    (saving / METADATA).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")

    if directory.exists():
        shutil.rmtree(previous, ignore_errors=True)
        directory.rename(previous)
    saving.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)


def read_metadata(directory: str | pathlib.Path) -> dict[str, Any]:
    """The metadata.json of the checkpoint `load(directory)` would read.

    Raises CheckpointError for a missing checkpoint or a metadata.json that is not a JSON object.
    """
    path = _resolve(pathlib.Path(directory)) / METADATA
    try:
        meta = json.loads(path.read_text())
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({checksums.read_error(err)})") from None
    if not isinstance(meta, dict) or "arch" not in meta:
        raise CheckpointError(f"{path}: damaged checkpoint metadata (not a JSON object with an 'arch')")
    return meta


def load(
    directory: str | pathlib.Path,
    *,
    dtype: jnp.dtype | None = None,
    grouped_impl: str | None = None,
) -> nnx.Module:
    """Loads a model saved by `save`, in eval mode (BatchNorm on its running statistics).

    Args:
      directory: a saved model directory (a training workdir's best model is `WORKDIR/best`).
      dtype: compute dtype override (e.g. jnp.bfloat16); parameters stay float32.
      grouped_impl: "blocks" | "taps" | "native" | "dense" override for the grouped convolutions.

    Raises:
      CheckpointError: no checkpoint at `directory` (the message says what was expected), or a
        damaged one (unreadable, or arrays that differ from their checksums).
    """
    path = _resolve(pathlib.Path(directory))
    meta = read_metadata(path)
    if "checksums" not in meta:
        raise CheckpointError(f"{path}: written without array checksums (format {meta.get('format')!r}, before "
                              f"{FORMAT}), so it cannot be verified; save or convert it again")
    overrides = {k: v for k, v in (("dtype", dtype), ("grouped_impl", grouped_impl)) if v is not None}
    try:
        model = archs.build(meta["arch"], meta.get("model_kwargs"), abstract=True, **overrides)
    except archs.UnknownArchError as err:  # e.g. a preset registered by the program that saved it
        raise CheckpointError(f"{path}: {err}") from None
    graphdef, abstract_state = nnx.split(model)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_local_sharding()), nnx.to_pure_dict(abstract_state)
    )
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(path / STATE, target)
    except Exception as err:  # orbax/tensorstore raise bare Exceptions for damaged files
        raise CheckpointError(f"{path}: damaged checkpoint, its arrays cannot be read "
                              f"({checksums.read_error(err)})") from None
    bad = checksums.mismatches(restored, meta["checksums"])
    if bad:
        raise CheckpointError(f"{path}: damaged checkpoint, {checksums.describe(bad)}")
    nnx.replace_by_pure_dict(abstract_state, restored)
    model = nnx.merge(graphdef, abstract_state)
    model.eval()
    return model


def _local_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _siblings(directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The temporary (`.saving`) and displaced (`.previous`) siblings of a model directory."""
    return (directory.with_name(f".{directory.name}.saving"), directory.with_name(f".{directory.name}.previous"))


def _is_complete(path: pathlib.Path) -> bool:
    return (path / METADATA).is_file() and (path / STATE).is_dir()


def finish_interrupted_save(directory: str | pathlib.Path) -> bool:
    """Moves the checkpoint of a save that crashed between its renames into place: the complete
    `.saving` (newer), else `.previous`, when `directory` itself is missing. Returns whether it did."""
    directory = pathlib.Path(directory).absolute()
    if directory.exists() or directory.is_symlink():
        return False
    for candidate in _siblings(directory):
        if _is_complete(candidate):
            candidate.rename(directory)
            return True
    return False


def find(directory: str | pathlib.Path) -> pathlib.Path | None:
    """The complete checkpoint standing for `directory`: the directory itself, or the complete
    sibling of a save that crashed between its renames (see the module docstring); else None."""
    directory = pathlib.Path(directory).absolute()
    if _is_complete(directory):
        return directory
    if not directory.exists():
        return next(filter(_is_complete, _siblings(directory)), None)
    return None


def _resolve(directory: pathlib.Path) -> pathlib.Path:
    found = find(directory)
    if found is None:
        raise CheckpointError(f"{directory.absolute()}: no salt_jax model checkpoint (expected {METADATA} and "
                              f"{STATE}/ written by salt_jax.models.save)")
    return found
