"""Resumable training checkpoints (orbax) under WORKDIR/checkpoints.

Each checkpoint is named by the number of completed epochs and holds two items:
    state   the full train state (params, BatchNorm statistics, optimizer state, global step)
    meta    JSON: next epoch, lr, plateau state, best val_map, the per-epoch history, config identity
orbax writes each checkpoint into a temporary directory and renames it when complete, and the
manager only lists finalized steps, so a run killed during a save resumes from the previous one.
The last two checkpoints are kept.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

KEEP = 2


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

    def save(self, step: int, state, meta: dict[str, Any]) -> None:
        """Starts writing checkpoint `step` (async after the device->host copy).

        The previous save is awaited first, so an error in it surfaces here, not later.
        """
        self.manager.wait_until_finished()
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)))

    def restore(self, step: int, state_like) -> tuple[Any, dict[str, Any]]:
        """Checkpoint `step` into arrays shaped and sharded like `state_like`; returns (state, meta)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(state_like)), meta=ocp.args.JsonRestore()))
        return restored["state"], restored["meta"]

    def close(self) -> None:
        """Waits for the pending save (raising its error, if any) and releases the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
