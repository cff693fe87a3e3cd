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
    parser.add_argument("--out", type=pathlib.Path, default=records.RESULTS)
    args = parser.parse_args()

    import jax.numpy as jnp
    from flax import nnx

    from salt_jax.models import archs

    arch = archs.UNET_PREFIX + args.model
    images, masks = programs.synthetic_batch(args.batch)
    if args.no_torch:  # torch may not be installed (e.g. a newer Python): JAX's own initialisation
        state = None
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
    if not args.no_torch:
        runs[("torch", "eager", "float32")] = {
            task: programs.torch_program(t_model, images, masks, task=task, variant="eager") for task in args.tasks}

    for task in args.tasks:
        times = timed_alternating({key: tasks[task].blocking for key, tasks in runs.items()}, args.repeats,
                                  settle=args.settle)
        for (framework, variant, precision), t in times.items():
            line = records.record(task, framework=framework, batch=args.batch, timing=t, model=arch, variant=variant,
                                  precision=precision, alternating=True, settle=args.settle, compile_s=runs[(framework, variant, precision)][task].compile_s)
            print(json.dumps(line), flush=True)
            records.append(line, args.out)


if __name__ == "__main__":
    main()
