"""Speed grid of SaltUNet in JAX and of our PyTorch build of the original, one JSON line per measurement.

    python benchmarks/bench_grid.py              # GPU plan: SaltUNet-50/101, batches 32/64, every variant
    python benchmarks/bench_grid.py --cpu        # tiny CPU smoke run (tiny model and the 50 at batch 2)
    python benchmarks/bench_grid.py --table      # markdown tables from benchmarks/results.jsonl

What is measured, per configuration (task x model x framework x variant x precision x batch):
- "train_step": JAX: the training's own jitted step (benchmarks/programs.py: on-device batch
  gather and augmentation, the gated Lovasz-phase loss, coupled-L2 Adam lr 1e-4); torch: the
  same loss and the original's Adam(lr=1e-4, weight_decay=1e-4), without augmentation (the
  original augmented in its DataLoader workers). "inference": the eval-mode forward pass.
- ms per step and images/s: median over `--windows` timed windows after `--warmup` steps, each
  window closed by a device sync (benchmarks/timing.py), so no asynchronous work escapes it.
- FLOPs per image: XLA's cost analysis of the compiled program (JAX) or torch's FlopCounterMode
  (torch); achieved TFLOP/s = FLOPs/image x images/s, and its fraction of a bf16 matmul peak
  measured on the same device in the same run ("matmul_peak" line).
- peak device memory of the process; each configuration runs in a fresh subprocess, so peaks
  never mix (JAX cannot reset its peak counter).

The orchestrator runs configurations in priority order under a global `--deadline`; a child that
would outlive it is stopped and listed as skipped, and `--resume` skips configurations already
measured on this device, so an interrupted GPU run continues on the next call
(benchmarks/gpu_all.sh). After every configuration the results file is copied to `--out`.
Lines follow benchmarks/records.py's schema.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's salt_jax and convert
import records  # noqa: E402
from timing import timed  # noqa: E402

TORCH_VARIANTS = ("eager", "amp_cl", "compile")
# torch's precision is fixed by its variant: eager is float32 as the original ran.
TORCH_PRECISION = {"eager": "float32", "amp_cl": "bfloat16", "compile": "bfloat16"}
PRECISIONS = ("float32", "bfloat16")
KEY_FIELDS = ("device", "task", "model", "framework", "variant", "precision", "batch", "grouped_impl")


@dataclasses.dataclass(frozen=True)
class Config:
    """One measurement. variant: "jit" (JAX) or one of TORCH_VARIANTS; grouped_impl: JAX only."""

    task: str  # "train_step" | "inference"
    model: str  # the architecture, "unet_<encoder>"
    framework: str  # "jax" | "torch"
    variant: str
    precision: str  # "float32" | "bfloat16"
    batch: int
    grouped_impl: str | None = None

    def label(self) -> str:
        impl = f"/{self.grouped_impl}" if self.grouped_impl else ""
        return f"{self.task} {self.model} {self.framework}:{self.variant}{impl} {self.precision} b{self.batch}"


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long to time: `iters` steps per window (0 = enough for `window_s` seconds)."""

    warmup: int = 3
    windows: int = 5
    iters: int = 0
    window_s: float = 1.0

    def run(self, program) -> dict[str, float]:
        """timing.timed's figures of a benchmarks.programs.Program."""
        pace = {"iters": self.iters} if self.iters > 0 else {"window_s": self.window_s}
        return timed(program.call, self.windows, warmup=self.warmup, sync=program.sync, **pace)


def arch_of(name: str) -> str:
    """'50' | '101' | 'tiny' | an encoder name -> the UNet's architecture name (train.py's aliases)."""
    from salt_jax.models import archs, presets

    try:
        return archs.Arch("unet", presets.get(name)).name
    except presets.UnknownPresetError as err:
        raise SystemExit(str(err)) from None


# ----------------------------------------------------------------------------- plans


