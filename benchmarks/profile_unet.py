"""Where the time of a SaltUNet train step and forward goes on this backend, per XLA operation.

    python benchmarks/profile_unet.py                         # SE-ResNeXt-50, batch 2, CPU
    python benchmarks/profile_unet.py --model tiny --top 20
    python benchmarks/profile_unet.py --batch 10 --precision bfloat16 --tasks train_step   # a GPU, the fold's step

Runs the train step (the training's own, benchmarks/programs.py) and the eval forward on random
weights under `jax.profiler.trace`, reads the per-operation events of the Perfetto trace and
joins them with the compiled HLO (event name, or on a GPU's kernel tracks args.hlo_op, = HLO
instruction name; unmeasured on a GPU so far). Each operation is put in a
category from its HLO: a convolution or a fusion around one (YNNPACK's fusions wrap convolutions
and matmuls) is "conv <k>x<k> forward / input grad / kernel grad", grouped or not; a dot is
"matmul"; loop fusions are "elementwise" (BatchNorm, ReLU, gating, Adam), copy/transpose fusions
"layout copies"; the rest by opcode. Prints a markdown table per task: category, ms, share of the
summed operation time, operation count, and the slowest single operations.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's salt_jax
import programs  # noqa: E402

# name = shape opcode(operands...), the shape a tuple "(bf16[..]{..}, u8[0]{0})" for GPU library calls.
INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\([^=]*?\)|\S+?)\{?[\d,]*\}? (\w[\w-]*)\((.*)$")


def parse_hlo(text: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Instructions by name (opcode, shape, attributes) and the ROOT of every computation."""
    instrs, roots, current = {}, {}, None
    for line in text.splitlines():
        if line.startswith(("%", "ENTRY")) and line.rstrip().endswith("{"):
            current = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            continue
        m = INSTR.match(line)
        if m:
            name, shape, opcode, rest = m.groups()
            instrs[name] = {"opcode": opcode, "shape": shape, "rest": rest}
            if line.lstrip().startswith("ROOT") and current:
                roots[current] = name
    return instrs, roots


def _attr(rest: str, key: str) -> str | None:
    m = re.search(key + r"=([^,}]+)", rest)
    return m.group(1) if m else None


def category(name: str, instrs: dict, roots: dict) -> str:
    ins = instrs.get(name)
    if ins is None:
        return "other"
    op, rest = ins["opcode"], ins["rest"]
    if op == "fusion":
        called = _attr(rest, "calls")
        root = instrs.get(roots.get((called or "").lstrip("%"), ""), {})
        if root.get("opcode") in ("convolution", "dot"):
            ins, op, rest = {**root, "rest": root["rest"] + rest}, root["opcode"], root["rest"] + " " + rest
        elif name.startswith("ynn_fusion"):
            return "YNNPACK fusion (other)"
        elif "transpose" in name or "copy" in name:
            return "layout copies (transpose/copy)"
        elif "reduce" in name or _attr(rest, "kind") == "kInput":
            return "reductions (BN statistics, means)"
        else:
            return "elementwise (BN, ReLU, gates, Adam)"
    op_name = re.search(r'op_name="([^"]*)"', rest)
    backward = op_name is not None and "transpose(" in op_name.group(1)
    if op == "convolution":
        size = (_attr(rest, r"window=\{size") or "?").split("x")[0]
        grouped = " grouped" if _attr(rest, "feature_group_count") else ""
        # The kernel gradient is a convolution whose window is the output map (>= 8x8 here);
        # XLA adds some of them without a source op_name.
        if size.isdigit() and int(size) >= 8:
            return f"conv{grouped} kernel grad (XLA)"
        return f"conv {size}x{size}{grouped} {'input grad' if backward else 'forward'}"
    if op == "dot":
        return "matmul (backward)" if backward else "matmul (forward)"
    if op in ("reduce-window", "select-and-scatter"):
        return "max pool"
    if op == "custom-call":  # GPU libraries: cuDNN convolutions, cuBLAS matmuls
        target = _attr(rest, "custom_call_target") or ""
        grouped = " grouped" if _attr(rest, "feature_group_count") else ""
        for key, what in (("BackwardFilter", "kernel grad"), ("BackwardInput", "input grad"), ("Forward", "forward")):
            if "cudnn$conv" in target and key in target:
                return f"conv (cuDNN){grouped} {what}"
        if "cublas" in target:
            return "matmul (cuBLAS)"
    return op


