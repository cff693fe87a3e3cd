"""Random initialisation on the host, without compiling an initialiser per parameter shape.

Building an NNX module eagerly runs each parameter's initialiser as its own XLA program, and
XLA compiles one per distinct shape: on a 2-core CPU that took 30 s for the tiny UNet and
minutes for the SE-ResNeXt-101 one (`nnx.jit` of the constructor compiles one huge program
instead, no faster). `init_module` builds the module abstractly (`nnx.eval_shape`, no
memory, no compile) and fills every variable with numpy, following Flax's default
initialisers for the layers used here:
  kernel     truncated normal (+-2 std), std = 1 / sqrt(fan_in), fan_in = prod(shape[:-1])
             (Flax's `lecun_normal`, the default of nnx.Conv, nnx.Linear, nnx.ConvTranspose
             and of our GroupedConv)
  bias       zeros
  scale      ones (BatchNorm gamma)
  mean, var  zeros, ones (BatchNorm running statistics)
The values are a deterministic function of `seed`, not equal to what `rngs=nnx.Rngs(seed)`
would draw.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

# Flax's truncated normal divides by the std of a unit normal truncated to [-2, 2].
_TRUNCATED_STD = 0.87962566103423978


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    x = rng.standard_normal(shape)
    bad = np.abs(x) > 2
    while bad.any():  # resample the tails; a few rounds at most
        x[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(x) > 2
    return (x * (std / _TRUNCATED_STD)).astype(np.float32)


def _initial_value(name: str, shape: tuple[int, ...], dtype, rng: np.random.Generator) -> np.ndarray:
    if name == "kernel":
        fan_in = int(np.prod(shape[:-1]))
        return _truncated_normal(rng, shape, 1.0 / np.sqrt(fan_in)).astype(dtype)
    if name in ("bias", "mean"):
        return np.zeros(shape, dtype)
    if name in ("scale", "var"):
        return np.ones(shape, dtype)
    raise ValueError(f"init_module: no initial value rule for a variable named {name!r} {shape}")


def init_module(make: Callable[[nnx.Rngs], nnx.Module], seed: int = 0) -> nnx.Module:
    """`make(rngs)` builds the module; returns it with host-initialised variables (see module doc)."""
    abstract = nnx.eval_shape(lambda: make(nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    flat = nnx.to_flat_state(state)
    values = []
    for path, var in flat:
        spec = var.get_value() if hasattr(var, "get_value") else var.value
        value = _initial_value(str(path[-1]), tuple(spec.shape), spec.dtype, rng)
        values.append((path, var.replace(jnp.asarray(value))))
    return nnx.merge(graphdef, nnx.from_flat_state(values))
