"""Convolution pieces as C++ loops called through the XLA FFI (`cpu_kernels.cc`), XLA:CPU only.

- `grouped_conv2d`: the grouped 3x3 convolution, forward, input gradient and kernel gradient.
  XLA:CPU runs a grouped convolution as a generic loop and takes its kernel gradient from copies
  of shifted inputs; the C++ loops keep blocks of output channels in vector registers (per
  layer 1.2-2.6x faster forward, 2.3-8.5x backward than "blocks"; only layer4's stride-1
  backward at 16 px is slower, 0.8x; docs/BENCHMARKS.md).
- `dense_kernel_grad`: the kernel gradient of a dense convolution (1x1, 3x3, any stride and
  padding), reading x and dy in place. XLA:CPU computes it as one dot per tap over a shifted
  copy of x and, inside a train step, feeds each dot a transposed copy of an operand with the
  BatchNorm backward recomputed into it (~60 ms for each (256, 32768) operand). Used by
  `pointwise_conv` (a 1x1 conv as a matmul), by `layers.tapwise_kernel_grad` (the 3x3 convs) and
  by `layers.conv_transpose_phases` (a transposed conv's kernel gradient is that of a strided
  convolution of dy with x as the cotangent).
- `dense_conv_forward`: the forward of a dense stride-1 "same" convolution, reading the kernel and
  x in place. XLA:CPU's tap matmuls copy every tap of the kernel each call (~70 ms of the
  SaltUNet-50's inference at batch 2) and its own convolution ran the decoder's 3x3 convs at
  177-248 GFLOP/s; this loop 315-337. Used by `layers.conv2d_taps` and `conv2d_tapwise_grad`
  (whose gradients stay their own).

The source is compiled once per machine with the system's C++ compiler (`$CXX`, else
`c++`/`g++`/`clang++`) for the machine's own CPU (`-march=native`) into
`$SALT_JAX_KERNEL_CACHE` (default `~/.cache/salt_jax/kernels`), named by a hash of the source, the
flags, jax's version and the CPU, so an edit or another CPU builds anew; a cached library whose
bytes no longer match the digest written at build time is built again, never loaded. Without a compiler (or
off Linux) `available()` is False, with one warning, and the layers keep their XLA formulations;
`SALT_JAX_CPU_KERNELS=0` makes it False on purpose (no native code, or to compare).
Under a mesh every call partitions along the batch (`jax.experimental.custom_partitioning`):
each device runs it on its own images; kernel gradients are summed across devices by XLA.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

SOURCE = pathlib.Path(__file__).with_suffix(".cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-w")
_TARGETS = ("GroupedConvForward", "GroupedConvInputGrad", "GroupedConvKernelGrad", "DenseKernelGrad",
            "DenseConvForward")
CHANNEL_BLOCK = 64  # CB of the source: the grouped conv works on blocks of 64 channels
POINTWISE_MIN_PIXELS = 2048  # below, XLA's dot (with its transposed copies) was as fast (docs/BENCHMARKS.md)


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))}))


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build() -> pathlib.Path:
    """The compiled library for this source, these flags and this CPU: the cached one if its bytes
    match the digest written beside it at build time, else built (again)."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX)")
    include = jax.ffi.include_dir()
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cxx, *FLAGS, include, jax.__version__, _cpu_id()]).encode())
    cache = pathlib.Path(os.environ.get("SALT_JAX_KERNEL_CACHE", pathlib.Path.home() / ".cache" / "salt_jax" / "kernels"))
    lib = cache / f"cpu_kernels-{key.hexdigest()[:16]}.so"
    stamp = lib.with_suffix(".sha256")
    if lib.exists() and stamp.exists() and stamp.read_text() == _digest(lib):
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # build aside, then rename: safe when two processes build
        out = pathlib.Path(tmp) / lib.name
        done = subprocess.run([cxx, *FLAGS, f"-I{include}", str(SOURCE), "-o", str(out)], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{cxx} failed on {SOURCE.name}: {done.stderr.strip()[-2000:]}")
        (pathlib.Path(tmp) / stamp.name).write_text(_digest(out))
        os.replace(out, lib)
        os.replace(pathlib.Path(tmp) / stamp.name, stamp)
    return lib


@functools.cache
def available() -> bool:
    """Build (once per machine) and register the kernels; False, with one warning, if that fails."""
    if platform.system() != "Linux" or os.environ.get("SALT_JAX_CPU_KERNELS") == "0":
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(_build()))
    except (OSError, RuntimeError) as err:
        warnings.warn(f"salt_jax: CPU kernels unavailable, using XLA's formulations ({err})", stacklevel=2)
        return False
    for name in _TARGETS:
        jax.ffi.register_ffi_target(f"salt_{name}", jax.ffi.pycapsule(getattr(library, f"Salt{name}")), platform="cpu")
    return True


