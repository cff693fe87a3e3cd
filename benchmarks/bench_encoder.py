"""Grouped-convolution and SE-ResNeXt-50 speed: JAX native vs dense grouped conv vs PyTorch.

    python benchmarks/bench_encoder.py                 # backend picked by JAX (cpu here)
    python benchmarks/bench_encoder.py --device gpu --batch 32 --size 128 --repeats 10

Measures, appending one JSON line each to benchmarks/results.jsonl:
  (a) task "grouped_conv_fwd_bwd": one 3x3 conv, 32 groups, 128 -> 128 channels at 32x32
      (layer1's grouped conv of the 50 at a 128x128 input), forward + gradients w.r.t. the
      input and the kernel;
  (b) task "encoder_forward" / "encoder_train_step": SE-ResNeXt-50 with the standard stem and
      a 1000-class head; forward in eval mode; train step = forward in train mode (batch
      statistics) + softmax cross-entropy + backward + plain SGD update.
Each figure is the median of `--repeats` timed calls after one untimed (compiling) call, with
a device sync inside every call (benchmarks/timing.py); lines follow benchmarks/records.py's
schema (min, max and the load average too: the CPU box is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's salt_jax and convert
import records  # noqa: E402
from salt_jax.models.layers import GroupedConv  # noqa: E402
from salt_jax.models.senet import se_resnext50_32x4d  # noqa: E402
from timing import timed  # noqa: E402

LR = 0.01


# ---------------------------------------------------------------- JAX


def jax_grouped_conv(impl: str, batch: int) -> Callable[[], object]:
    layer = GroupedConv(128, 128, 3, groups=32, impl=impl, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 128))

    @jax.jit
    def fwd_bwd(params, x):
        return jax.grad(lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x) ** 2), argnums=(0, 1))(params, x)

    return lambda: jax.block_until_ready(fwd_bwd(params, x))


def jax_encoder(impl: str, batch: int, size: int) -> tuple[Callable[[], object], Callable[[], object]]:
    """(forward, train_step) closures for SE-ResNeXt-50 with grouped convs computed as `impl`."""
    model = nnx.jit(lambda: se_resnext50_32x4d(rngs=nnx.Rngs(0), grouped_impl=impl))()
    x = jax.random.uniform(jax.random.key(1), (batch, size, size, 3))
    y = jax.random.randint(jax.random.key(2), (batch,), 0, 1000)

    graphdef, state = nnx.split(nnx.view(model, use_running_average=True))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))

    train_model = nnx.view(model, use_running_average=False)

    @nnx.jit
    def train_step(m, x, y):
        def loss_fn(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(m)  # BatchStat updates flow back into m
        nnx.update(m, jax.tree.map(lambda p, g: p - LR * g, nnx.state(m, nnx.Param), grads))
        return loss

    def step():
        return jax.block_until_ready(train_step(train_model, x, y))

    return (lambda: jax.block_until_ready(forward(state, x))), step


# ---------------------------------------------------------------- PyTorch


def torch_cases(batch: int, size: int, device: str) -> dict[str, Callable[[], object]]:
    import torch

    from convert.reference import torch_senet

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    conv = torch.nn.Conv2d(128, 128, 3, padding=1, groups=32, bias=False).to(dev)
    xc = torch.randn(batch, 128, 32, 32, device=dev, requires_grad=True)

    def conv_fwd_bwd():
        conv.weight.grad = xc.grad = None
        (conv(xc) ** 2).sum().backward()
        sync()

    model = torch_senet("se_resnext50_32x4d", adaptive_pool=True).to(dev)
    x = torch.rand(batch, 3, size, size, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def forward():
        model.eval()
        with torch.no_grad():
            model(x)
        sync()

    def train_step():
        model.train()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sync()

    return {"grouped_conv_fwd_bwd": conv_fwd_bwd, "encoder_forward": forward, "encoder_train_step": train_step}


# ---------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "gpu", "tpu"], default=jax.default_backend())
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--impls", default="native,dense", help="grouped-conv implementations to time")
    parser.add_argument("--parts", default="layer,model", help="layer (a), model (b) or both")
    parser.add_argument("--no-torch", action="store_true", help="JAX only (e.g. no CUDA torch on the box)")
    parser.add_argument("--out", type=pathlib.Path, default=records.RESULTS)
    args = parser.parse_args()
    if args.device != jax.default_backend():
        jax.config.update("jax_platform_name", args.device)
    if args.device == "cpu":
        import torch

        torch.set_num_threads(os.cpu_count())

    def record(task: str, framework: str, variant: str, fn: Callable[[], object]) -> None:
        layer = task == "grouped_conv_fwd_bwd"
        line = records.record(task, framework=framework, batch=args.batch, timing=timed(fn, args.repeats),
                              model="grouped_conv_128x128_g32_at32" if layer else "se_resnext50_32x4d",
                              variant=variant, precision="float32", size=32 if layer else args.size)
        print(json.dumps(line), flush=True)
        records.append(line, args.out)

    impls, parts = args.impls.split(","), args.parts.split(",")
    if "layer" in parts:
        for impl in impls:
            record("grouped_conv_fwd_bwd", "jax", impl, jax_grouped_conv(impl, args.batch))
        if not args.no_torch:
            record("grouped_conv_fwd_bwd", "torch", "groups=32", torch_cases(args.batch, args.size, args.device)["grouped_conv_fwd_bwd"])
    if "model" in parts:
        for impl in impls:
            forward, train_step = jax_encoder(impl, args.batch, args.size)
            record("encoder_forward", "jax", impl, forward)
            record("encoder_train_step", "jax", impl, train_step)
        if not args.no_torch:
            cases = torch_cases(args.batch, args.size, args.device)
            record("encoder_forward", "torch", "groups=32", cases["encoder_forward"])
            record("encoder_train_step", "torch", "groups=32", cases["encoder_train_step"])

if __name__ == "__main__":
    main()
