"""Random initialisation on the host with PyTorch's default initialisers, compiled nowhere.

The original builds every layer outside the pretrained encoder with PyTorch's defaults
(docs/ORIGINAL.md, Training), and Cadene's SENet (the encoder, when it starts from random
weights) adds no initialisation of its own. `init_module` reproduces those defaults, per layer
type, for every layer of the module:

  Conv2d, Linear, grouped conv   weight ~ U(-b, b), b = 1 / sqrt(fan_in)  (kaiming_uniform with
                                 a = sqrt(5)); bias ~ U(-b, b) with the same b
  ConvTranspose2d                the same, but torch's fan_in of its (in, out/groups, kh, kw)
                                 weight is out/groups * kh * kw (torch computes fan_in from
                                 weight dim 1)
  BatchNorm                      scale 1, bias 0, running mean 0, running var 1

fan_in is read from the layer's own attributes (not from the kernel's shape, whose layout
differs between conv and transposed conv), and a variable of any other layer type is an error
naming it, so a new layer cannot be silently initialised by the wrong rule.

Why host-side: building an NNX module eagerly runs each parameter's initialiser as its own XLA
program, and XLA compiles one per distinct shape: on a 2-core CPU that took 30 s for the tiny
UNet and minutes for the SE-ResNeXt-101 one (`nnx.jit` of the constructor compiles one huge
program instead, no faster). `init_module` builds the module abstractly (`nnx.eval_shape`, no
memory, no compile) and fills every variable with numpy. The values are a deterministic function
of `seed`. A module built directly with `rngs=` keeps Flax's own initialisers (lecun-normal
kernels, zero biases): `archs.build` (hence loading) and training build through `init_module`.
"""

from __future__ import annotations

import math
from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from salt_jax.models.layers import BatchNorm, GroupedConv


def torch_fan_in(module: nnx.Module) -> int:
    """fan_in of the PyTorch layer `module` stands for (torch.nn.init._calculate_fan_in_and_fan_out)."""
    if isinstance(module, nnx.ConvTranspose):
        return module.out_features * math.prod(module.kernel_size)
    if isinstance(module, nnx.Conv):
        return module.in_features // module.feature_group_count * math.prod(module.kernel_size)
    if isinstance(module, nnx.Linear):
        return module.in_features
    if isinstance(module, GroupedConv):  # kernel (k, k, in/groups, out)
        return math.prod(module.kernel.shape[:-1])
    raise TypeError(f"no PyTorch fan_in rule for {type(module).__name__}")


_BATCHNORM = {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": 1.0}


def _initial_value(module: nnx.Module, name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if isinstance(module, BatchNorm) and name in _BATCHNORM:
        return np.full(shape, _BATCHNORM[name], np.float32)
    if name in ("kernel", "bias"):
        bound = 1.0 / math.sqrt(torch_fan_in(module))
        return rng.uniform(-bound, bound, shape).astype(np.float32)
    raise TypeError(f"no PyTorch default for a variable {name!r} of {type(module).__name__}")


def init_module(make: Callable[[nnx.Rngs], nnx.Module], seed: int = 0) -> nnx.Module:
    """`make(rngs)` builds the module; returns it with PyTorch-default variables (see module doc)."""
    abstract = nnx.eval_shape(lambda: make(nnx.Rngs(seed)))
    modules = {path: node for path, node in nnx.iter_graph(abstract) if isinstance(node, nnx.Module)}
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    values = []
    for path, var in nnx.to_flat_state(state):
        spec = var.get_value()
        try:
            value = _initial_value(modules[path[:-1]], str(path[-1]), tuple(spec.shape), rng)
        except TypeError as err:
            raise ValueError(f"init_module: {'.'.join(map(str, path))}: {err}") from None
        values.append((path, var.replace(jnp.asarray(value.astype(spec.dtype)))))
    return nnx.merge(graphdef, nnx.from_flat_state(values))
