"""The one device mesh of training and inference: every device of every process on axis "data"."""

from __future__ import annotations

import jax

DATA_AXIS = "data"


def data_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh over `jax.devices()` (all processes), Auto axes so XLA propagates shardings."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
