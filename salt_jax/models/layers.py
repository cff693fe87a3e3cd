"""Building blocks shared by the encoder and the UNet, with PyTorch semantics.

Every layer here exists because the Flax default differs from PyTorch in a way that
changes the numbers of a converted network:
- `BatchNorm` updates its running variance with the *unbiased* batch variance (as torch
  does; Flax uses the biased one) and keeps its statistics in float32 whatever the
  compute dtype. Inside `example_weights(valid)` its batch statistics ignore padded examples.
- `conv` takes PyTorch's symmetric integer padding; 'SAME' pads (2, 3) or (0, 1) on even
  sizes and would shift every output by half a pixel.
- `GroupedConv` is the one place the grouped 3x3 convolution is computed, so its
  implementation can be swapped per backend without touching the parameters; its CPU default
  ("ffi", C++ loops in `cpu_kernels`; "blocks" where those cannot be built) replaces
  XLA:CPU's slow grouped convolution and kernel gradient.
- `max_pool_ceil` reproduces `MaxPool2d(ceil_mode=True)`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import jax
import jax.numpy as jnp
from flax import nnx

from salt_jax.models import cpu_kernels

Array = jax.Array
_NHWC = ("NHWC", "HWIO", "NHWC")


Padding = tuple[tuple[int, int], tuple[int, int]]


def _pairs(padding: int) -> Padding:
    return ((padding, padding), (padding, padding))


def _conv2d(x: Array, kernel: Array, stride: int, padding: Padding, groups: int, dilation: int = 1) -> Array:
    """XLA's convolution; `dilation` spreads the input (the lhs dilation of a transposed conv)."""
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, lhs_dilation=(dilation, dilation),
        dimension_numbers=_NHWC, feature_group_count=groups,
    )  # fmt: skip


def _shifted(xp: Array, a: int, b: int, ho: int, wo: int, stride: int = 1) -> Array:
    """The (ho, wo) window of the padded input that kernel tap (a, b) reads, every `stride` pixels."""
    end = (xp.shape[0], a + (ho - 1) * stride + 1, b + (wo - 1) * stride + 1, xp.shape[3])
    return jax.lax.slice(xp, (0, a, b, 0), end, (1, stride, stride, 1))