def usable(dtype) -> bool:
    """The kernels apply: XLA:CPU, float32, and they built."""
    return jnp.dtype(dtype) == jnp.float32 and jax.default_backend() == "cpu" and available()


def _call(name: str, shape, *operands, **attrs) -> jax.Array:
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    attrs = {k: np.int64(v) for k, v in attrs.items()}
    return jax.ffi.ffi_call(f"salt_{name}", out, vmap_method="sequential")(*operands, **attrs)


def _batch_axes(sharding):
    """The mesh axes the leading (batch) dimension is split over, or None."""
    spec = sharding.spec
    return spec[0] if len(spec) else None


def _batch_partitioned(name: str, b_batched: bool, rule: str):
    """`_call(name, shape, a, b, stride=)` split along the batch: operand a, the result and, if
    b_batched, operand b sharded like a's first axis; b otherwise replicated (a kernel)."""

    @functools.partial(custom_partitioning, static_argnums=(2, 3))
    def call(a, b, shape, stride):
        return _call(name, shape, a, b, stride=stride)

    def shardings(mesh, a_sharding):
        batch = NamedSharding(mesh, PartitionSpec(_batch_axes(a_sharding)))
        return batch, (batch, batch if b_batched else NamedSharding(mesh, PartitionSpec()))

    def infer(shape, stride, mesh, arg_shapes, result_shape):
        return shardings(mesh, arg_shapes[0].sharding)[0]

    def partition(shape, stride, mesh, arg_shapes, result_shape):
        out, args = shardings(mesh, arg_shapes[0].sharding)
        return mesh, lambda a, b: _call(name, (a.shape[0], *shape[1:]), a, b, stride=stride), out, args

    call.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule)
    return call


# Factor names: n the batch; the others only say that no other axis is shared.
_grouped_forward = _batch_partitioned("GroupedConvForward", False, "n h w c, k l i o -> n y z o")
_grouped_input_grad = _batch_partitioned("GroupedConvInputGrad", False, "n y z o, k l i c -> n h w c")
_grouped_kernel_grad = _batch_partitioned("GroupedConvKernelGrad", True, "n h w c, n y z o -> n k l i o")


_dense_forward = _batch_partitioned("DenseConvForward", False, "n h w i, k l i o -> n h w o")


def supports_dense_forward(kernel_shape, padding) -> bool:
    """`dense_conv_forward` computes this conv: an odd square kernel, padding (k - 1) / 2 on every
    side (stride 1; padding as pairs ((top, bottom), (left, right)), tuples or lists), output
    channels a multiple of 16."""
    k = kernel_shape[0]
    p = (k - 1) // 2
    same = tuple(map(tuple, padding)) == ((p, p), (p, p))
    return k == kernel_shape[1] and k % 2 == 1 and same and kernel_shape[3] % 16 == 0


