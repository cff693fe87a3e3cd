"""Every formulation of a convolution (layers.py) against torch's autograd in float64.

The reference is torch's `F.conv2d(groups=g)` and its autograd, run in float64: an
implementation independent of XLA, exact to ~1e-16 at these sizes. Values and gradients are
compared with

    rel_err(a, b) = max|a - b| / max|b|

(the worst absolute error in units of the largest reference entry; element-wise relative error
is meaningless for entries that happen to sit near zero).

float32 tolerance 1e-5: each entry is a sum of at most a few hundred products (9 * cin/g for
the value and the input gradient, n * h * w for the kernel gradient); float32 rounding (6e-8
per operation) over such sums stays below ~2e-6 even summed linearly over a few hundred terms of
random sign, while a wrong tap, group or stride gives errors of order 1.
bfloat16 tolerance 2e-2: bf16 keeps 8 significant bits (rounding 2^-9 = 2e-3 per operation);
inputs, kernel, cotangent and outputs are each rounded once and XLA may accumulate in bf16, so a
few 2^-9 roundings plus partial-sum rounding; 2e-2 is 10x that, still far below an indexing error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from salt_jax.models import cpu_kernels, layers
from salt_jax.models import presets
from tests.torch_reference import optional_torch

torch, needs_torch = optional_torch()  # the torch references skip; the CPU defaults and the UNet wiring need only JAX

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parents[1]
F32_RTOL, BF16_RTOL = 1e-5, 2e-2


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def grouped_shapes() -> list[tuple[str, int, int, int]]:
    """(encoders, width, groups, stride) of every grouped 3x3 conv shape the encoders contain.

    A stage's first block carries its stride (1, 2, 2, 2), the others stride 1.
    SE-ResNeXt-50 and -101 differ only in block counts, so they share their shapes.
    """
    users: dict[tuple[int, int, int], list[str]] = {}
    for name in presets.names():
        cfg = presets.get(name).senet
        for planes, blocks, stride in zip(cfg.planes, cfg.blocks, (1, 2, 2, 2)):
            width = (planes * cfg.base_width // 64) * cfg.groups
            for s in {stride, 1} if blocks > 1 else {stride}:
                users.setdefault((width, cfg.groups, s), []).append(name)
    return sorted(("+".join(sorted(set(names))), *shape) for shape, names in users.items())


def case(width: int, groups: int, size: int, seed: int = 0):
    """x (2, size, size, width), kernel (3, 3, width/g, width), cotangent of the output."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, size, size, width)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, width // groups, width)) / np.sqrt(9 * width // groups)).astype(np.float32)
    return x, kernel, rng


def torch_reference(x, kernel, dy, stride, padding, groups):
    """(y, dx, dkernel) from torch autograd in float64; NHWC/HWIO in and out."""
    xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    kt = torch.tensor(kernel.transpose(3, 2, 0, 1), dtype=torch.float64, requires_grad=True)  # OIHW
    y = torch.nn.functional.conv2d(xt, kt, stride=stride, padding=padding, groups=groups)
    y.backward(torch.tensor(dy.transpose(0, 3, 1, 2), dtype=torch.float64))
    return (y.detach().numpy().transpose(0, 2, 3, 1), xt.grad.numpy().transpose(0, 2, 3, 1),
            kt.grad.numpy().transpose(2, 3, 1, 0))


