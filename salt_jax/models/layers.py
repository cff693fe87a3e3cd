"""Building blocks shared by the encoder and the UNet, with PyTorch semantics.

Every layer here exists because the Flax default differs from PyTorch in a way that
changes the numbers of a converted network:
- `BatchNorm` updates its running variance with the *unbiased* batch variance (as torch
  does; Flax uses the biased one) and keeps its statistics in float32 whatever the
  compute dtype. Inside `example_weights(valid)` its batch statistics ignore padded examples.
- `conv` takes PyTorch's symmetric integer padding; 'SAME' pads (2, 3) or (0, 1) on even
  sizes and would shift every output by half a pixel.
- `GroupedConv` is the one place the grouped 3x3 convolution is computed, so its
  implementation can be swapped per backend without touching the parameters.
- `max_pool_ceil` reproduces `MaxPool2d(ceil_mode=True)`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    use_bias: bool = False,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A PyTorch `Conv2d(in, out, k, stride, padding)` on NHWC input, float32 parameters."""
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


_EXAMPLE_WEIGHTS: contextvars.ContextVar = contextvars.ContextVar("batchnorm_example_weights", default=None)


@contextlib.contextmanager
def example_weights(valid: Array):
    """Train-mode BatchNorm calls inside count only the examples with valid[i] = 1.

    valid: (N,) 0/1 per example of the batch (0 = padding added so the batch splits evenly over
    devices). The batch statistics, and hence the running statistics, are then those of the
    valid examples alone; padded examples are still normalised (with those statistics), and a
    loss that ignores them gives them no gradient. A context rather than an argument, so the
    model's layers need not thread it through; it is read while tracing, so use it inside the
    jitted function around the model call.
    """
    token = _EXAMPLE_WEIGHTS.set(valid)
    try:
        yield
    finally:
        _EXAMPLE_WEIGHTS.reset(token)


class BatchNorm(nnx.Module):
    """`torch.nn.BatchNorm2d` over the channel (last) axis of NHWC input.

    Train mode normalises with the batch statistics over (N, H, W) and updates
    `running = (1 - momentum) * running + momentum * batch`, the variance term unbiased.
    Under `jit` with a batch-sharded input the reductions are over the global batch (sync BN).
    Inside `example_weights(valid)` the statistics are over the valid examples only.
    Statistics and the normalisation are computed in float32; the output has the input dtype.
    """

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float = 0.1,
        epsilon: float = 1e-5,
        use_running_average: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        del rngs  # deterministic initialisation, accepted for a uniform layer signature
        self.num_features = num_features
        self.momentum = momentum
        self.epsilon = epsilon
        self.use_running_average = use_running_average
        self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Hook of `nnx.view(model, use_running_average=...)` (train/eval views sharing weights)."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def __call__(self, x: Array) -> Array:
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var, n = _batch_moments(x.astype(jnp.float32), _EXAMPLE_WEIGHTS.get())
            unbiased = var * (n / max(n - 1, 1) if isinstance(n, int) else n / jnp.maximum(n - 1, 1))
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * mean
            self.var[...] = (1 - m) * self.var[...] + m * unbiased
        # Fold into one multiply-add so a bf16 activation is read and written once.
        inv = self.scale[...] * jax.lax.rsqrt(var + self.epsilon)
        shift = self.bias[...] - mean * inv
        if x.dtype == jnp.float32:
            return x * inv + shift
        return (x.astype(jnp.float32) * inv + shift).astype(x.dtype)


def _batch_moments(x: Array, valid: Array | None) -> tuple[Array, Array, int | Array]:
    """Per-channel mean and biased variance of x (N, ..., C) over the valid examples, and the
    number of values per channel they count (a Python int without `valid`)."""
    axes = tuple(range(x.ndim - 1))
    per_example = x.size // (x.shape[0] * x.shape[-1])
    if valid is None:
        mean = jnp.mean(x, axis=axes)
        return mean, jnp.mean(jnp.square(x - mean), axis=axes), x.shape[0] * per_example
    w = valid.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    n = jnp.sum(valid.astype(jnp.float32)) * per_example
    mean = jnp.sum(x * w, axis=axes) / n
    return mean, jnp.sum(jnp.square(x - mean) * w, axis=axes) / n, n


GROUPED_IMPLS = ("native", "dense")


