"""Where salt_jax keeps its caches, and JAX's persistent compilation cache for the entry points.

Everything cached (compiled programs, decoded data arrays, the synthetic dataset) lives under
`cache_root()`, `$XDG_CACHE_HOME/salt_jax` or `~/.cache/salt_jax`, never in a user's folder.

XLA compiles the UNet's train step in ~20 s on a 2-core CPU and in tens of seconds on a GPU;
with the cache, a resumed run, a second demo or the next fold of the same model reads the
compiled program from disk instead. Libraries should not change global JAX settings on
import, so only `train.py` and `python -m salt_jax.predict` call this.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def cache_root() -> Path:
    """`$XDG_CACHE_HOME/salt_jax`, else `~/.cache/salt_jax`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "salt_jax"


def enable_compilation_cache() -> None:
    """Cache compiled programs in `$JAX_COMPILATION_CACHE_DIR` or `~/.cache/salt_jax/jax`."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return  # JAX reads the variable itself; the user's choice wins
    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "jax"))