def tapwise_kernel_grad(x: Array, dy: Array, kernel_shape, stride: int, padding: Padding, groups: int,
                        dilation: int = 1) -> Array:
    """The kernel gradient of `_conv2d(x, kernel, ...)` given the output cotangent `dy`.

    kernel[a, b] meets, for every output pixel, the input pixel at offset (a, b) of its window,
    so its gradient is one (per-group) matmul of the shifted, strided input with `dy`, summed
    over (n, h, w). Nine matmuls for a 3x3 kernel, each reading one shifted view of the padded
    (and, for a transposed conv, dilated) input: no patch tensor nine times the size of `x` is
    built. Accumulates in float32. On XLA:CPU in float32, without groups or dilation, where the
    C++ kernels built: `cpu_kernels.dense_kernel_grad`, the same sums reading x and dy in place.
    """
    if groups == 1 and dilation == 1 and cpu_kernels.usable(dy.dtype) and cpu_kernels.supports_dense_kernel_grad(
            kernel_shape):
        return cpu_kernels.dense_kernel_grad(x, dy, kernel_shape, stride, padding)  # the same sums, in place
    kh, kw, cin_g, cout = kernel_shape
    n, ho, wo, _ = dy.shape
    (top, bottom), (left, right) = padding
    zero = jnp.zeros((), x.dtype)
    xp = jax.lax.pad(x, zero, ((0, 0, 0), (top, bottom, dilation - 1), (left, right, dilation - 1), (0, 0, 0)))
    dy_g = dy.reshape(n, ho, wo, groups, cout // groups)
    taps = []
    for a in range(kh):
        for b in range(kw):
            shifted = _shifted(xp, a, b, ho, wo, stride).reshape(n, ho, wo, groups, cin_g)
            taps.append(jnp.einsum("nhwgi,nhwgo->igo", shifted, dy_g, preferred_element_type=jnp.float32))
    return jnp.stack(taps).reshape(kernel_shape).astype(dy.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv2d_tapwise_grad(x: Array, kernel: Array, stride: int, padding: Padding, groups: int, dilation: int) -> Array:
    """XLA's convolution, whose kernel gradient is `tapwise_kernel_grad` (matmuls).

    The input gradient is XLA's own; the kernel gradient, which XLA:CPU computes slowly (and
    XLA's grouped convolution everywhere, jax-ml/jax issue 13800), is replaced; so is the forward
    of a dense stride-1 "same" conv on XLA:CPU (`_forward`).
    """
    return _forward(x, kernel, stride, padding, groups, dilation)


def _forward(x, kernel, stride, padding, groups, dilation):
    """`_conv2d`, or the C++ forward where `_cpp_forward_applies`."""
    if stride == 1 and groups == 1 and dilation == 1 and _cpp_forward_applies(x, kernel, padding):
        return cpu_kernels.dense_conv_forward(x, kernel)
    return _conv2d(x, kernel, stride, padding, groups, dilation)


def _cpp_forward_applies(x, kernel, padding) -> bool:
    """A dense stride-1 "same" conv on XLA:CPU takes `cpu_kernels.dense_conv_forward`, which reads
    the kernel and input in place: XLA's tap matmuls copy each kernel tap every call, and its
    conv ran the decoder's at 177-248 GFLOP/s, the C++ loop at 315-337 (batch 2)."""
    return cpu_kernels.usable(x.dtype) and cpu_kernels.supports_dense_forward(kernel.shape, padding)


def _tapwise_fwd(x, kernel, stride, padding, groups, dilation):
    return _forward(x, kernel, stride, padding, groups, dilation), (x, kernel)


def _tapwise_bwd(stride, padding, groups, dilation, residuals, dy):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: _conv2d(x, kernel, stride, padding, groups, dilation), x)
    (dx,) = input_vjp(dy)
    return dx, tapwise_kernel_grad(x, dy, kernel.shape, stride, padding, groups, dilation)


conv2d_tapwise_grad.defvjp(_tapwise_fwd, _tapwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_taps(x: Array, kernel: Array, padding: Padding) -> Array:
    """A stride-1 convolution as one matmul per kernel tap, for maps smaller than the kernel.

    Output = sum over taps (a, b) of the shifted padded input times kernel[a, b]; the input
    gradient = sum over taps of dy times kernel[a, b] transposed, each added at its offset
    into the padded frame; the kernel gradient is `tapwise_kernel_grad`. XLA's convolution
    computes its input gradient with a flipped, transposed copy of the kernel, which costs more
    than the convolution where the kernel outweighs the map (the decoder's 16- and 8-pixel
    stages: 2560->512 at 16x16, input gradient 148 ms against 60 ms; docs/BENCHMARKS.md).
    """
    return _taps_forward(x, kernel, padding)


def _taps_forward(x, kernel, padding):
    if _cpp_forward_applies(x, kernel, padding):
        return cpu_kernels.dense_conv_forward(x, kernel)
    (top, bottom), (left, right) = padding
    kh, kw = kernel.shape[:2]
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    y = sum(jnp.einsum("nhwi,io->nhwo", _shifted(xp, a, b, ho, wo), kernel[a, b], preferred_element_type=jnp.float32)
            for a in range(kh) for b in range(kw))
    return y.astype(x.dtype)  # the nine partial sums added in float32, as one convolution would


def _taps_fwd(x, kernel, padding):
    return _taps_forward(x, kernel, padding), (x, kernel)


def _taps_bwd(padding, residuals, dy):
    x, kernel = residuals
    (top, bottom), (left, right) = padding
    kh, kw = kernel.shape[:2]
    n, ho, wo, _ = dy.shape
    hp, wp = ho + kh - 1, wo + kw - 1  # the padded input's size
    zero = jnp.zeros((), jnp.float32)
    dxp = sum(jax.lax.pad(jnp.einsum("nhwo,io->nhwi", dy, kernel[a, b], preferred_element_type=jnp.float32), zero,
                          ((0, 0, 0), (a, hp - ho - a, 0), (b, wp - wo - b, 0), (0, 0, 0)))
              for a in range(kh) for b in range(kw))
    dx = dxp[:, top:hp - bottom, left:wp - right].astype(dy.dtype)
    return dx, tapwise_kernel_grad(x, dy, kernel.shape, 1, padding, 1)


conv2d_taps.defvjp(_taps_fwd, _taps_bwd)


def kernel_outweighs_map(x_shape, kernel_shape) -> bool:
    """True where a (k, k, cin, cout) kernel has clearly more entries than its input map
    (n, h, w, cin): k * k * cout > 1.5 * n * h * w.

    The margin is measured (2026-11-26, forward / input gradient, ms, taps vs XLA): 2048->512 at
    16 px batch 10 (ratio 1.8) 204 / 194 vs 246 / 221, but 1088->256 at 32 px batch 2 (ratio
    1.125, the 50's dec4) 59 / 59 vs 41 / 39.
    """
    n, h, w, _ = x_shape
    return 2 * kernel_shape[0] * kernel_shape[1] * kernel_shape[3] > 3 * n * h * w


CONV_IMPLS = ("matmul", "xla")
CONV_TRANSPOSE_IMPLS = ("phases", "taps", "xla")


def _choose(env: str, impls: tuple[str, ...], cpu_default: str, other_default: str) -> str:
    """An implementation: `env` if set (checked against `impls`), else the backend's default."""
    forced = os.environ.get(env)
    if forced:
        if forced not in impls:
            raise ValueError(f"{env}={forced!r}: expected one of {impls}")
        return forced
    return cpu_default if jax.default_backend() == "cpu" else other_default


def default_conv_impl() -> str:
    """Plain convolutions: "matmul" on CPU, "xla" elsewhere; `SALT_JAX_CONV` overrides.

    XLA:CPU computes a 1x1 convolution, and the kernel gradient of any convolution, several
    times slower than the same work as matmuls (docs/BENCHMARKS.md); GPUs and TPUs run XLA's
    convolutions with their own libraries, which is what "xla" keeps.
    """
    return _choose("SALT_JAX_CONV", CONV_IMPLS, "matmul", "xla")


def default_conv_transpose_impl() -> str:
    """Transposed convolutions: "phases" on CPU, "xla" elsewhere; `SALT_JAX_CONV_TRANSPOSE` overrides.

    "phases" (`conv_transpose_phases`) skips the zeros that "taps" (a convolution of the
    zero-dilated input) multiplies: the SE-ResNeXt-50 UNet's CPU train step took 10% less
    (docs/BENCHMARKS.md). A layer whose output is not stride x its input falls back to "taps".
    """
    return _choose("SALT_JAX_CONV_TRANSPOSE", CONV_TRANSPOSE_IMPLS, "phases", "xla")


def _check_impl(impl: str | None, impls: tuple[str, ...]) -> None:
    if impl is not None and impl not in impls:
        raise ValueError(f"impl={impl!r}: expected one of {impls} or None")


class Conv(nnx.Conv):
    """nnx.Conv (same parameters: `kernel` (k, k, in, out), `bias`) with a choice of algorithm.

    "xla": nnx.Conv's convolution. "matmul": a 1x1 kernel is one matmul (after the stride's
    subsampling), whose kernel gradient over >= 2048 pixels in float32 on XLA:CPU comes from
    `cpu_kernels.pointwise_conv` where the C++ kernels built; a 3x3 kernel keeps XLA's input
    gradient, takes its kernel gradient from `tapwise_kernel_grad` and, at stride 1 on XLA:CPU,
    its forward from `cpu_kernels.dense_conv_forward` (`_cpp_forward_applies`); at stride 1
    where the kernel outweighs the map (`kernel_outweighs_map`) it is `conv2d_taps`, whose input
    gradient is tap matmuls too; larger kernels (the 7x7 stem, 3 input channels, whose 49 skinny
    matmuls measured slower) stay XLA's. `impl=None` defers to `default_conv_impl()`.
    """

    def __init__(self, *args, impl: str | None = None, **kwargs):
        _check_impl(impl, CONV_IMPLS)
        super().__init__(*args, **kwargs)
        self.impl = impl

    def set_view(self, conv_impl: str | None = None) -> None:
        """Hook of `nnx.view(model, conv_impl=...)`: the same weights computed with another algorithm."""
        if conv_impl is not None:
            _check_impl(conv_impl, CONV_IMPLS)
            self.impl = conv_impl

    def __call__(self, x: Array) -> Array:
        k = self.kernel_size[0]
        if (self.impl or default_conv_impl()) == "xla" or k > 3:
            return super().__call__(x)
        x = x.astype(self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        s = self.strides[0]
        if k == 1:  # padding 0: output pixel (i, j) reads input pixel (s*i, s*j)
            x = x[:, ::s, ::s]
            if cpu_kernels.usable(x.dtype) and cpu_kernels.supports_pointwise(x.shape, kernel.shape[2:]):
                y = cpu_kernels.pointwise_conv(x, kernel[0, 0])
            else:
                y = jnp.einsum("nhwi,io->nhwo", x, kernel[0, 0])
        elif s == 1 and kernel_outweighs_map(x.shape, kernel.shape):
            y = conv2d_taps(x, kernel, self.padding)
        else:
            y = conv2d_tapwise_grad(x, kernel, s, self.padding, 1, 1)
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


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
) -> Conv:
    """A PyTorch `Conv2d(in, out, k, stride, padding)` on NHWC input, float32 parameters."""
    return Conv(
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose_phases(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    """torch's `ConvTranspose2d(k, stride, padding)` where k - 2 * padding = stride (output =
    stride x the input), as `stride**2` output phases, each a sum of tap matmuls on the input.

    Output pixel o = stride * i + a - padding for input pixel i and kernel tap a, so output
    phase r = o mod stride meets only the taps a = r + padding (mod stride), at input
    i = o // stride + (r + padding - a) / stride. The transposed conv as a convolution of the
    zero-dilated input ("taps") multiplies zeros in 3 of 4 products at stride 2 and copies the
    dilated input once per tap for its kernel gradient; here every product counts.
    kernel: (k, k, out, in), tap [a, b] torch's weight[:, :, a, b] transposed.
    The kernel gradient sums dy at output pixel stride * i + a - padding times x at i: the
    kernel gradient of a strided convolution of dy with x as its cotangent, which on XLA:CPU is
    `cpu_kernels.dense_kernel_grad(dy, x, ...)` (autodiff instead pads each tap's gradient to
    the whole kernel and adds the 16).
    """
    return _phases(x, kernel, stride, padding)


def _phases(x, kernel, stride, padding):
    k = kernel.shape[0]
    n, h, w, _ = x.shape
    taps = [[(a, (r + padding - a) // stride) for a in range(k) if (r + padding - a) % stride == 0]
            for r in range(stride)]
    offsets = [d for phase in taps for _, d in phase]
    lo, hi = max(0, -min(offsets)), max(0, max(offsets))
    xp = jnp.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    rows = []
    for r in range(stride):
        cols = []
        for t in range(stride):
            cols.append(sum(jnp.einsum("nhwi,oi->nhwo", _shifted(xp, lo + di, lo + dj, h, w), kernel[a, b],
                                       preferred_element_type=jnp.float32)
                            for a, di in taps[r] for b, dj in taps[t]).astype(x.dtype))
        rows.append(jnp.stack(cols, axis=3))  # (n, h, w, t, out)
    return jnp.stack(rows, axis=2).reshape(n, h * stride, w * stride, kernel.shape[2])


def _phases_fwd(x, kernel, stride, padding):
    return _phases(x, kernel, stride, padding), (x, kernel)


def _phases_bwd(stride, padding, residuals, dy):
    x, kernel = residuals
    if cpu_kernels.usable(dy.dtype) and cpu_kernels.supports_dense_kernel_grad(kernel.shape):
        _, input_vjp = jax.vjp(lambda x: _phases(x, kernel, stride, padding), x)
        dk = cpu_kernels.dense_kernel_grad(dy, x, kernel.shape, stride, _pairs(padding))
        return input_vjp(dy)[0], dk
    return jax.vjp(lambda x, kernel: _phases(x, kernel, stride, padding), x, kernel)[1](dy)


conv_transpose_phases.defvjp(_phases_fwd, _phases_bwd)


class ConvTranspose(nnx.ConvTranspose):
    """nnx.ConvTranspose with `transpose_kernel=True` (its parameters) and a choice of algorithm.

    "xla": nnx.ConvTranspose. "taps": the same convolution written as XLA's stride-1 conv of
    the stride-dilated input with the flipped, transposed kernel (what `lax.conv_transpose`
    computes), whose kernel gradient is `tapwise_kernel_grad`: XLA:CPU's own kernel gradient
    of a transposed convolution was the slowest operation of the UNet's train step.
    "phases": `conv_transpose_phases`, tap matmuls per output phase on the undilated input.
    `impl=None` defers to `default_conv_transpose_impl()`.
    """

    def __init__(self, *args, impl: str | None = None, **kwargs):
        _check_impl(impl, CONV_TRANSPOSE_IMPLS)
        super().__init__(*args, transpose_kernel=True, **kwargs)
        self.impl = impl

    @property
    def torch_padding(self) -> int:
        """torch's `padding` p: this layer pads the dilated input by k - 1 - p (`conv_transpose`)."""
        return self.kernel_size[0] - 1 - self.padding[0][0]

    def set_view(self, conv_transpose_impl: str | None = None) -> None:
        """Hook of `nnx.view(model, conv_transpose_impl=...)`."""
        if conv_transpose_impl is not None:
            _check_impl(conv_transpose_impl, CONV_TRANSPOSE_IMPLS)
            self.impl = conv_transpose_impl

    def __call__(self, x: Array) -> Array:
        impl = self.impl or default_conv_transpose_impl()
        if impl == "phases" and self.kernel_size[0] - 2 * self.torch_padding != self.strides[0]:
            impl = "taps"  # the phases need an output of exactly stride x the input
        if impl == "xla":
            return super().__call__(x)
        x = x.astype(self.dtype)
        if impl == "phases":
            y = conv_transpose_phases(x, self.kernel[...].astype(self.dtype), self.strides[0], self.torch_padding)
            return y if self.bias is None else y + self.bias[...].astype(self.dtype)
        # (k, k, out, in) -> flipped (k, k, in, out): the kernel lax.conv_transpose convolves with.
        kernel = transposed_grouped_kernel(self.kernel[...], 1).astype(self.dtype)
        y = conv2d_tapwise_grad(x, kernel, 1, self.padding, 1, self.strides[0])
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


def conv_transpose(
    in_features: int, out_features: int, kernel_size: int, *, stride: int, padding: int, dtype, rngs: nnx.Rngs
) -> ConvTranspose:
    """A PyTorch `ConvTranspose2d(in, out, k, stride, padding)` (bias) on NHWC input.

    torch's output equals a stride-1 convolution of the stride-dilated input padded k-1-p on
    each side with the kernel flipped (`transpose_kernel=True`); kernel shape (k, k, out, in).
    """
    pad = kernel_size - 1 - padding
    return ConvTranspose(
        in_features,
        out_features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


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


GROUPED_IMPLS = ("taps", "native", "dense", "blocks", "ffi")
BLOCK_GROUPS = 2  # groups per dense block of "blocks": of 1, 2 and 4, 2 was fastest over the encoders' layers


def default_grouped_impl(groups: int = 32) -> str:
    """The grouped-conv implementation for a conv of `groups` groups; `SALT_JAX_GROUPED_CONV` overrides.

    CPU: "ffi" for the encoders' 32 groups where its C++ kernels build (`cpu_kernels`: a
    C++ compiler on Linux), else "blocks". XLA:CPU runs a 32-group conv ("native") as a generic
    loop, its forward and input gradient 5-40x slower than torch's and its kernel gradient ~50x
    slower than a dense conv (docs/BENCHMARKS.md). "ffi" computes all three in C++ loops (per
    layer 1.2-2.6x faster than "blocks" forward, 2.3-8.5x backward, but for layer4's stride-1
    backward, 0.8x); "blocks" computes forward and input gradient as dense convolutions over
    blocks of `BLOCK_GROUPS` groups and the kernel gradient with matmuls ("taps", which keeps
    XLA's grouped forward, is the formulation before it).
    Where "ffi" does not cover a layer (bfloat16, other shapes: `cpu_kernels.supports_grouped`),
    the default falls back to "blocks". 4 groups or fewer (the tiny encoder) take "dense": the
    block-diagonal kernel costs only 4x the FLOPs there and its train step measured 12% faster
    than taps. GPUs (and TPUs, unmeasured): "native", whose cuDNN kernels ran the SE-ResNeXt-50
    UNet's bf16 train step fastest on an H200 (batch 32: 644 images/s, dense 602, taps 484;
    docs/BENCHMARKS.md).
    """
    if groups <= 4:
        cpu = "dense"
    elif jax.default_backend() == "cpu" and cpu_kernels.available():
        cpu = "ffi"
    else:
        cpu = "blocks"
    return _choose("SALT_JAX_GROUPED_CONV", GROUPED_IMPLS, cpu, "native")


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
    """`Conv2d(cin, cout, k, stride, padding, groups, bias=False)`; one kernel, three algorithms.

    The parameter is `kernel` of shape (k, k, cin // groups, cout) whatever the `impl`:
    "native" uses XLA's `feature_group_count`, "dense" the block-diagonal dense kernel, "taps"
    the native forward with `tapwise_kernel_grad` as its kernel gradient, "blocks" dense
    convolutions over blocks of `BLOCK_GROUPS` groups (`conv2d_blocks`) with that kernel gradient,
    "ffi" C++ loops on XLA:CPU (`cpu_kernels.grouped_conv2d`). `impl=None` defers to
    `default_grouped_impl(groups)` at trace time, which falls back from "ffi" to "blocks" where
    the C++ kernels do not cover the layer; an explicit "ffi" there is an error.
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
        _check_impl(impl, GROUPED_IMPLS)
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
            _check_impl(impl, GROUPED_IMPLS)
            self.impl = impl

    def __call__(self, x: Array) -> Array:
        impl = self.impl or default_grouped_impl(self.groups)
        x = x.astype(self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        padding = _pairs(self.padding)
        if impl == "ffi":
            if cpu_kernels.usable(x.dtype) and cpu_kernels.supports_grouped(x.shape, kernel.shape, padding):
                return cpu_kernels.grouped_conv2d(x, kernel, self.stride)
            if self.impl == "ffi":
                raise ValueError(f"GroupedConv impl='ffi' needs XLA:CPU, the built C++ kernels and a layer they "
                                 f"support; got {x.dtype} input {x.shape}, kernel {kernel.shape}, padding {padding}")
            impl = "blocks"
        if impl == "blocks":
            return conv2d_blocks(x, kernel, self.stride, padding, self.groups, BLOCK_GROUPS)
        if impl == "taps":
            return conv2d_tapwise_grad(x, kernel, self.stride, padding, self.groups, 1)
        if impl == "dense":
            return _conv2d(x, block_diagonal_kernel(kernel, self.groups), self.stride, padding, 1)
        return _conv2d(x, kernel, self.stride, padding, self.groups)


def _block_slices(channels: int, blocks: int) -> list[slice]:
    size = channels // blocks
    return [slice(j * size, (j + 1) * size) for j in range(blocks)]


def _blocks_conv(x: Array, kernel: Array, stride: int, padding: Padding, groups: int, per_block: int) -> Array:
    """A grouped convolution as `groups // per_block` dense convolutions, one per block of
    `per_block` consecutive groups, each with its block's block-diagonal kernel.

    XLA:CPU's grouped convolution is a generic loop, ~40x slower than torch's on the 32-group
    3x3 convs; its dense convolutions are fast. A block of 2 groups wastes half its FLOPs on
    zeros and still measured 3-25x faster than the grouped conv (docs/BENCHMARKS.md).
    """
    blocks = groups // per_block
    ins, outs = _block_slices(x.shape[-1], blocks), _block_slices(kernel.shape[-1], blocks)
    ys = [_conv2d(x[..., i], block_diagonal_kernel(kernel[..., o], per_block), stride, padding, 1)
          for i, o in zip(ins, outs)]
    return jnp.concatenate(ys, axis=-1)


def transposed_grouped_kernel(kernel: Array, groups: int) -> Array:
    """The kernel whose stride-1 convolution with `dy` is the input gradient: each group's
    (k, k, cin_g, cout_g) kernel flipped in space with its two channel axes swapped (one group:
    the kernel a transposed convolution convolves its dilated input with)."""
    kh, kw, cin_g, cout = kernel.shape
    k = jnp.flip(kernel, (0, 1)).reshape(kh, kw, cin_g, groups, cout // groups)
    return k.transpose(0, 1, 4, 3, 2).reshape(kh, kw, cout // groups, groups * cin_g)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv2d_blocks(x: Array, kernel: Array, stride: int, padding: Padding, groups: int, per_block: int) -> Array:
    """`_blocks_conv` whose input gradient is computed the same way and whose kernel gradient is
    `tapwise_kernel_grad`.

    Stride 1: the input gradient is the forward formulation applied to `dy` with
    `transposed_grouped_kernel` and the complementary padding (XLA's own input gradient of the
    dense blocks measured 2x slower). Strided: the dense blocks' input gradient (XLA's).
    """
    return _blocks_conv(x, kernel, stride, padding, groups, per_block)


def _blocks_fwd(x, kernel, stride, padding, groups, per_block):
    return _blocks_conv(x, kernel, stride, padding, groups, per_block), (x, kernel)


def _blocks_bwd(stride, padding, groups, per_block, residuals, dy):
    x, kernel = residuals
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = padding
    if stride == 1:
        back = ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right))
        dx = _blocks_conv(dy, transposed_grouped_kernel(kernel, groups), 1, back, groups, per_block)
    else:
        _, input_vjp = jax.vjp(lambda x: _blocks_conv(x, kernel, stride, padding, groups, per_block), x)
        (dx,) = input_vjp(dy)
    return dx, tapwise_kernel_grad(x, dy, kernel.shape, stride, padding, groups)


conv2d_blocks.defvjp(_blocks_fwd, _blocks_bwd)


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