def default_grouped_impl(backend: str | None = None) -> str:
    """The grouped-conv implementation to use on `backend`, chosen by measurement.

    CPU: "dense". XLA's CPU weight gradient of a 32-group conv is ~50x slower than a dense
    conv (docs/BENCHMARKS.md), so the block-diagonal expansion wins despite 32x the FLOPs.
    GPU/TPU: "native" (cuDNN and the TPU compiler implement grouped convs directly; see
    docs/BENCHMARKS.md for the GPU measurement status).
    `SALT_JAX_GROUPED_CONV=native|dense` overrides the choice everywhere.
    """
    forced = os.environ.get("SALT_JAX_GROUPED_CONV")
    if forced:
        if forced not in GROUPED_IMPLS:
            raise ValueError(f"SALT_JAX_GROUPED_CONV={forced!r}: expected one of {GROUPED_IMPLS}")
        return forced
    backend = backend or jax.default_backend()
    return "dense" if backend == "cpu" else "native"


def block_diagonal_kernel(kernel: Array, groups: int) -> Array:
    """Expand a grouped HWIO kernel (kh, kw, cin/g, cout) into the dense (kh, kw, cin, cout) one.

    Output channel block g reads only input channel block g, exactly like
    `feature_group_count=g`; the other blocks are zeros (and get zero gradient).
    """
    kh, kw, cin_g, cout = kernel.shape
    cout_g = cout // groups
    k = kernel.reshape(kh, kw, cin_g, groups, cout_g)
    eye = jnp.eye(groups, dtype=kernel.dtype)
    dense = jnp.einsum("hwigo,Gg->hwGigo", k, eye)
    return dense.reshape(kh, kw, groups * cin_g, cout)


class GroupedConv(nnx.Module):
    """`Conv2d(cin, cout, k, stride, padding, groups, bias=False)`; one kernel, two algorithms.

    The parameter is `kernel` of shape (k, k, cin // groups, cout) whatever the `impl`:
    "native" uses XLA's `feature_group_count`, "dense" the block-diagonal dense kernel.
    `impl=None` defers to `default_grouped_impl()` at trace time.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int = 1,
        groups: int = 32,
        impl: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if in_features % groups or out_features % groups:
            raise ValueError(f"channels {in_features}->{out_features} not divisible by groups={groups}")
        if impl is not None and impl not in GROUPED_IMPLS:
            raise ValueError(f"impl={impl!r}: expected one of {GROUPED_IMPLS} or None")
        self.groups = groups
        self.stride = stride
        self.padding = padding
        self.impl = impl
        self.dtype = dtype
        shape = (kernel_size, kernel_size, in_features // groups, out_features)
        self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs.params(), shape, jnp.float32))

    def set_view(self, impl: str | None = None) -> None:
        """Hook of `nnx.view(model, impl=...)`: the same weights computed with another algorithm."""
        if impl is not None:
            if impl not in GROUPED_IMPLS:
                raise ValueError(f"impl={impl!r}: expected one of {GROUPED_IMPLS}")
            self.impl = impl

    def __call__(self, x: Array) -> Array:
        impl = self.impl or default_grouped_impl()
        kernel = self.kernel[...].astype(self.dtype)
        groups = self.groups
        if impl == "dense":
            kernel, groups = block_diagonal_kernel(kernel, self.groups), 1
        p = self.padding
        return jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel,
            window_strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        )


def max_pool_ceil(x: Array, window: int, stride: int) -> Array:
    """`MaxPool2d(window, stride, padding=0, ceil_mode=True)` on NHWC input.

    Ceil mode adds output rows whose window runs past the bottom/right edge; those windows
    are padded with -inf (never selected). As in torch, a window must start inside the input.
    """
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size - window) // stride) + 1
        if (out - 1) * stride >= size:
            out -= 1
        pads.append((0, max((out - 1) * stride + window - size, 0)))
    return jax.lax.reduce_window(
        x,
        -jnp.inf,  # a Python scalar: lets JAX see a max-pool, which it can differentiate
        jax.lax.max,
        (1, window, window, 1),
        (1, stride, stride, 1),
        ((0, 0), pads[0], pads[1], (0, 0)),
    )


def max_pool(x: Array, window: int) -> Array:
    """`MaxPool2d(window)` (stride = window, floor mode) on NHWC input."""
    return nnx.max_pool(x, (window, window), strides=(window, window), padding="VALID")
