"""SaltUNet speed, JAX vs our PyTorch build of the original (convert/torch_unet.py), calls alternating.

    python benchmarks/bench_unet.py                                  # SE-ResNeXt-50, batch 2, CPU
    python benchmarks/bench_unet.py --model tiny --batch 8
    python benchmarks/bench_unet.py --batch 32 --precision float32 bfloat16 --no-torch   # on a GPU

Both frameworks run the same weights (the JAX model is converted from the torch one, which
is also much faster than NNX's eager initialisation); with --no-torch, torch is not imported and
the JAX model starts from its own initialisation. Tasks (benchmarks/programs.py), one line
each appended to benchmarks/results.jsonl (benchmarks/records.py's schema):
  inference   eval mode, both outputs;
  train_step  JAX: the training's own jitted step (on-device augmentation, the Lovasz-phase
              gated loss, coupled-L2 Adam); torch: the same loss and the original's Adam, no
              augmentation (the original augmented in its DataLoader workers).
Figures are the median of `--repeats` timed calls after one untimed (compiling) call, each
call synchronised with the device; the frameworks and variants are called in turn (one call
each, then again), so a drifting machine load hits them alike, each timed call after `--settle`
untimed ones of its own (a call right after the other framework's ran slower).
JAX variants (`--variants`): "default", the library's convolution formulations for this
backend; "xla", every convolution XLA's own with the block-diagonal grouped conv (the CPU
default before issue 11); "taps", the default with the grouped convs on "taps" (XLA's grouped
forward and input gradient: the CPU default until "blocks", 2026-11-26); "blocks", the default
with the grouped convs on "blocks" (the CPU default until "ffi", and its fallback).
torch runs in a worker process of its own by default (`--same-process` for the old way), its calls
alternating with JAX's through a pipe, so that neither framework's threads or allocator share a
process with the other's. (The ~20% slower JAX inference first blamed on a warm torch in the same
process, 0.99 s against 0.77-0.80 s JAX-only, was numpy weights: the JAX model converted from
torch's held numpy arrays, which every jitted call copied; convert_state returns device arrays
since 2026-11-26.)
Before issue 14 this script timed its own copy of a train step (BCE losses, plain Adam) under
the task names unet_forward / unet_train_step; those lines stay in results.jsonl as they were.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(1, str(pathlib.Path(__file__).resolve().parents[1]))  # this checkout's salt_jax and convert
import programs  # noqa: E402
import records  # noqa: E402
from timing import timed_alternating  # noqa: E402

# nnx.view arguments per JAX variant; "default" leaves every layer's choice to layers.py.
JAX_VARIANTS = {"default": {}, "xla": {"impl": "dense", "conv_impl": "xla", "conv_transpose_impl": "xla"},
                "taps": {"impl": "taps"}, "blocks": {"impl": "blocks"}}
TASKS = ("inference", "train_step")


def jax_programs(model, images, masks, tasks) -> dict[str, programs.Program]:
    """task -> the compiled JAX program of `model` on the batch."""
    build = {"inference": lambda: programs.jax_inference(model, images),
             "train_step": lambda: programs.jax_train_step(model, images, masks)}
    return {task: build[task]() for task in tasks}


def torch_worker(conn, model_name: str, batch: int, tasks: list[str]) -> None:
    """The torch side in its own process: sends the model's weights, then its programs' compile
    times and device, then runs one blocking call per task name received until None."""
    import torch

    from convert.torch_unet import TorchSaltUNet

    torch.manual_seed(0)
    t_model = TorchSaltUNet(model_name)
    conn.send({k: v.numpy().copy() for k, v in t_model.state_dict().items()})
    images, masks = programs.synthetic_batch(batch)
    progs = {task: programs.torch_program(t_model, images, masks, task=task, variant="eager") for task in tasks}
    conn.send(({task: p.compile_s for task, p in progs.items()}, records.device_name("torch")))
    while (task := conn.recv()) is not None:
        progs[task].blocking()
        conn.send(True)


class TorchProcess:
    """A `torch_worker` process and, per task, a blocking call that runs there (the pipe's round
    trip, well under a millisecond, is inside the timed call)."""

    def __init__(self, model_name: str, batch: int, tasks: list[str]):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no JAX in it
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=torch_worker, args=(child, model_name, batch, tasks), daemon=True)
        self.process.start()
        self.state = self.conn.recv()
        self.compile_s, self.device = self.conn.recv()

    def call(self, task: str):
        def blocking() -> None:
            self.conn.send(task)
            self.conn.recv()
        return blocking

    def close(self) -> None:
        self.conn.send(None)
        self.process.join(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.add_argument("--model", default="se_resnext50_32x4d", choices=["se_resnext50_32x4d", "se_resnext101_32x4d", "tiny"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--variants", nargs="+", default=["default"], choices=list(JAX_VARIANTS))
    parser.add_argument("--no-torch", action="store_true", help="JAX only (e.g. on a GPU machine)")
    parser.add_argument("--settle", type=int, default=1,
                        help="untimed calls before each timed one, so none directly follows the other "
                             "framework's (timing.timed_alternating; 0: the alternation before 2026-11-26)")
    parser.add_argument("--same-process", action="store_true",
                        help="run torch in this process (the way before 2026-11-26), not in a worker")
    parser.add_argument("--out", type=pathlib.Path, default=records.RESULTS)
    args = parser.parse_args()

    import jax.numpy as jnp
    from flax import nnx

    from salt_jax.models import archs

    arch = archs.UNET_PREFIX + args.model
    images, masks = programs.synthetic_batch(args.batch)
    worker = None
    if args.no_torch:  # torch may not be installed (e.g. a newer Python): JAX's own initialisation
        state = None
    elif not args.same_process:
        worker = TorchProcess(args.model, args.batch, args.tasks)
        state = worker.state
    else:
        import torch

        from convert.torch_unet import TorchSaltUNet

        torch.manual_seed(0)
        t_model = TorchSaltUNet(args.model)
        state = {k: v.numpy().copy() for k, v in t_model.state_dict().items()}

    runs: dict[tuple[str, str, str], dict[str, programs.Program]] = {}
    for precision in args.precision:
        if state is None:
            model = programs.jax_model(args.model, precision)
        else:
            from convert.torch_to_flax import convert_state

            model = archs.build(arch, abstract=True, dtype=jnp.dtype(precision))
            nnx.update(model, nnx.state(convert_state(arch, state)))
        for variant in args.variants:
            runs[("jax", variant, precision)] = jax_programs(nnx.view(model, **JAX_VARIANTS[variant]), images, masks,
                                                             args.tasks)
    calls = {key: {task: p.blocking for task, p in progs.items()} for key, progs in runs.items()}
    compile_s = {key: {task: p.compile_s for task, p in progs.items()} for key, progs in runs.items()}
    torch_key, device = ("torch", "eager", "float32"), {}
    if worker is not None:
        calls[torch_key] = {task: worker.call(task) for task in args.tasks}
        compile_s[torch_key], device[torch_key] = worker.compile_s, worker.device
    elif not args.no_torch:
        progs = {task: programs.torch_program(t_model, images, masks, task=task, variant="eager") for task in args.tasks}
        calls[torch_key] = {task: p.blocking for task, p in progs.items()}
        compile_s[torch_key] = {task: p.compile_s for task, p in progs.items()}

    for task in args.tasks:
        times = timed_alternating({key: fns[task] for key, fns in calls.items()}, args.repeats, settle=args.settle)
        for key, t in times.items():
            framework, variant, precision = key
            line = records.record(task, framework=framework, batch=args.batch, timing=t, model=arch, variant=variant,
                                  precision=precision, device=device.get(key), alternating=True, settle=args.settle,
                                  torch_process="worker" if worker else "same", compile_s=compile_s[key][task])
            print(json.dumps(line), flush=True)
            records.append(line, args.out)
    if worker is not None:
        worker.close()


if __name__ == "__main__":
    main()
