"""Where a training workdir keeps its best model, for the code that reads runs.

The loop (loop.py, whose docstring lists the whole layout) saves the best model by val_map as
`WORKDIR/best` (salt_jax.models.store format). Prediction and fine-tuning accept either a run
directory or a saved model directory; `model_dir` says which model such a path stands for.
"""

from __future__ import annotations

import pathlib

from salt_jax.models import store

BEST = "best"


def model_dir(path: str | pathlib.Path) -> pathlib.Path:
    """The saved model `path` stands for: `path` itself, or the best model of the workdir `path`.

    `path` stands for its best/ when it is no saved model itself and best/ exists (loading then
    says what is wrong with it, if anything) or a save of best/ crashed between its renames.
    """
    path = pathlib.Path(path).absolute()
    best = path / BEST
    if store.find(path) is None and (best.is_dir() or store.find(best) is not None):
        return best
    return path
