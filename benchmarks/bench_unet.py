"""SaltUNet speed, JAX vs our PyTorch build of the original (convert/torch_unet.py).

    python benchmarks/bench_unet.py                                  # SE-ResNeXt-50, batch 2, CPU
    python benchmarks/bench_unet.py --model tiny --batch 8
    python benchmarks/bench_unet.py --batch 32 --precision float32 bfloat16 --no-torch   # on a GPU

Both frameworks run the same weights (the JAX model is converted from the torch one, which
is also much faster than NNX's eager initialisation). Tasks, one JSON line each appended to
benchmarks/results.jsonl (date, device, task, model, framework, variant, precision, batch,
images_per_s, ms, ms_min, ms_max, load average):
  unet_forward     eval mode, both outputs;
  unet_train_step  train-mode BatchNorm, 0.1 * BCE(p) + BCE(mask logits), backward, Adam.
Figures are the median of `--repeats` timed calls after one untimed (compiling) call, each
call synchronised with the device; the frameworks and variants are called in turn (one call
each, then again), so a drifting machine load hits them alike.
JAX variants (`--variants`): "default", the library's convolution formulations for this
backend; "xla", every convolution XLA's own with the block-diagonal grouped conv (the CPU
default before issue 11).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from timing import timed_alternating

RESULTS = pathlib.Path(__file__).with_name("results.jsonl")
LR = 1e-4
# nnx.view arguments per JAX variant; "default" leaves every layer's choice to layers.py.
JAX_VARIANTS = {"default": {}, "xla": {"impl": "dense", "conv_impl": "xla", "conv_transpose_impl": "xla"}}


def batch_data(batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (N, 128, 128, 3), masks (N, 128, 128, 1), has-salt targets (N, 1)."""
    rng = np.random.default_rng(0)
    x = rng.random((batch, 128, 128, 3), dtype=np.float32)
    masks = (x[..., :1] > 0.6).astype(np.float32)
    has_salt = (masks.reshape(batch, -1).max(axis=1, keepdims=True) > 0).astype(np.float32)
    return x, masks, has_salt


def loss_terms(logits, prob, masks, has_salt, bce, bce_logits):
    """0.1 * BCE(salt prob, any salt) + BCE(mask logits): the shape of the original's loss."""
    return 0.1 * bce(prob, has_salt) + bce_logits(logits, masks)


# ---------------------------------------------------------------- JAX


def jax_programs(model: nnx.Module, x, masks, has_salt) -> dict[str, tuple[Callable, tuple]]:
    """Jitted forward (eval) and train step (train-mode BN + Adam) with their first arguments."""
    xj, mj, hj = jnp.asarray(x), jnp.asarray(masks), jnp.asarray(has_salt)
    model.eval()
    eval_def, eval_state = nnx.split(model)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(LR)
    opt_state = tx.init(params)

    forward = jax.jit(lambda state, x: nnx.merge(eval_def, state)(x))

    def loss_fn(params, rest, x, masks, has_salt):
        net = nnx.merge(graphdef, params, rest, copy=True)
        logits, prob = net(x)
        bce = lambda p, t: -jnp.mean(t * jnp.log(p + 1e-7) + (1 - t) * jnp.log(1 - p + 1e-7))  # noqa: E731
        bce_logits = lambda z, t: jnp.mean(optax.sigmoid_binary_cross_entropy(z, t))  # noqa: E731
        return loss_terms(logits, prob, masks, has_salt, bce, bce_logits), nnx.state(net, nnx.BatchStat)

    @jax.jit
    def train_step(params, rest, opt_state, x, masks, has_salt):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest, x, masks, has_salt)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    return {
        "unet_forward": (forward, (eval_state, xj)),
        "unet_train_step": (train_step, (params, rest, opt_state, xj, mj, hj)),
    }


def jax_tasks(model: nnx.Module, x, masks, has_salt) -> dict[str, Callable[[], object]]:
    """The programs of `jax_programs` as blocking calls; the train step carries its state along."""
    programs = jax_programs(model, x, masks, has_salt)
    forward, forward_args = programs["unet_forward"]
    train_step, (params, rest, opt_state, *batch) = programs["unet_train_step"]

    def step():
        nonlocal params, rest, opt_state
        # Without the classifier head's other variables, `rest` is exactly the BatchNorm statistics.
        params, rest, opt_state, loss = train_step(params, rest, opt_state, *batch)
        jax.block_until_ready(loss)

    return {
        "unet_forward": lambda: jax.block_until_ready(forward(*forward_args)),
        "unet_train_step": step,
    }


# ---------------------------------------------------------------- PyTorch


def torch_tasks(model, x, masks, has_salt) -> dict[str, Callable[[], object]]:
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    mt = torch.from_numpy(masks.transpose(0, 3, 1, 2).copy())
    ht = torch.from_numpy(has_salt)
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def forward():
        model.eval()
        with torch.no_grad():
            model(xt)

    def step():
        model.train()
        opt.zero_grad()
        logits, prob = model(xt)
        loss = loss_terms(logits, prob, mt, ht, F.binary_cross_entropy, F.binary_cross_entropy_with_logits)
        loss.backward()
        opt.step()

    return {"unet_forward": forward, "unet_train_step": step}


# ---------------------------------------------------------------- main


def device_name(framework: str) -> str:
    if framework == "torch":
        import torch

        return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    dev = jax.devices()[0]
    return f"{dev.platform}: {getattr(dev, 'device_kind', '')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="se_resnext50_32x4d", choices=["se_resnext50_32x4d", "se_resnext101_32x4d", "tiny"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--tasks", nargs="+", default=["unet_forward", "unet_train_step"])
    parser.add_argument("--variants", nargs="+", default=["default"], choices=list(JAX_VARIANTS))
    parser.add_argument("--no-torch", action="store_true", help="JAX only (e.g. on a GPU machine)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from convert.torch_to_flax import convert_state
    from convert.torch_unet import TorchSaltUNet
    from salt_jax.models import archs

    torch.manual_seed(0)
    t_model = TorchSaltUNet(args.model)
    arch = "unet_tiny" if args.model == "tiny" else f"unet_{args.model}"
    state = {k: v.numpy().copy() for k, v in t_model.state_dict().items()}
    data = batch_data(args.batch)

    runs = {}
    for precision in args.precision:
        model = archs.build(arch, abstract=True, dtype=jnp.dtype(precision))
        nnx.update(model, nnx.state(convert_state(arch, state)))
        for variant in args.variants:
            runs[("jax", variant, precision)] = jax_tasks(nnx.view(model, **JAX_VARIANTS[variant]), *data)
    if not args.no_torch:
        runs[("torch", "eager", "float32")] = torch_tasks(t_model, *data)

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(args.out, "a") as out:
        for task in args.tasks:
            load_before = os.getloadavg()[0]
            times = timed_alternating({key: tasks[task] for key, tasks in runs.items()}, args.repeats)
            for (framework, variant, precision), t in times.items():
                row = {
                    "date": date, "device": device_name(framework), "task": task, "model": f"unet_{args.model}",
                    "framework": framework, "variant": variant, "precision": precision, "batch": args.batch,
                    "images_per_s": round(args.batch * 1e3 / t["ms"], 3), **t,
                    "loadavg": [round(load_before, 1), round(os.getloadavg()[0], 1)], "alternating": True,
                    "versions": {"jax": jax.__version__, "torch": torch.__version__},
                }  # fmt: skip
                print(json.dumps(row), flush=True)
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