def grouped_value_and_grads(impl, x, kernel, dy, stride, groups, dtype):
    """(y, dx, dkernel) of a GroupedConv with `impl` under jit, as float32 numpy."""
    conv = layers.GroupedConv(x.shape[-1], kernel.shape[-1], 3, stride=stride, padding=1, groups=groups,
                              impl=impl, dtype=dtype, rngs=nnx.Rngs(0))
    conv.kernel[...] = jnp.asarray(kernel)
    graphdef, state = nnx.split(conv)

    @jax.jit
    def run(state, x, dy):
        y, vjp = jax.vjp(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
        dstate, dx = vjp(dy.astype(y.dtype))
        return y, dx, dstate["kernel"][...]

    return [np.asarray(a, np.float32) for a in run(state, jnp.asarray(x, dtype), jnp.asarray(dy))]


needs_kernels = pytest.mark.skipif(not cpu_kernels.usable(jnp.float32),
                                   reason="the C++ grouped-conv kernels need XLA:CPU and a C++ compiler")


def bf16_round(a: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.asarray(a, jnp.bfloat16), np.float32)


@needs_torch
@pytest.mark.parametrize("impl", ["taps", "dense", "blocks"])
@pytest.mark.parametrize("encoder,width,groups,stride", grouped_shapes())
def test_grouped_conv_value_and_grads_float32(encoder, width, groups, stride, impl):
    # 6x6: even like every map of the 128x128 UNet (the stride-2 windows end at the last column).
    x, kernel, rng = case(width, groups, size=6)
    dy = rng.standard_normal((2, 6 // stride, 6 // stride, width)).astype(np.float32)
    expected = torch_reference(x, kernel, dy, stride, 1, groups)
    got = grouped_value_and_grads(impl, x, kernel, dy, stride, groups, jnp.float32)
    for name, g, e in zip(("value", "input grad", "kernel grad"), got, expected):
        assert rel_err(g, e) <= F32_RTOL, (encoder, name)


@needs_torch
@needs_kernels
@pytest.mark.parametrize("encoder,width,groups,stride",
                         [s for s in grouped_shapes()
                          if cpu_kernels.supports_grouped((s[1],), (3, 3, s[1] // s[2], s[1]), ((1, 1), (1, 1)))])
def test_grouped_conv_ffi_value_and_grads_float32(encoder, width, groups, stride):
    # The SE-ResNeXts' shapes (the tiny encoder's 32-64 channels are not multiples of 64, see below).
    x, kernel, rng = case(width, groups, size=6)
    dy = rng.standard_normal((2, 6 // stride, 6 // stride, width)).astype(np.float32)
    expected = torch_reference(x, kernel, dy, stride, 1, groups)
    got = grouped_value_and_grads("ffi", x, kernel, dy, stride, groups, jnp.float32)
    for name, g, e in zip(("value", "input grad", "kernel grad"), got, expected):
        assert rel_err(g, e) <= F32_RTOL, (encoder, name)


@needs_torch
@needs_kernels
@pytest.mark.parametrize("width,groups,size,stride", [
    (64, 64, 9, 1), (128, 64, 7, 2), (64, 16, 6, 2), (128, 16, 5, 3), (64, 16, 1, 1),
    (256, 16, 1, 1), (128, 4, 9, 1), (256, 4, 7, 2), (64, 1, 6, 2), (128, 8, 5, 3)])
def test_grouped_conv_ffi_every_form(width, groups, size, stride):
    # Every channels-per-group the kernels take (1, 2, 4, 8: the "shift" loop; 16, 32, 64: the
    # "broadcast" loop), one or several 64-channel blocks, maps narrower and wider than the
    # 4-pixel register block, odd sizes (the last input column unread at stride 2), stride 3
    # (three column phases in the input gradient) and 1-pixel maps (every tap but the centre in
    # the padding), each loop with strides 1, 2 and 3.
    x, kernel, rng = case(width, groups, size=size)
    out = (size - 1) // stride + 1
    dy = rng.standard_normal((2, out, out, width)).astype(np.float32)
    expected = torch_reference(x, kernel, dy, stride, 1, groups)
    got = grouped_value_and_grads("ffi", x, kernel, dy, stride, groups, jnp.float32)
    for name, g, e in zip(("value", "input grad", "kernel grad"), got, expected):
        assert rel_err(g, e) <= F32_RTOL, name


@needs_kernels
def test_grouped_conv_ffi_outside_its_cover():
    # bfloat16 or a width that is not a multiple of 64: the default falls back to "blocks"
    # (same numbers as "blocks" itself); asking for "ffi" there is an error, not a silent switch.
    rng = np.random.default_rng(1)
    for (x, kernel, _), dtype in ((case(32, 8, size=6), jnp.float32), (case(128, 32, size=6), jnp.bfloat16)):
        groups = x.shape[-1] // kernel.shape[2]
        dy = rng.standard_normal(x.shape).astype(np.float32)
        blocks = grouped_value_and_grads("blocks", x, kernel, dy, 1, groups, dtype)
        default = grouped_value_and_grads(None, x, kernel, dy, 1, groups, dtype)
        for a, b in zip(default, blocks):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError, match="impl='ffi'"):
            grouped_value_and_grads("ffi", x, kernel, dy, 1, groups, dtype)


@needs_torch
@pytest.mark.parametrize("impl", ["taps", "blocks"])
@pytest.mark.parametrize("size,stride", [(7, 2), (7, 1), (5, 2)])
def test_grouped_conv_odd_sizes(impl, size, stride):
    # Off the UNet's path, but the layer is public: an odd map leaves the last input column
    # unread at stride 2; at stride 1 the blocks' input gradient is a convolution of dy.
    x, kernel, rng = case(16, 4, size=size)
    out = (size - 1) // stride + 1
    dy = rng.standard_normal((2, out, out, 16)).astype(np.float32)
    expected = torch_reference(x, kernel, dy, stride, 1, 4)
    got = grouped_value_and_grads(impl, x, kernel, dy, stride, 4, jnp.float32)
    assert max(rel_err(g, e) for g, e in zip(got, expected)) <= F32_RTOL


@needs_torch
@pytest.mark.parametrize("impl", ["taps", "dense", "blocks"])
@pytest.mark.parametrize("width,groups,stride", [(128, 32, 1), (256, 32, 2), (16, 4, 2)])
def test_grouped_conv_value_and_grads_bfloat16(width, groups, stride, impl):
    """bf16 compute, float32 kernel parameter: against float64 on the bf16-rounded inputs."""
    x, kernel, rng = case(width, groups, size=6)
    dy = rng.standard_normal((2, 6 // stride, 6 // stride, width)).astype(np.float32)
    x, dy = bf16_round(x), bf16_round(dy)
    expected = torch_reference(x, bf16_round(kernel), dy, stride, 1, groups)
    got = grouped_value_and_grads(impl, x, kernel, dy, stride, groups, jnp.bfloat16)
    for name, g, e in zip(("value", "input grad", "kernel grad"), got, expected):
        assert rel_err(g, e) <= BF16_RTOL, name


SHARDED_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from salt_jax.mesh import DATA_AXIS, data_mesh
from salt_jax.models.layers import GroupedConv
from tests.test_conv_formulations import case

assert jax.device_count() == 2, jax.devices()
width, groups, stride = 256, 32, 2
x, kernel, rng = case(width, groups, size=6)
x = np.concatenate([x, x[::-1] * 0.5])  # batch 4: two images per device
dy = rng.standard_normal((4, 3, 3, width)).astype(np.float32)
conv = GroupedConv(width, width, 3, stride=stride, groups=groups, impl=sys.argv[2], rngs=nnx.Rngs(0))
conv.kernel[...] = jnp.asarray(kernel)
graphdef, state = nnx.split(conv)
mesh = data_mesh()
batch = NamedSharding(mesh, P(DATA_AXIS))
state = jax.device_put(state, NamedSharding(mesh, P()))

@jax.jit
def step(state, x, dy):
    # <y, dy> as the loss: its gradients are exactly the VJP of the conv with cotangent dy.
    def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x) * dy)
    (value, (dstate, dx)) = jax.value_and_grad(loss, argnums=(0, 1))(state, x)
    return value, dx, dstate["kernel"][...]

value, dx, dk = jax.block_until_ready(step(state, jax.device_put(x, batch), jax.device_put(dy, batch)))
assert dx.sharding.spec[0] == DATA_AXIS, dx.sharding
np.savez(sys.argv[1], x=x, kernel=kernel, dy=dy, value=np.asarray(value), dx=np.asarray(dx), dk=np.asarray(dk))
print("ok")
"""


@needs_torch
@pytest.mark.parametrize("impl", ["blocks", pytest.param("ffi", marks=needs_kernels)])
def test_grouped_conv_under_data_parallel_sharding(tmp_path, impl):
    """Batch sharded over 2 fake CPU devices: the kernel gradient sums over both shards. ("taps"
    shares its kernel gradient with "blocks" and its forward with "native": one subprocess less.)"""
    out = tmp_path / "sharded.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT, str(out), impl], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    got = np.load(out)
    y, dx, dk = torch_reference(got["x"], got["kernel"], got["dy"], 2, 1, 32)
    assert rel_err(got["value"], np.sum(y * got["dy"])) <= F32_RTOL
    assert rel_err(got["dx"], dx) <= F32_RTOL
    assert rel_err(got["dk"], dk) <= F32_RTOL


POINTWISE_SHARDED_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from salt_jax.mesh import DATA_AXIS, data_mesh
from salt_jax.models import layers

rng = np.random.default_rng(5)
x = rng.standard_normal((4, 48, 48, 64)).astype(np.float32)  # 2 images, 4608 pixels per device
dy = rng.standard_normal((4, 48, 48, 32)).astype(np.float32)
conv = layers.conv(64, 32, 1, use_bias=True, rngs=nnx.Rngs(0))
graphdef, state = nnx.split(conv)
mesh = data_mesh()
batch = NamedSharding(mesh, P(DATA_AXIS))
state = jax.device_put(state, NamedSharding(mesh, P()))
step = jax.jit(jax.grad(lambda s, x: jnp.sum(nnx.merge(graphdef, s)(x) * dy), argnums=(0, 1)))
assert "salt_DenseKernelGrad" in step.lower(state, jax.device_put(x, batch)).compile().as_text()
dstate, dx = jax.block_until_ready(step(state, jax.device_put(x, batch)))
np.savez(sys.argv[1], x=x, kernel=np.asarray(conv.kernel[...]), bias=np.asarray(conv.bias[...]), dy=dy, dx=np.asarray(dx),
         dk=np.asarray(dstate["kernel"][...]))
print("ok")
"""


@needs_torch
@needs_kernels
def test_pointwise_conv_under_data_parallel_sharding(tmp_path):
    """The C++ 1x1 kernel gradient on 2 fake CPU devices: each device's images, summed across both."""
    out = tmp_path / "sharded.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", POINTWISE_SHARDED_SCRIPT, str(out)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    got = np.load(out)
    _, dx, dk, _ = torch_conv_reference(got["x"], got["kernel"], got["bias"], got["dy"], 1, 0)
    assert rel_err(got["dx"], dx) <= F32_RTOL
    assert rel_err(got["dk"], dk) <= F32_RTOL


def test_defaults_and_env_overrides(monkeypatch):
    for env in ("SALT_JAX_GROUPED_CONV", "SALT_JAX_CONV", "SALT_JAX_CONV_TRANSPOSE"):
        monkeypatch.delenv(env, raising=False)
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU defaults")
    grouped = "ffi" if cpu_kernels.available() else "blocks"
    assert (layers.default_grouped_impl(32), layers.default_conv_impl(), layers.default_conv_transpose_impl()) == (
        grouped, "matmul", "phases")
    assert layers.default_grouped_impl(4) == "dense"  # the tiny encoder's 4 groups
    # Accelerators: the algorithms that won there (grouped: docs/BENCHMARKS.md, H200) or XLA's own.
    with monkeypatch.context() as m:
        m.setattr(layers.jax, "default_backend", lambda: "gpu")
        assert (layers.default_grouped_impl(32), layers.default_grouped_impl(4), layers.default_conv_impl(),
                layers.default_conv_transpose_impl()) == ("native", "native", "xla", "xla")
    monkeypatch.setenv("SALT_JAX_GROUPED_CONV", "dense")
    monkeypatch.setenv("SALT_JAX_CONV", "xla")
    assert (layers.default_grouped_impl(32), layers.default_conv_impl()) == ("dense", "xla")
    monkeypatch.setenv("SALT_JAX_CONV_TRANSPOSE", "fast")
    with pytest.raises(ValueError, match="SALT_JAX_CONV_TRANSPOSE='fast'"):
        layers.default_conv_transpose_impl()


def torch_conv_reference(x, kernel, bias, dy, stride, padding, transposed=False):
    """(y, dx, dkernel, dbias) of torch's Conv2d / ConvTranspose2d in float64, NHWC and our kernel layout.

    Our conv kernel is HWIO; our transposed-conv kernel is (k, k, out, in), i.e. torch's
    ConvTranspose2d weight (in, out, k, k) with the spatial axes first and in/out swapped.
    """
    f64 = dict(dtype=torch.float64, requires_grad=True)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), **f64)
    kt = torch.tensor(kernel.transpose(3, 2, 0, 1), **f64)  # OIHW; for ConvTranspose2d (in, out, k, k)
    bt = torch.tensor(bias, **f64)
    op = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    y = op(xt, kt, bt, stride=stride, padding=padding)
    y.backward(torch.tensor(dy.transpose(0, 3, 1, 2), dtype=torch.float64))
    return (y.detach().numpy().transpose(0, 2, 3, 1), xt.grad.numpy().transpose(0, 2, 3, 1),
            kt.grad.numpy().transpose(2, 3, 1, 0), bt.grad.numpy())


def layer_value_and_grads(layer, x, dy, dtype=jnp.float32):
    """(y, dx, dkernel, dbias) of an NNX conv layer under jit, as float32 numpy."""
    graphdef, state = nnx.split(layer)

    @jax.jit
    def run(state, x, dy):
        y, vjp = jax.vjp(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
        dstate, dx = vjp(dy.astype(y.dtype))
        return y, dx, dstate["kernel"][...], dstate["bias"][...]

    return [np.asarray(a, np.float32) for a in run(state, jnp.asarray(x, dtype), jnp.asarray(dy))]


# (in, out, kernel, stride, padding, size): the UNet's plain conv kinds at small sizes. 1x1:
# bottleneck conv1/conv3, the strided downsample, sSE's and the final 1-channel convs;
# 3x3: decoder and center convs; 7x7: the stem (3 input channels, stays XLA's).
# 3x3 "matmul": (96, 64) and (40, 24) have kernels larger than their maps (conv2d_taps),
# (8, 4) at 6x6 and the stride-2 ones do not (XLA's convolution with the tap-wise kernel gradient).
# Where the C++ kernels built, kernel gradients with in/out channels multiples of 4/16 come from
# cpu_kernels.dense_kernel_grad: (96, 64), (8, 16) at 12x12, (16, 32) at stride 2 on an odd map.
PLAIN_CONVS = [(64, 128, 1, 1, 0, 6), (256, 512, 1, 2, 0, 6), (64, 1, 1, 1, 0, 6), (96, 64, 3, 1, 1, 6),
               (40, 24, 3, 1, 1, 5), (8, 4, 3, 1, 1, 6), (8, 16, 3, 1, 1, 12), (16, 8, 3, 2, 1, 6),
               (16, 32, 3, 2, 1, 7), (3, 16, 7, 1, 3, 8)]


def test_kernel_outweighs_map_picks_the_cases_above():
    assert layers.kernel_outweighs_map((2, 6, 6, 96), (3, 3, 96, 64))  # 9 * 64 > 2 * 6 * 6
    assert layers.kernel_outweighs_map((2, 5, 5, 40), (3, 3, 40, 24))
    assert not layers.kernel_outweighs_map((2, 6, 6, 8), (3, 3, 8, 4))  # 36 < 72
    # The 50's decoder at batch 2: 2560->512 at 16x16 takes the taps, 576->256 at 64x64 does not.
    assert layers.kernel_outweighs_map((2, 16, 16, 2560), (3, 3, 2560, 512))
    assert not layers.kernel_outweighs_map((2, 64, 64, 576), (3, 3, 576, 256))
    assert not layers.kernel_outweighs_map((2, 32, 32, 1088), (3, 3, 1088, 256))  # 2304 < 1.5 * 2048


@needs_torch
@pytest.mark.parametrize("impl", ["matmul", "xla"])
@pytest.mark.parametrize("cin,cout,k,stride,padding,size", PLAIN_CONVS)
def test_conv_value_and_grads_float32(cin, cout, k, stride, padding, size, impl):
    layer = layers.conv(cin, cout, k, stride=stride, padding=padding, use_bias=True, rngs=nnx.Rngs(0))
    layer.impl = impl
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, size, size, cin)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    layer.kernel[...], layer.bias[...] = jnp.asarray(kernel), jnp.asarray(bias)
    out = (size + 2 * padding - k) // stride + 1
    dy = rng.standard_normal((2, out, out, cout)).astype(np.float32)
    expected = torch_conv_reference(x, kernel, bias, dy, stride, padding)
    for name, g, e in zip(("value", "input grad", "kernel grad", "bias grad"), layer_value_and_grads(layer, x, dy), expected):
        assert rel_err(g, e) <= F32_RTOL, name


# The C++ forward of dense stride-1 "same" convs (cpu_kernels.dense_conv_forward, the "matmul"
# forward where it built): pixel runs of 1-3 after the 4-pixel tiles (widths 5, 7, 1), output
# channels in 1, 3 and 4 vectors of 16, input channels over one 256-channel block (300), 1x1 and
# 5x5 kernels. Values only: the gradients are the formulations' own, checked above.
DENSE_FORWARD_CONVS = [(300, 48, 3, 1, 5), (8, 16, 3, 1, 7), (24, 64, 5, 2, 6), (12, 32, 1, 0, 3), (16, 80, 3, 1, 1)]


@needs_torch
@needs_kernels
@pytest.mark.parametrize("cin,cout,k,padding,size", DENSE_FORWARD_CONVS)
def test_dense_conv_forward_float32(cin, cout, k, padding, size):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, size, size, cin)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
    y = jax.jit(cpu_kernels.dense_conv_forward)(jnp.asarray(x), jnp.asarray(kernel))
    expected = torch_conv_reference(x, kernel, np.zeros(cout, np.float32), np.zeros((2, size, size, cout), np.float32),
                                    1, padding)[0]
    assert rel_err(y, expected) <= F32_RTOL
    if k == 3:  # and the "matmul" conv layer calls it
        layer = layers.conv(cin, cout, k, padding=padding, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(layer)
        text = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, jnp.asarray(x)).as_text()
        assert "salt_DenseConvForward" in text


# 1x1 convs over >= 2048 pixels, where "matmul" takes its kernel gradient from the C++ kernel
# (cpu_kernels.pointwise_conv): 2x48x48 pixels, the strided one subsampled from 96x96; channels
# off the kernel's 4/16 multiples fall back to XLA's dot.
POINTWISE_CONVS = [(64, 128, 1, 1, 0, 48), (64, 32, 1, 2, 0, 96), (48, 16, 1, 1, 0, 48), (60, 20, 1, 1, 0, 48)]


@needs_torch
@pytest.mark.parametrize("cin,cout,k,stride,padding,size", POINTWISE_CONVS)
def test_pointwise_conv_value_and_grads_float32(cin, cout, k, stride, padding, size):
    # The kernel gradient sums 4608 products per entry: float32 error ~1e-6 (see the module docstring).
    test_conv_value_and_grads_float32(cin, cout, k, stride, padding, size, "matmul")
    x_shape, kernel_shape = (2, size // stride, size // stride, cin), (cin, cout)
    if cpu_kernels.usable(jnp.float32) and cpu_kernels.supports_pointwise(x_shape, kernel_shape):
        layer = layers.conv(cin, cout, 1, stride=stride, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(layer)
        text = jax.jit(jax.grad(lambda s, x: jnp.sum(nnx.merge(graphdef, s)(x)))).lower(
            state, jnp.zeros((2, size, size, cin))).as_text()
        assert "salt_DenseKernelGrad" in text  # the C++ kernel gradient was the one checked above


@needs_torch
@pytest.mark.parametrize("impl", ["phases", "taps", "xla"])
@pytest.mark.parametrize("cin,cout,size,k,stride,padding", [(48, 16, 4, 4, 2, 1), (24, 8, 5, 4, 2, 1),
                                                            (12, 8, 3, 3, 2, 1), (12, 8, 4, 6, 2, 2),
                                                            (8, 4, 1, 4, 2, 1), (32, 16, 1, 4, 2, 1)])
def test_conv_transpose_value_and_grads_float32(cin, cout, size, k, stride, padding, impl):
    """torch ConvTranspose2d(k=4, s=2, p=1), the decoder's upsampling, and others: (3, 2, 1)'s
    output (2 * size - 1) is not stride x the input, so "phases" falls back to the taps; (6, 2, 2)
    has 3 taps per phase and axis; a 1x1 map has every tap on the border. "phases" takes its
    kernel gradient from cpu_kernels.dense_kernel_grad where channels are multiples of 4 (out)
    and 16 (in) and the kernels built: (48, 16) and (32, 16) here."""
    layer = layers.conv_transpose(cin, cout, k, stride=stride, padding=padding, dtype=jnp.float32, rngs=nnx.Rngs(0))
    layer.impl = impl
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, size, size, cin)).astype(np.float32)
    kernel = (rng.standard_normal((k, k, cout, cin)) / np.sqrt(k * cin)).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    layer.kernel[...], layer.bias[...] = jnp.asarray(kernel), jnp.asarray(bias)
    out = (size - 1) * stride + k - 2 * padding
    dy = rng.standard_normal((2, out, out, cout)).astype(np.float32)
    expected = torch_conv_reference(x, kernel, bias, dy, stride, padding, transposed=True)
    for name, g, e in zip(("value", "input grad", "kernel grad", "bias grad"), layer_value_and_grads(layer, x, dy), expected):
        assert rel_err(g, e) <= F32_RTOL, name


@needs_torch
def test_matmul_formulations_in_bfloat16():
    """bf16 compute, float32 parameters: against float64 on the bf16-rounded inputs."""
    rng = np.random.default_rng(3)
    # (layer, its transposed-conv impl or False for a conv, stride, padding, cin, cout, k)
    cases = [(layers.conv(64, 32, 1, stride=2, use_bias=True, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), False, 2, 0, 64, 32, 1),
             (layers.conv(48, 32, 3, padding=1, use_bias=True, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), False, 1, 1, 48, 32, 3),
             (layers.conv(8, 4, 3, padding=1, use_bias=True, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)), False, 1, 1, 8, 4, 3),
             *[(layers.conv_transpose(32, 16, 4, stride=2, padding=1, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
                impl, 2, 1, 32, 16, 4) for impl in ("taps", "phases")]]
    for layer, transposed, stride, padding, cin, cout, k in cases:
        layer.impl = transposed or "matmul"
        x = bf16_round(rng.standard_normal((2, 6, 6, cin)).astype(np.float32))
        shape = (k, k, cout, cin) if transposed else (k, k, cin, cout)
        kernel = bf16_round((rng.standard_normal(shape) / np.sqrt(k * k * cin)).astype(np.float32))
        bias = bf16_round(rng.standard_normal(cout).astype(np.float32))
        layer.kernel[...], layer.bias[...] = jnp.asarray(kernel), jnp.asarray(bias)
        out = 12 if transposed else (6 + 2 * padding - k) // stride + 1
        dy = bf16_round(rng.standard_normal((2, out, out, cout)).astype(np.float32))
        expected = torch_conv_reference(x, kernel, bias, dy, stride, padding, bool(transposed))
        got = layer_value_and_grads(layer, x, dy, jnp.bfloat16)
        for name, g, e in zip(("value", "input grad", "kernel grad"), got, expected):
            assert rel_err(g, e) <= BF16_RTOL, (type(layer).__name__, name)
        # The bias gradient is autodiff's bf16 sum of dy over (n, h, w) (as in nnx.Conv): its
        # rounding grows with the 72-288 summed terms, measured 2.1e-2; 5e-2 bounds it.
        assert rel_err(got[3], expected[3]) <= 5e-2, type(layer).__name__


def test_unet_gradients_equal_across_formulations():
    """The tiny SaltUNet's loss gradients: the CPU formulations against XLA's own convolutions.

    Every layer kind is checked against torch above; this checks the wiring (every conv of the
    model switches, parameters keep their names and shapes). BatchNorm runs on its running
    statistics: in train mode, at batch 2, its division by small batch deviations amplifies
    float32 reduction-order noise (measured 1.1e-3 relative L2 between the two formulations,
    against 4.6e-7 in eval mode and 8e-7 between XLA's native and dense grouped convs), which
    would hide nothing but blur the bound. 1e-5 relative L2 over all gradients; a layer computed
    wrongly gives errors of order 1.
    """
    from salt_jax.models import archs

    model = archs.build("unet_tiny")
    model.eval()
    x = jnp.asarray(np.random.default_rng(4).random((2, 128, 128, 3), np.float32))  # the classifier needs 128

    def grads(view):
        graphdef, params, rest = nnx.split(view, nnx.Param, ...)

        @jax.jit
        def g(params, rest):
            def loss(params):
                logits, prob = nnx.merge(graphdef, params, rest, copy=True)(x)
                return jnp.mean(jnp.sin(logits)) + jnp.mean(prob)
            return jax.grad(loss)(params)

        return nnx.to_flat_state(g(params, rest))

    plain = grads(nnx.view(model, impl="dense", conv_impl="xla", conv_transpose_impl="xla"))
    norm = sum(float(jnp.sum(jnp.square(b[...]))) for _, b in plain) ** 0.5
    for grouped, transposed in (("taps", "taps"), ("blocks", "phases")):
        fast = grads(nnx.view(model, impl=grouped, conv_impl="matmul", conv_transpose_impl=transposed))
        assert [path for path, _ in fast] == [path for path, _ in plain]
        err = sum(float(jnp.sum(jnp.square(a[...] - b[...]))) for (_, a), (_, b) in zip(fast, plain)) ** 0.5
        assert err <= 1e-5 * norm, (grouped, err, norm)