def build_plan(models: list[str], batches: list[int], precisions: list[str], frameworks: list[str],
               tasks: list[str], grouped_impls: list[str], torch_variants: list[str]) -> list[Config]:
    """Every selected configuration, most wanted first.

    Priority (a deadline cuts the tail): the bf16 JAX train step in each grouped-conv
    implementation (the numbers that choose the GPU default), then torch AMP training, the f32
    train steps, inference, and torch.compile last (its compile alone can take minutes).
    Within a tier: model, then batch, then grouped conv, each in the order given.
    """
    tiers: list[list[Config]] = []

    def tier(task: str, framework: str, variant: str, precision: str, impls: list[str | None]) -> None:
        if task in tasks and framework in frameworks and precision in precisions:
            if framework == "jax" or variant in torch_variants:
                tiers.append([Config(task, m, framework, variant, precision, b, impl)
                              for m in models for b in batches for impl in impls])

    tier("train_step", "jax", "jit", "bfloat16", grouped_impls)
    tier("train_step", "torch", "amp_cl", "bfloat16", [None])
    tier("train_step", "jax", "jit", "float32", grouped_impls)
    tier("train_step", "torch", "eager", "float32", [None])
    tier("inference", "jax", "jit", "bfloat16", grouped_impls[:1])
    tier("inference", "torch", "amp_cl", "bfloat16", [None])
    tier("inference", "jax", "jit", "float32", grouped_impls[:1])
    tier("inference", "torch", "eager", "float32", [None])
    tier("train_step", "torch", "compile", "bfloat16", [None])
    tier("inference", "torch", "compile", "bfloat16", [None])
    return [c for t in tiers for c in t]


# ----------------------------------------------------------------------------- measurements (child side)


def jax_matmul_peak(n: int, timing: Timing) -> dict[str, Any]:
    """Achieved bf16 TFLOP/s of an (n x n) @ (n x n) jnp.dot on random data: the roofline's ceiling."""
    import jax
    import jax.numpy as jnp

    from programs import Program

    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    box = [matmul(a, b)]

    def call() -> None:
        box[0] = matmul(a, b)

    t = timing.run(Program(call, lambda: box[0].block_until_ready(), 0.0))
    return records.record("matmul_peak", framework="jax", batch=None, timing=t, precision="bfloat16", matmul_n=n,
                          tflops=2 * n**3 / (t["ms"] / 1e3) / 1e12)


def measure_jax(cfg: Config, timing: Timing) -> dict[str, Any]:
    """Times one JAX configuration in this process; returns the fields beyond the configuration."""
    import jax

    import programs
    from salt_jax.models import archs

    images, masks = programs.synthetic_batch(cfg.batch)
    # Host-side init: eager NNX init compiles one program per parameter shape (minutes on a CPU).
    model = programs.jax_model(cfg.model.removeprefix(archs.UNET_PREFIX), cfg.precision, cfg.grouped_impl)
    if cfg.task == "train_step":
        program = programs.jax_train_step(model, images, masks)
    else:
        program = programs.jax_inference(model, images)
    t = timing.run(program)
    flops, source = programs.xla_flops(program)
    stats = jax.devices()[0].memory_stats()  # None on CPU
    try:
        cuda = jax.extend.backend.get_backend().platform_version
    except Exception:  # informational only; absent on some jax builds
        cuda = None
    return {"timing": t, "compile_s": program.compile_s, "flops_per_image": flops / cfg.batch if flops else None,
            "flops_source": source, "backend": jax.default_backend(), "cuda": cuda,
            "peak_mem_gib": stats["peak_bytes_in_use"] / 2**30 if stats and "peak_bytes_in_use" in stats else None}


