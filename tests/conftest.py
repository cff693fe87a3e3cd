"""Suite-wide settings, applied before any test imports JAX.

XLA compiles slowly on a 2-core CPU (the tiny UNet's train step takes ~20 s), and many tests
build the same programs, in this process and in the subprocesses they start (which inherit
these variables). JAX's persistent compilation cache turns every repeat into a file read.
"""

import os
import pathlib

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