def dense_conv_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The value (no VJP of its own: callers define the gradient) of a stride-1 "same" convolution
    (`supports_dense_forward`), reading x and the kernel in place."""
    return _dense_forward(x, kernel, (*x.shape[:3], kernel.shape[3]), 1)


def supports_grouped(x_shape, kernel_shape, padding) -> bool:
    """The grouped kernels compute this conv: 3x3, padding 1, channels a multiple of 64 and
    1-64 (a power of 2) per group, input width = output width (shapes NHWC and grouped HWIO)."""
    kh, kw, cpg, cout = kernel_shape
    return ((kh, kw) == (3, 3) and padding == ((1, 1), (1, 1)) and x_shape[-1] == cout
            and cout % CHANNEL_BLOCK == 0 and cpg in (1, 2, 4, 8, 16, 32, 64))


def _grouped_out(x, kernel, stride):
    n, h, w, c = x.shape
    return _grouped_forward(x, kernel, (n, (h - 1) // stride + 1, (w - 1) // stride + 1, c), stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def grouped_conv2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Grouped 3x3 convolution with padding 1, groups = channels // kernel.shape[2] (`supports_grouped`)."""
    return _grouped_out(x, kernel, stride)


def _grouped_fwd(x, kernel, stride):
    return _grouped_out(x, kernel, stride), (x, kernel)


def _grouped_bwd(stride, residuals, dy):
    x, kernel = residuals
    dx = _grouped_input_grad(dy, kernel, x.shape, stride)
    return dx, _grouped_kernel_grad(x, dy, (x.shape[0], *kernel.shape), stride).sum(0)


grouped_conv2d.defvjp(_grouped_fwd, _grouped_bwd)


def supports_dense_kernel_grad(kernel_shape) -> bool:
    """`dense_kernel_grad` computes this kernel gradient: channels multiples of 4 in and 16 out."""
    return kernel_shape[-2] % 4 == 0 and kernel_shape[-1] % 16 == 0


def supports_pointwise(x_shape, kernel_shape) -> bool:
    """`pointwise_conv` pays off: enough pixels (N*H*W) and channels `dense_kernel_grad` takes."""
    return int(np.prod(x_shape[:-1])) >= POINTWISE_MIN_PIXELS and supports_dense_kernel_grad(kernel_shape)


@functools.partial(custom_partitioning, static_argnums=(2, 3, 4, 5))
def _dense_kernel_grad(x, dy, shape, stride, top, left):
    return _call("DenseKernelGrad", shape, x, dy, stride=stride, top=top, left=left)


def _dense_shardings(mesh, arg_shapes):
    batch = NamedSharding(mesh, PartitionSpec(_batch_axes(arg_shapes[0].sharding)))
    return NamedSharding(mesh, PartitionSpec()), (batch, batch)


def _dense_partition(shape, stride, top, left, mesh, arg_shapes, result_shape):
    out, args = _dense_shardings(mesh, arg_shapes)
    axes = _batch_axes(args[0])

    def lower(x, dy):  # each device's images, then the sum over the devices
        local = _call("DenseKernelGrad", shape, x, dy, stride=stride, top=top, left=left)
        return local if axes is None else jax.lax.psum(local, axes)

    return mesh, lower, out, args


def _dense_infer(shape, stride, top, left, mesh, arg_shapes, result_shape):
    return _dense_shardings(mesh, arg_shapes)[0]


_dense_kernel_grad.def_partition(_dense_partition, infer_sharding_from_operands=_dense_infer,
                                 sharding_rule="n h w i, n y z o -> k l i o", reduction_factors=("n",))


def dense_kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape, stride: int, padding) -> jax.Array:
    """The kernel gradient (k, k, ci, co) of a dense convolution of x (stride, padding ((top, _),
    (left, _))) given its output cotangent dy, without XLA's shifted and transposed copies."""
    (top, _), (left, _) = padding
    return _dense_kernel_grad(x, dy, tuple(kernel_shape), stride, top, left)


@jax.custom_vjp
def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x (N, H, W, ci) @ kernel (ci, co), with the kernel gradient computed by `cpu_kernels.cc`."""
    return jnp.einsum("nhwi,io->nhwo", x, kernel)


def _pointwise_fwd(x, kernel):
    return pointwise_conv(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, dy):
    x, kernel = residuals
    dk = dense_kernel_grad(x, dy, (1, 1, *kernel.shape), 1, ((0, 0), (0, 0)))
    return jnp.einsum("nhwo,io->nhwi", dy, kernel), dk[0, 0]


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)