def profile(program: programs.Program, label: str, top: int) -> str:
    instrs, roots = parse_hlo(program.compiled.as_text())
    program.blocking()  # warm
    untraced_ms = statistics.median(_ms(program.blocking) for _ in range(5))
    logdir = tempfile.mkdtemp(prefix="salt_prof_")
    start = time.perf_counter()
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
        program.blocking()
    wall_ms = (time.perf_counter() - start) * 1e3
    trace = json.load(gzip.open(sorted(glob.glob(f"{logdir}/**/*.trace.json.gz", recursive=True))[-1]))
    per_cat, count, ops = collections.Counter(), collections.Counter(), []
    # On a GPU the device's tracks (process "/device:GPU:<n>") time the operations, and kernels may
    # carry a kernel's name with the HLO instruction in args.hlo_op: then only they are counted
    # (the "XLA Ops" line would count the same time again). A CPU has no such tracks: the host's
    # events are the operations.
    devices = {e["pid"] for e in trace["traceEvents"] if e.get("ph") == "M" and e.get("name") == "process_name"
               and "/device:GPU" in str(e.get("args", {}).get("name", ""))}
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X" and (not devices or e.get("pid") in devices)]
    kernels = [e for e in events if e.get("args", {}).get("hlo_op") in instrs]
    for e in kernels or events:
        name = e["args"]["hlo_op"] if kernels else e.get("name", "")
        if name in instrs:
            cat = category(name, instrs, roots)
            per_cat[cat] += e["dur"] / 1e3
            count[cat] += 1
            ops.append((e["dur"] / 1e3, name, cat, instrs[name]["shape"]))
    total = sum(per_cat.values())
    # The summed operations against the untraced call: a share well under 100% is time the device
    # idles (launches, the host) or operations the trace does not show one by one.
    lines = [f"### {label}: {untraced_ms:.1f} ms per call untraced (median of 5), {wall_ms:.0f} ms traced; "
             f"{total:.1f} ms summed over {len(ops)} operations ({100 * total / untraced_ms:.0f}% of the untraced call)",
             "", "| category | ms | share | ops |", "|---|---:|---:|---:|"]
    for cat, ms in per_cat.most_common():
        lines.append(f"| {cat} | {ms:.0f} | {100 * ms / total:.1f}% | {count[cat]} |")
    lines += ["", f"Slowest {top} operations:", "", "| ms | category | output | HLO name |", "|---:|---|---|---|"]
    for ms, name, cat, shape in sorted(ops, reverse=True)[:top]:
        lines.append(f"| {ms:.1f} | {cat} | `{shape}` | {name} |")
    return "\n".join(lines)


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="se_resnext50_32x4d", choices=["se_resnext50_32x4d", "se_resnext101_32x4d", "tiny"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"],
                        help="compute dtype (parameters stay float32), as train.py --dtype")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--tasks", nargs="+", default=["train_step", "inference"], choices=["train_step", "inference"])
    args = parser.parse_args()

    from salt_jax.models import archs

    arch = archs.UNET_PREFIX + args.model
    model = programs.jax_model(args.model, args.precision)
    images, masks = programs.synthetic_batch(args.batch)
    build = {"train_step": lambda: programs.jax_train_step(model, images, masks),
             "inference": lambda: programs.jax_inference(model, images)}
    print(f"{arch} batch {args.batch}, {args.precision}, {jax.devices()[0].device_kind}, jax {jax.__version__}, "
          f"load {os.getloadavg()[0]:.1f}, grouped conv {os.environ.get('SALT_JAX_GROUPED_CONV') or 'default'}\n")
    for task in args.tasks:
        print(profile(build[task](), f"{arch} {task}", args.top), "\n", flush=True)


if __name__ == "__main__":
    main()
