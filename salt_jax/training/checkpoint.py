"""Resumable training checkpoints (orbax) under WORKDIR/checkpoints.

Each checkpoint is named by the number of completed epochs and holds two items:
    state   the full train state (params, BatchNorm statistics, optimizer state, global step)
    meta    JSON: next epoch, lr, plateau state, best val_map, the per-epoch history, config identity
orbax writes each checkpoint into a temporary directory and renames it when complete, and the
manager only lists finalized steps, so a run killed during a save resumes from the previous one.
The last two checkpoints are kept.

`meta` also records a checksum of every array of `state` and of `meta` itself
(salt_jax.checksums): `restore` verifies them, so a damaged checkpoint (truncated or missing
files, empty metadata, flipped bits) is an error, never a silently different state.
`restore_latest` falls back to the newest intact checkpoint and moves the damaged newer ones
to WORKDIR/damaged_checkpoints/ (kept for inspection, out of the manager's way).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from salt_jax import checksums
from salt_jax.errors import UserError

KEEP = 2
DAMAGED = "damaged_checkpoints"
LEGACY_NAMES = {"batch_stats": "rest"}  # train-state keys renamed since: current name -> stored name


class DamagedCheckpointError(RuntimeError):
    """A checkpoint whose files cannot be read or whose arrays differ from their checksums."""


class NoIntactCheckpointError(UserError):
    """Every checkpoint of a workdir is damaged: nothing can be resumed."""


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: the restore target."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


class Checkpoints:
    """The latest-N checkpoint manager of one workdir."""

    def __init__(self, directory: str | pathlib.Path):
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=KEEP),
            enable_async_checkpointing=True,
        )
        self.directory = pathlib.Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, meta: dict[str, Any]) -> None:
        """Starts writing checkpoint `step` (async after the device->host copy).

        The previous save is awaited first, so an error in it surfaces here, not later.
        """
        self.manager.wait_until_finished()
        meta = {**meta, "checksums": {"state": checksums.tree_checksums(state), "meta": checksums.json_checksum(meta)}}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, state_like) -> tuple[Any, dict[str, Any]]:
        """Checkpoint `step` into arrays shaped and sharded like `state_like`; returns (state, meta).

        Checkpoints written before the BatchNorm statistics were named `batch_stats` store them
        as `rest`; they are read under their old name (their checksums name it) and renamed.
        Raises DamagedCheckpointError (one line: which checkpoint, what is wrong).
        """
        try:
            return self._restore(step, state_like)
        except DamagedCheckpointError as err:
            if not (isinstance(state_like, dict) and set(LEGACY_NAMES) <= set(state_like)):
                raise
            renamed = {LEGACY_NAMES.get(k, k): v for k, v in state_like.items()}
            try:
                state, meta = self._restore(step, renamed)
            except DamagedCheckpointError:
                raise err from None
            back = {old: new for new, old in LEGACY_NAMES.items()}
            return {back.get(k, k): v for k, v in state.items()}, meta

    def _restore(self, step: int, state_like) -> tuple[Any, dict[str, Any]]:
        where = self.directory / str(step)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_like(state_like)), meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax/tensorstore raise bare Exceptions for damaged files
            raise DamagedCheckpointError(f"{where}: its files cannot be read ({checksums.read_error(err)})") from None
        meta = dict(restored["meta"])
        recorded = meta.pop("checksums", None)
        if not isinstance(recorded, dict):
            raise DamagedCheckpointError(f"{where}: its metadata records no checksums")
        if recorded.get("meta") != checksums.json_checksum(meta):
            raise DamagedCheckpointError(f"{where}: its metadata (meta/) differs from its recorded checksum")
        bad = checksums.mismatches(restored["state"], recorded.get("state", {}))
        if bad:
            raise DamagedCheckpointError(f"{where}: {checksums.describe(bad)}")
        return restored["state"], meta

    def restore_latest(self, state_like, report: Callable[[str], None]) -> tuple[Any, dict[str, Any]] | None:
        """The newest intact checkpoint as (state, meta), or None when there is none at all.

        Each damaged checkpoint is reported in one line through `report`; damaged checkpoints
        newer than the intact one are moved aside (see the module docstring), so the run
        rewrites those steps. Raises NoIntactCheckpointError when every checkpoint is damaged.
        """
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.restore(step, state_like)
            except DamagedCheckpointError as err:
                report(f"damaged checkpoint {err}; trying the previous one")
                damaged.append(step)
                continue
            if damaged:
                self._set_aside(damaged)
                report(f"resuming from checkpoint {self.directory / str(step)}; the damaged one(s) were moved "
                       f"to {self.directory.parent / DAMAGED}")
            return restored
        if damaged:
            raise NoIntactCheckpointError(
                f"no intact checkpoint in {self.directory} ({len(damaged)} damaged, see above); to start over, "
                f"move {self.directory.parent} aside or pass another --workdir")
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged checkpoints to WORKDIR/damaged_checkpoints/<step>[.k] (process 0)."""
        if jax.process_index() == 0:
            target_dir = self.directory.parent / DAMAGED
            target_dir.mkdir(exist_ok=True)
            for step in steps:
                target, k = target_dir / str(step), 1
                while target.exists():
                    target, k = target_dir / f"{step}.{k}", k + 1
                (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"salt_jax.checkpoint.set_aside:{self.directory}")
        self.manager.reload()

    def close(self) -> None:
        """Waits for the pending save (raising its error, if any) and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