def measure_torch(cfg: Config, timing: Timing) -> dict[str, Any]:
    """Times one torch configuration in this process; returns the fields beyond the configuration."""
    import torch

    import programs
    from convert.torch_unet import TorchSaltUNet
    from salt_jax.models import archs

    images, masks = programs.synthetic_batch(cfg.batch)
    model = TorchSaltUNet(cfg.model.removeprefix(archs.UNET_PREFIX))
    # FLOPs are counted on an eager program (the counter does not see inside compiled graphs);
    # its step changes the weights once, which does not change the timing.
    eager = "amp_cl" if cfg.variant == "compile" else cfg.variant
    flops = programs.torch_flops(programs.torch_program(model, images, masks, task=cfg.task, variant=eager))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    program = programs.torch_program(model, images, masks, task=cfg.task, variant=cfg.variant)
    t = timing.run(program)
    return {"timing": t, "compile_s": program.compile_s, "flops_per_image": flops / cfg.batch if flops else None,
            "flops_source": "torch_flop_counter", "cuda": torch.version.cuda,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measures one configuration (or the matmul peak) and returns its complete record.

    Errors become records with "error" set and images_per_s null, so a failing variant (an
    out-of-memory, a torch.compile failure) is recorded instead of stopping the run.
    """
    timing = Timing(**spec["timing"])
    if spec.get("matmul_n"):
        return jax_matmul_peak(spec["matmul_n"], timing)
    cfg = Config(**spec["config"])
    described = dict(model=cfg.model, variant=cfg.variant, precision=cfg.precision, grouped_impl=cfg.grouped_impl)
    try:
        fields = measure_jax(cfg, timing) if cfg.framework == "jax" else measure_torch(cfg, timing)
    except Exception as exc:  # recorded, not raised: see the docstring
        return records.record(cfg.task, framework=cfg.framework, batch=cfg.batch, device=spec.get("device"),
                              **described, error=f"{type(exc).__name__}: {exc}"[:500])
    line = records.record(cfg.task, framework=cfg.framework, batch=cfg.batch, timing=fields.pop("timing"),
                          **described, **fields)
    if spec.get("require_gpu") and line["device"].startswith("CPU"):
        line.update(images_per_s=None, error="ran on the CPU although a GPU run was asked for")
    peak = spec.get("peak_tflops")
    if line["images_per_s"] and line["flops_per_image"]:
        line["tflops"] = line["flops_per_image"] * line["images_per_s"] / 1e12
        line["peak_tflops_bf16"] = peak
        line["frac_of_peak"] = line["tflops"] / peak if peak else None
    return line


# ----------------------------------------------------------------------------- a finished training run


def fold_record(workdir: Path, model: str, fold: int, wall_s: float, slices: int) -> dict[str, Any]:
    """The train_fold line of a finished `train.py` run from its WORKDIR/metrics.jsonl (one record per epoch)."""
    history = records.read(workdir / "metrics.jsonl")
    if not history:
        raise SystemExit(f"{workdir / 'metrics.jsonl'}: no epoch recorded")
    config = json.loads((workdir / "config.json").read_text())
    rates = [h["images_per_s"] for h in history if h.get("images_per_s")]
    epoch_s = [h["epoch_seconds"] for h in history if h.get("epoch_seconds")]  # older runs lack it
    return records.record(
        "train_fold", framework="jax", batch=config.get("batch_size"), model=arch_of(model), precision=config.get("dtype"),
        fold=fold, epochs=len(history), val_map_best=max(h["val_map"] for h in history), wall_s=wall_s, slices=slices,
        images_per_s=statistics.median(rates) if rates else None,
        epoch_seconds=statistics.median(epoch_s) if epoch_s else None,
        # The original starts from ImageNet weights; a random start is a different experiment.
        encoder_init=encoder_init(config))


def encoder_init(config: dict[str, Any]) -> str:
    """'imagenet: <source weights file>' or 'random', from a run's config.json (--pretrained)."""
    pretrained = config.get("pretrained")
    if not pretrained:
        return "random"
    from salt_jax.models import read_metadata

    return f"imagenet: {read_metadata(pretrained).get('source_file', pretrained)}"


# ----------------------------------------------------------------------------- orchestrator


def record_key(line: dict[str, Any]) -> tuple:
    return tuple(line.get(k) for k in KEY_FIELDS)


def spawn(spec: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """Runs one child `python benchmarks/bench_grid.py --child SPEC`; its record, or None on timeout."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-800:]
        return {"error": f"child exited with {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def copy_out(results: Path, out_dir: str | None) -> None:
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(results, Path(out_dir) / results.name)


def orchestrate(args: argparse.Namespace, plan: list[Config], timing: Timing) -> int:
    """Measures the matmul peak, then each configuration in a fresh subprocess, until the deadline."""
    deadline = time.monotonic() + args.deadline
    results = Path(args.results)
    base = {"timing": dataclasses.asdict(timing), "require_gpu": not args.cpu}
    peak = spawn({**base, "matmul_n": args.matmul_n}, args.config_timeout)
    if not peak or "error" in peak:
        print(f"matmul peak failed: {peak}", file=sys.stderr)
        return 1
    device = peak["device"]
    if not args.cpu and device.startswith("CPU"):
        print(f"JAX sees no GPU (device {device!r}); use --cpu for a CPU run", file=sys.stderr)
        return 1
    records.append(peak, results)
    copy_out(results, args.out)
    print(f"device: {device}; bf16 matmul {args.matmul_n}^3: {peak['tflops']:.3g} TFLOP/s", flush=True)
    done = {record_key(r) for r in records.read(results) if args.resume and r.get("task") != "matmul_peak"}
    skipped = []
    for cfg in plan:
        key = tuple({**dataclasses.asdict(cfg), "device": device}.get(k) for k in KEY_FIELDS)
        left = deadline - time.monotonic()
        if key in done:
            print(f"  done before: {cfg.label()}", flush=True)
            continue
        if left < args.min_left:
            skipped.append(cfg)
            continue
        spec = {**base, "config": dataclasses.asdict(cfg), "device": device, "peak_tflops": peak["tflops"]}
        line = spawn(spec, min(args.config_timeout, left))
        if line is None and left < args.config_timeout:
            skipped.append(cfg)  # stopped by the global deadline: not a property of the config
            continue
        if line is None or "date" not in line:
            why = f"timeout after {args.config_timeout:.0f} s" if line is None else line["error"]
            line = records.record(cfg.task, framework=cfg.framework, batch=cfg.batch, device=device, model=cfg.model,
                                  variant=cfg.variant, precision=cfg.precision, grouped_impl=cfg.grouped_impl, error=why)
        records.append(line, results)
        copy_out(results, args.out)
        print("  " + summary_line(line), flush=True)
    for cfg in skipped:
        print(f"  skipped (deadline): {cfg.label()}")
    print(recommendation(records.read(results), device))
    return 0


def summary_line(r: dict[str, Any]) -> str:
    cfg = Config(**{f.name: r.get(f.name) for f in dataclasses.fields(Config)})
    if r.get("error"):
        return f"{cfg.label()}: ERROR {r['error'][:200]}"
    extra = f", {r['tflops']:.3g} TFLOP/s" if r.get("tflops") else ""
    mem = f", peak {r['peak_mem_gib']:.2f} GiB" if r.get("peak_mem_gib") else ""
    return f"{cfg.label()}: {r['images_per_s']:.1f} img/s{extra}{mem} (compile {r.get('compile_s', 0):.0f} s)"


# ----------------------------------------------------------------------------- reports


def latest(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest line per configuration key and device (later lines win); grid tasks only."""
    by_key: dict[tuple, dict[str, Any]] = {}
    for r in lines:
        if r.get("task") in ("train_step", "inference") and "grouped_impl" in r:
            by_key[record_key(r)] = r
    return list(by_key.values())


def recommendation(lines: list[dict[str, Any]], device: str) -> str:
    """Which grouped-conv implementation won the JAX train steps on `device` (one line).

    Per configuration measured in two or more implementations, the fastest wins; the one with
    the most wins is recommended, with its median speed over the runner-up of each configuration.
    """
    rates: dict[tuple, dict[str, float]] = {}
    for r in latest(lines):
        if r["device"] == device and r["framework"] == "jax" and r["task"] == "train_step" and r["images_per_s"]:
            key = record_key(r)
            rates.setdefault(key[:-1], {})[key[-1]] = r["images_per_s"]
    contests = [sorted(by_impl.items(), key=lambda kv: -kv[1]) for by_impl in rates.values() if len(by_impl) > 1]
    if not contests:
        return f"RECOMMENDATION ({device}): no configuration measured in two grouped-conv implementations yet"
    wins = collections.Counter(ranked[0][0] for ranked in contests)
    best, n_wins = wins.most_common(1)[0]
    margins = [ranked[0][1] / ranked[1][1] for ranked in contests if ranked[0][0] == best]
    return (f"RECOMMENDATION ({device}): default_grouped_impl -> {best!r} (fastest in {n_wins}/{len(contests)} "
            f"train-step configurations, median speed over the runner-up x{statistics.median(margins):.2f})")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(lines: list[dict[str, Any]]) -> str:
    """Markdown tables (speed, matmul peaks, real-data folds) of the newest line per configuration."""
    head = ("| device | task | model | framework | variant | grouped | precision | batch | images/s | ms/step "
            "| GFLOP/image | TFLOP/s | % bf16 peak | peak mem GiB | date |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    order = lambda r: (r["device"], r["task"], r["model"], r["framework"], r["variant"], r["precision"],  # noqa: E731
                       r.get("grouped_impl") or "", r["batch"])
    for r in sorted(latest(lines), key=order):
        ips = r.get("images_per_s")
        speed = f"{ips:.1f}" if ips else f"failed: {r.get('error', '?')[:60]}"
        out.append(
            f"| {r['device']} | {r['task']} | {r['model']} | {r['framework']} | {r['variant']} "
            f"| {r.get('grouped_impl') or '-'} | {r['precision']} | {r['batch']} | {speed} "
            f"| {_fmt(r['batch'] / ips * 1e3 if ips else None, '.1f')} "
            f"| {_fmt(r['flops_per_image'] / 1e9 if r.get('flops_per_image') else None, '.1f')} "
            f"| {_fmt(r.get('tflops'), '.2f')} | {_fmt(r['frac_of_peak'] * 100 if r.get('frac_of_peak') else None, '.1f')} "
            f"| {_fmt(r.get('peak_mem_gib'), '.2f')} | {r['date'][:10]} |")
    peaks = [r for r in lines if r.get("task") == "matmul_peak"]
    if peaks:
        out += ["", "| device | bf16 matmul n | TFLOP/s | date |", "|---|---|---|---|"]
        out += [f"| {r['device']} | {r['matmul_n']} | {r['tflops']:.3g} | {r['date'][:10]} |" for r in peaks]
    folds = [r for r in lines if r.get("task") == "train_fold"]
    if folds:
        out += ["", "| device | model | encoder init | fold | epochs | val mAP (best) | wall s | images/s | date |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['device']} | {r['model']} | {r.get('encoder_init', '-')} | {r.get('fold', '-')} | {r['epochs']} "
                f"| {_fmt(r.get('val_map_best'), '.4f')} | {r['wall_s']:.0f} | {_fmt(r.get('images_per_s'), '.1f')} "
                f"| {r['date'][:10]} |" for r in folds]
    devices = sorted({r["device"] for r in latest(lines)})
    out += [""] + [recommendation(lines, d) for d in devices]
    return "\n".join(out)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/bench_grid.py", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--cpu", "--quick", dest="cpu", action="store_true",
                   help="tiny CPU smoke run: tiny and 50 at batch 2, float32, JAX grouped-conv variants, torch eager")
    p.add_argument("--table", action="store_true", help="print the markdown tables of --results and exit")
    p.add_argument("--models", help="comma list of 50,101,tiny (default 50,101; --cpu: tiny,50)")
    p.add_argument("--batches", help="comma list (default 32,64; --cpu: 2)")
    p.add_argument("--precisions", help="comma list of float32,bfloat16 (default both; --cpu: float32)")
    p.add_argument("--frameworks", default="jax,torch", help="comma list of jax,torch")
    p.add_argument("--tasks", default="train_step,inference", help="comma list of train_step,inference")
    p.add_argument("--grouped-impls", default="taps,dense,native",
                   help="JAX grouped convs, timed in this order (inference: the first only): taps,dense,native; "
                        "native last since its kernel gradient is the one reported slow on CUDA")
    p.add_argument("--torch-variants", help=f"comma list of {','.join(TORCH_VARIANTS)} (--cpu: eager)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 3; --cpu: 1)")
    p.add_argument("--windows", type=int, help="timed windows, median reported (default 5; --cpu: 2)")
    p.add_argument("--iters", type=int, default=0, help="steps per window; 0 = enough for --window-s seconds")
    p.add_argument("--window-s", type=float, default=1.0, help="target seconds per timed window")
    p.add_argument("--matmul-n", type=int, help="size of the bf16 peak matmul (default 8192; --cpu: 1024)")
    p.add_argument("--deadline", type=float, default=1e9, help="global seconds; configs past it are skipped")
    p.add_argument("--config-timeout", type=float, default=300.0, help="seconds one configuration may take")
    p.add_argument("--min-left", type=float, default=30.0, help="start no configuration with less time left")
    p.add_argument("--resume", action="store_true", help="skip configurations already in --results for this device")
    p.add_argument("--results", default=str(records.RESULTS), help="JSON-lines file to append to")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder to copy the results file to ($OUT)")
    p.add_argument("--fold-record", metavar="WORKDIR", help="append the train_fold line of a finished train.py run")
    p.add_argument("--model", default="50", help="--fold-record: the encoder (50|101|tiny)")
    p.add_argument("--fold", type=int, default=0, help="--fold-record: the validation fold")
    p.add_argument("--wall-s", type=float, help="--fold-record: wall seconds of the run, all slices")
    p.add_argument("--slices", type=int, default=1, help="--fold-record: device calls the run took")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.cpu
    defaults = {"models": "tiny,50" if quick else "50,101", "batches": "2" if quick else "32,64",
                "precisions": "float32" if quick else ",".join(PRECISIONS),
                "torch_variants": "eager" if quick else ",".join(TORCH_VARIANTS),
                "warmup": 1 if quick else 3, "windows": 2 if quick else 5, "matmul_n": 1024 if quick else 8192}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child)), sort_keys=True))
        return 0
    if args.table:
        print(render_table(records.read(args.results)))
        return 0
    if args.fold_record:
        line = fold_record(Path(args.fold_record), args.model, args.fold, args.wall_s, args.slices)
        records.append(line, args.results)
        copy_out(Path(args.results), args.out)
        print(json.dumps(line, sort_keys=True))
        return 0
    bad = [p for p in _split(args.precisions) if p not in PRECISIONS]
    if bad:
        raise SystemExit(f"--precisions: unknown {bad}; expected some of {list(PRECISIONS)}")
    plan = build_plan([arch_of(m) for m in _split(args.models)], [int(b) for b in _split(args.batches)],
                      _split(args.precisions), _split(args.frameworks), _split(args.tasks), _split(args.grouped_impls),
                      _split(args.torch_variants))
    timing = Timing(warmup=args.warmup, windows=args.windows, iters=args.iters, window_s=args.window_s)
    print(f"{len(plan)} configurations, deadline {args.deadline:.0f} s, results -> {args.results}", flush=True)
    return orchestrate(args, plan, timing)


if __name__ == "__main__":
    sys.exit(main())
