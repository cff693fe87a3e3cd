"""Speed of SaltUNet in JAX and of our PyTorch build of the original, one JSON line per measurement.

    python -m salt_jax.bench                 # GPU plan: SaltUNet-50/101, batches 32/64, every variant
    python -m salt_jax.bench --cpu           # tiny CPU smoke run (tiny model and the 50 at batch 2)
    python -m salt_jax.bench --table         # markdown tables from benchmarks/results.jsonl

What is measured, per configuration (task x model x framework x variant x precision x batch):
- "train_step": forward, backward and the Adam update with coupled L2 (Adam lr 1e-4 on
  grad + 1e-4 * param, as the original's torch Adam(weight_decay=1e-4)), loss = the gated
  Lovasz-phase loss; "inference": the eval-mode forward pass.
- images/s: median over `--windows` timed windows after `--warmup` steps; each window ends with
  a device sync (block_until_ready / torch.cuda.synchronize), so no asynchronous work escapes it.
- FLOPs per image: XLA's cost analysis of the compiled program (JAX) or torch's FlopCounterMode
  (torch); achieved TFLOP/s = FLOPs/image x images/s, and its fraction of a bf16 matmul peak
  measured on the same device in the same run ("matmul_peak" line).
- peak device memory of the process; each configuration runs in a fresh subprocess, so peaks
  never mix (JAX cannot reset its peak counter).

The orchestrator runs configurations in priority order under a global `--deadline`; a child that
would outlive it is stopped and listed as skipped, and `--resume` skips configurations already
measured on this device, so an interrupted GPU run continues on the next call
(benchmarks/gpu_all.sh). After every configuration the results file is copied to `--out`.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

RESULTS = Path("benchmarks/results.jsonl")
MODELS = {"50": "se_resnext50_32x4d", "101": "se_resnext101_32x4d", "tiny": "tiny"}
TORCH_VARIANTS = ("eager", "amp_cl", "compile")
# torch's precision is fixed by its variant: eager is float32 as the original ran.
TORCH_PRECISION = {"eager": "f32", "amp_cl": "bf16", "compile": "bf16"}
# Adam with coupled L2, as the original's torch.optim.Adam(lr=1e-4, weight_decay=1e-4).
LR, WEIGHT_DECAY = 1e-4, 1e-4
KEY_FIELDS = ("device", "task", "model", "framework", "variant", "precision", "batch", "grouped_impl")


@dataclasses.dataclass(frozen=True)
class Config:
    """One measurement. variant: "jit" (JAX) or one of TORCH_VARIANTS; grouped_impl: JAX only."""

    task: str  # "train_step" | "inference"
    model: str  # key of MODELS
    framework: str  # "jax" | "torch"
    variant: str
    precision: str  # "f32" | "bf16"
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


# ----------------------------------------------------------------------------- plans


def build_plan(models: list[str], batches: list[int], precisions: list[str], frameworks: list[str],
               tasks: list[str], grouped_impls: list[str], torch_variants: list[str]) -> list[Config]:
    """Every selected configuration, most wanted first.

    Priority (a deadline cuts the tail): the bf16 JAX train step in each grouped-conv
    implementation (the numbers that choose the GPU default), then torch AMP training, the f32
    train steps, inference, and torch.compile last (its compile alone can take minutes).
    Within a tier: model, then batch, in the order given.
    """
    tiers: list[list[Config]] = []

    def tier(task: str, framework: str, variant: str, precision: str, impls: list[str | None]) -> None:
        if task in tasks and framework in frameworks and precision in precisions:
            if framework == "jax" or variant in torch_variants:
                tiers.append([Config(task, m, framework, variant, precision, b, impl)
                              for m in models for b in batches for impl in impls])

    native_first = sorted(grouped_impls, key=lambda i: i != "native")
    tier("train_step", "jax", "jit", "bf16", native_first)
    tier("train_step", "torch", "amp_cl", "bf16", [None])
    tier("train_step", "jax", "jit", "f32", native_first)
    tier("train_step", "torch", "eager", "f32", [None])
    tier("inference", "jax", "jit", "bf16", native_first[:1])
    tier("inference", "torch", "amp_cl", "bf16", [None])
    tier("inference", "jax", "jit", "f32", native_first[:1])
    tier("inference", "torch", "eager", "f32", [None])
    tier("train_step", "torch", "compile", "bf16", [None])
    tier("inference", "torch", "compile", "bf16", [None])
    return [c for t in tiers for c in t]


# ----------------------------------------------------------------------------- shared helpers


def cpu_name() -> str:
    """'CPU: <model name> (<n> cores)' from /proc/cpuinfo (Linux), else the platform string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def package_versions() -> dict[str, str | None]:
    """Installed versions (from metadata, without importing the frameworks)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def synthetic_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random images (N, 128, 128, 3) in [0, 1] and masks (N, 128, 128, 1) in {0, 1}.

    Never zeros (they can time faster than real data); every third mask is empty so both
    branches of the salt gate's target occur, as in the real data (~39% empty).
    """
    rng = np.random.default_rng(seed)
    images = rng.random((batch, 128, 128, 3), dtype=np.float32)
    masks = (images[..., :1] > 0.6).astype(np.float32)
    masks[::3] = 0.0
    return images, masks


def time_windows(step: Callable[[], None], sync: Callable[[], None], batch: int,
                 timing: Timing) -> tuple[float, list[float], int]:
    """Runs `step` repeatedly and returns (median images/s, per-window images/s, iters/window).

    `sync` waits for all queued device work; it closes the warm-up and every window, so each
    window's wall time covers exactly its own steps.
    """
    for _ in range(timing.warmup):
        step()
    sync()
    iters = timing.iters
    if iters <= 0:
        start = time.perf_counter()
        step()
        sync()
        iters = max(1, min(200, math.ceil(timing.window_s / (time.perf_counter() - start))))
    rates = []
    for _ in range(timing.windows):
        start = time.perf_counter()
        for _ in range(iters):
            step()
        sync()
        rates.append(batch * iters / (time.perf_counter() - start))
    return statistics.median(rates), rates, iters


# ----------------------------------------------------------------------------- JAX side


def _jax_device() -> tuple[Any, str]:
    import jax

    dev = jax.devices()[0]
    return dev, cpu_name() if dev.platform == "cpu" else dev.device_kind


def _jax_peak_gib(dev: Any) -> float | None:
    stats = dev.memory_stats()  # None on CPU
    return stats["peak_bytes_in_use"] / 2**30 if stats and "peak_bytes_in_use" in stats else None


def _xla_flops(compiled: Any, lowered: Any) -> tuple[float | None, str]:
    """FLOPs of one call from XLA's cost analysis of the compiled program (else the lowered HLO)."""
    for source, stage in (("xla_compiled", compiled), ("xla_lowered", lowered)):
        try:
            cost = stage.cost_analysis()
        except Exception:  # some backends do not implement it; the other stage may
            continue
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and cost.get("flops", 0) > 0:
            return float(cost["flops"]), source
    return None, "unavailable"


def jax_matmul_peak(n: int, timing: Timing) -> dict[str, Any]:
    """Achieved bf16 TFLOP/s of an (n x n) @ (n x n) jnp.dot on random data: the roofline's ceiling."""
    import jax
    import jax.numpy as jnp

    dev, device = _jax_device()
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (n, n), jnp.bfloat16)
    b = jax.random.normal(kb, (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32).astype(jnp.bfloat16))
    last = [matmul(a, b)]

    def step() -> None:
        last[0] = matmul(a, b)

    calls_per_s, _, _ = time_windows(step, lambda: last[0].block_until_ready(), 1, timing)
    return {"task": "matmul_peak", "framework": "jax", "device": device, "precision": "bf16",
            "matmul_n": n, "tflops": 2 * n**3 * calls_per_s / 1e12}


def _jax_model(cfg: Config, *, use_running_average: bool) -> Any:
    """The SaltUNet of `cfg` with every BatchNorm in train (batch statistics) or eval mode."""
    import jax.numpy as jnp
    from flax import nnx

    from salt_jax.models.initialize import init_module
    from salt_jax.models.layers import BatchNorm
    from salt_jax.models.unet import SaltUNet

    dtype = jnp.bfloat16 if cfg.precision == "bf16" else jnp.float32
    # Host-side init: eager NNX init compiles one program per parameter shape (minutes on a CPU,
    # tens of seconds of every configuration's budget on a GPU); the values do not change the speed.
    model = init_module(lambda rngs: SaltUNet(MODELS[cfg.model], rngs=rngs, dtype=dtype, grouped_impl=cfg.grouped_impl))
    # Set directly: layers.BatchNorm has no `set_view`, so nnx.view would not reach it.
    for _, node in nnx.iter_graph(model):
        if isinstance(node, BatchNorm):
            node.use_running_average = use_running_average
    return model


def _jax_train_program(cfg: Config, model: Any, images: Any, masks: Any) -> tuple[Callable, tuple, Any, Any]:
    """A jitted, buffer-donating train step over (params, batch_stats, opt_state), AOT-compiled.

    Returns (compiled step, initial state, lowered, compiled) for timing and cost analysis.
    """
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from salt_jax.losses import multi_loss

    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.adam(LR))
    opt_state = tx.init(params)

    def step(params, stats, opt_state, x, y, use_lovasz):
        def loss_fn(p):
            # copy=True: fresh Variables at this trace level, so BatchNorm may update them here.
            net = nnx.merge(graphdef, p, stats, copy=True)
            logits, prob = net(x)
            loss, _ = multi_loss(logits, prob, y, use_lovasz=use_lovasz)
            return loss, nnx.state(net, nnx.BatchStat)

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    use_lovasz = jnp.asarray(True)  # the 100-epoch phase; traced, as in the real step
    lowered = jax.jit(step, donate_argnums=(0, 1, 2)).lower(params, stats, opt_state, images, masks, use_lovasz)
    compiled = lowered.compile()
    return (lambda *state: compiled(*state, images, masks, use_lovasz)), (params, stats, opt_state), lowered, compiled


def _jax_infer_program(model: Any, images: Any) -> tuple[Callable, tuple, Any, Any]:
    """The jitted eval-mode forward pass, AOT-compiled; same return convention as the train one."""
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    lowered = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, images)
    compiled = lowered.compile()
    return (lambda s: compiled(s, images)), (state,), lowered, compiled


def measure_jax(cfg: Config, timing: Timing) -> dict[str, Any]:
    """Times one JAX configuration in this process; returns the measurement fields."""
    import jax

    dev, device = _jax_device()
    images, masks = (jax.device_put(a, dev) for a in synthetic_batch(cfg.batch))
    train = cfg.task == "train_step"
    model = _jax_model(cfg, use_running_average=not train)
    start = time.perf_counter()  # compile_s: tracing, lowering and XLA compilation
    if train:
        run, state, lowered, compiled = _jax_train_program(cfg, model, images, masks)
    else:
        run, state, lowered, compiled = _jax_infer_program(model, images)
    compile_s = time.perf_counter() - start
    current, last = [state], [None]

    def step() -> None:
        last[0] = run(*current[0])
        if train:  # the donated state is replaced by the step's new one
            current[0] = last[0][:3]

    # One device stream runs the calls in order, so waiting for the newest output waits for all.
    ips, windows, iters = time_windows(step, lambda: jax.block_until_ready(last[0]), cfg.batch, timing)
    flops, source = _xla_flops(compiled, lowered)
    return {"device": device, "images_per_s": ips, "window_images_per_s": windows, "iters_per_window": iters,
            "compile_s": compile_s, "flops_per_image": flops / cfg.batch if flops else None,
            "flops_source": source, "peak_mem_gib": _jax_peak_gib(dev), "backend": jax.default_backend(),
            "cuda": _jax_platform_version()}


def _jax_platform_version() -> str | None:
    import jax

    try:
        return jax.extend.backend.get_backend().platform_version
    except Exception:  # informational only; absent on some jax builds
        return None


# ----------------------------------------------------------------------------- torch side


def _torch_device() -> tuple[Any, str]:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.cuda.get_device_name(0)
    return torch.device("cpu"), cpu_name()


def torch_loss(logits: Any, prob: Any, masks: Any) -> Any:
    """The Lovasz-phase loss of salt_jax.losses.multi_loss, in torch, batched like ours.

    logits (N, 1, H, W), prob (N, 1), masks (N, 1, H, W) in {0, 1}. Returns
    0.1 * BCE(prob, any salt) + mean over images of the elu+1 Lovasz hinge. Computed in float32.
    """
    import torch
    import torch.nn.functional as F

    n = masks.shape[0]
    y = masks.reshape(n, -1).float()
    has_salt = (y > 0.5).any(dim=1).float()
    bce_cls = F.binary_cross_entropy(prob.reshape(n).float().clamp(1e-7, 1 - 1e-7), has_salt)
    errors = 1.0 - logits.reshape(n, -1).float() * (2.0 * y - 1.0)
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    gt = torch.gather(y, 1, order)
    positives = gt.sum(dim=1, keepdim=True)
    jaccard = 1.0 - (positives - gt.cumsum(1)) / (positives + (1.0 - gt).cumsum(1))
    weights = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    lovasz = ((F.elu(errors_sorted) + 1.0) * weights).sum(dim=1).mean()
    return 0.1 * bce_cls + lovasz


def _torch_model(cfg: Config, device: Any) -> Any:
    from convert.torch_unet import TorchSaltUNet

    return TorchSaltUNet(MODELS[cfg.model]).to(device)


def _torch_step_fn(cfg: Config, model: Any, images: Any, masks: Any, device: Any) -> Callable[[], Any]:
    """One train step or one inference call of `model` under the variant's precision."""
    import torch

    amp = cfg.variant in ("amp_cl", "compile")
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)  # noqa: E731
    if cfg.task == "inference":
        model.eval()

        def infer() -> Any:
            with torch.inference_mode(), autocast():
                return model(images)

        return infer
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

    def train() -> Any:
        opt.zero_grad(set_to_none=True)
        with autocast():
            logits, prob = model(images)
        loss = torch_loss(logits, prob, masks)
        loss.backward()
        opt.step()
        return loss

    return train


def _torch_flops(step: Callable[[], Any]) -> float | None:
    """FLOPs of one call of `step` (eager model) by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops()) or None


def measure_torch(cfg: Config, timing: Timing) -> dict[str, Any]:
    """Times one torch configuration in this process; returns the measurement fields."""
    import torch

    torch.backends.cudnn.benchmark = True
    device, name = _torch_device()
    images_np, masks_np = synthetic_batch(cfg.batch)
    images = torch.from_numpy(images_np).permute(0, 3, 1, 2).contiguous().to(device)
    masks = torch.from_numpy(masks_np).permute(0, 3, 1, 2).contiguous().to(device)
    model = _torch_model(cfg, device)
    if cfg.variant in ("amp_cl", "compile"):
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    # Count FLOPs on the eager module (the counter does not see inside compiled graphs); the
    # step changes the weights once, which does not change the timing.
    flops = _torch_flops(_torch_step_fn(cfg, model, images, masks, device))
    if cfg.variant == "compile":
        model = torch.compile(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = _torch_step_fn(cfg, model, images, masks, device)
    start = time.perf_counter()
    step()  # compiles under torch.compile; cudnn.benchmark picks algorithms
    sync()
    compile_s = time.perf_counter() - start
    ips, windows, iters = time_windows(step, sync, cfg.batch, timing)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"device": name, "images_per_s": ips, "window_images_per_s": windows, "iters_per_window": iters,
            "compile_s": compile_s, "flops_per_image": flops / cfg.batch if flops else None,
            "flops_source": "torch_flop_counter", "peak_mem_gib": peak, "cuda": torch.version.cuda}


# ----------------------------------------------------------------------------- child process


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measures one configuration (or the matmul peak) and returns its complete JSON record.

    Errors become records with "error" set and images_per_s null, so a failing variant (an
    out-of-memory, a torch.compile failure) is recorded instead of stopping the run.
    """
    timing = Timing(**spec["timing"])
    record: dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "versions": package_versions()}
    if spec.get("matmul_n"):
        record.update(jax_matmul_peak(spec["matmul_n"], timing))
        return record
    cfg = Config(**spec["config"])
    record.update(dataclasses.asdict(cfg), images_per_s=None)
    try:
        fields = measure_jax(cfg, timing) if cfg.framework == "jax" else measure_torch(cfg, timing)
    except Exception as exc:  # recorded, not raised: see the docstring
        record.update(device=spec.get("device"), error=f"{type(exc).__name__}: {exc}"[:500])
        return record
    record.update(fields)
    if spec.get("require_gpu") and record.get("device", "").startswith("CPU"):
        record.update(images_per_s=None, error="ran on the CPU although a GPU run was asked for")
    peak = spec.get("peak_tflops")
    if record["images_per_s"] and record["flops_per_image"]:
        record["tflops"] = record["flops_per_image"] * record["images_per_s"] / 1e12
        record["peak_tflops_bf16"] = peak
        record["frac_of_peak"] = record["tflops"] / peak if peak else None
    return record


def append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def fold_record(workdir: Path, model: str, fold: int, wall_s: float, slices: int) -> dict[str, Any]:
    """The train_fold line of a finished `train.py` run from its WORKDIR/metrics.jsonl (one record per epoch)."""
    history = read_records(workdir / "metrics.jsonl")
    if not history:
        raise SystemExit(f"{workdir / 'metrics.jsonl'}: no epoch recorded")
    rates = [h["images_per_s"] for h in history if h.get("images_per_s")]
    _, device = _jax_device()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "task": "train_fold", "framework": "jax", "device": device, "model": model, "fold": fold,
            "epochs": len(history), "val_map_best": max(h["val_map"] for h in history), "wall_s": wall_s,
            "slices": slices, "images_per_s": statistics.median(rates) if rates else None,
            # The original starts from ImageNet weights; a random start is a different experiment.
            "encoder_init": encoder_init(workdir), "versions": package_versions()}


def encoder_init(workdir: Path) -> str:
    """'imagenet: <source weights file>' or 'random', from the run's config.json (--pretrained)."""
    pretrained = json.loads((workdir / "config.json").read_text()).get("pretrained")
    if not pretrained:
        return "random"
    from salt_jax.models import read_metadata

    return f"imagenet: {read_metadata(pretrained).get('source_file', pretrained)}"


# ----------------------------------------------------------------------------- orchestrator


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({exc})") from exc
    return records


def record_key(record: dict[str, Any]) -> tuple:
    return tuple(record.get(k) for k in KEY_FIELDS)


def spawn(spec: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """Runs one child `python -m salt_jax.bench --child SPEC`; its record, or None on timeout."""
    cmd = [sys.executable, "-m", "salt_jax.bench", "--child", json.dumps(spec)]
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
    append_record(results, peak)
    copy_out(results, args.out)
    print(f"device: {device}; bf16 matmul {args.matmul_n}^3: {peak['tflops']:.3g} TFLOP/s", flush=True)
    done = {record_key(r) for r in read_records(results) if args.resume and r.get("task") != "matmul_peak"}
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
        record = spawn(spec, min(args.config_timeout, left))
        if record is None and left < args.config_timeout:
            skipped.append(cfg)  # stopped by the global deadline: not a property of the config
            continue
        if record is None or "date" not in record:
            why = f"timeout after {args.config_timeout:.0f} s" if record is None else record["error"]
            record = {**dataclasses.asdict(cfg), "device": device, "images_per_s": None, "error": why,
                      "date": peak["date"], "versions": peak["versions"]}
        append_record(results, record)
        copy_out(results, args.out)
        print("  " + summary_line(record), flush=True)
    for cfg in skipped:
        print(f"  skipped (deadline): {cfg.label()}")
    print(recommendation(read_records(results), device))
    return 0


def summary_line(r: dict[str, Any]) -> str:
    cfg = Config(**{f.name: r.get(f.name) for f in dataclasses.fields(Config)})
    if r.get("error"):
        return f"{cfg.label()}: ERROR {r['error'][:200]}"
    extra = f", {r['tflops']:.3g} TFLOP/s" if r.get("tflops") else ""
    mem = f", peak {r['peak_mem_gib']:.2f} GiB" if r.get("peak_mem_gib") else ""
    return f"{cfg.label()}: {r['images_per_s']:.1f} img/s{extra}{mem} (compile {r.get('compile_s', 0):.0f} s)"


# ----------------------------------------------------------------------------- reports


def latest(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record per configuration key and device (later lines win)."""
    by_key: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if r.get("task") in ("train_step", "inference"):
            by_key[record_key(r)] = r
    return list(by_key.values())


def recommendation(records: list[dict[str, Any]], device: str) -> str:
    """Which grouped-conv implementation won the JAX train steps on `device` (one line).

    Per configuration measured in two or more implementations, the fastest wins; the one with
    the most wins is recommended, with its median speed over the runner-up of each configuration.
    """
    rates: dict[tuple, dict[str, float]] = {}
    for r in latest(records):
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


def render_table(records: list[dict[str, Any]]) -> str:
    """Markdown tables (speed, matmul peaks, real-data folds) of the newest record per configuration."""
    head = ("| device | task | model | framework | variant | grouped | precision | batch | images/s | ms/step "
            "| GFLOP/image | TFLOP/s | % bf16 peak | peak mem GiB | date |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = lambda r: (r["device"], r["task"], r["model"], r["framework"], r["variant"], r["precision"],  # noqa: E731
                       r.get("grouped_impl") or "", r["batch"])
    for r in sorted(latest(records), key=order):
        ips = r.get("images_per_s")
        speed = f"{ips:.1f}" if ips else f"failed: {r.get('error', '?')[:60]}"
        lines.append(
            f"| {r['device']} | {r['task']} | {r['model']} | {r['framework']} | {r['variant']} "
            f"| {r.get('grouped_impl') or '-'} | {r['precision']} | {r['batch']} | {speed} "
            f"| {_fmt(r['batch'] / ips * 1e3 if ips else None, '.1f')} "
            f"| {_fmt(r['flops_per_image'] / 1e9 if r.get('flops_per_image') else None, '.1f')} "
            f"| {_fmt(r.get('tflops'), '.2f')} | {_fmt(r['frac_of_peak'] * 100 if r.get('frac_of_peak') else None, '.1f')} "
            f"| {_fmt(r.get('peak_mem_gib'), '.2f')} | {r['date'][:10]} |")
    peaks = [r for r in records if r.get("task") == "matmul_peak"]
    if peaks:
        lines += ["", "| device | bf16 matmul n | TFLOP/s | date |", "|---|---|---|---|"]
        lines += [f"| {r['device']} | {r['matmul_n']} | {r['tflops']:.3g} | {r['date'][:10]} |" for r in peaks]
    folds = [r for r in records if r.get("task") == "train_fold"]
    if folds:
        lines += ["", "| device | model | encoder init | fold | epochs | val mAP (best) | wall s | images/s | date |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['device']} | {r['model']} | {r.get('encoder_init', '-')} | {r.get('fold', '-')} | {r['epochs']} "
                  f"| {_fmt(r.get('val_map_best'), '.4f')} | {r['wall_s']:.0f} | {_fmt(r.get('images_per_s'), '.1f')} "
                  f"| {r['date'][:10]} |" for r in folds]
    devices = sorted({r["device"] for r in latest(records)})
    lines += [""] + [recommendation(records, d) for d in devices]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m salt_jax.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", "--quick", dest="cpu", action="store_true",
                   help="tiny CPU smoke run: tiny and 50 at batch 2, f32, JAX grouped-conv variants, torch eager")
    p.add_argument("--table", action="store_true", help="print the markdown tables of --results and exit")
    p.add_argument("--models", help="comma list of 50,101,tiny (default 50,101; --cpu: tiny,50)")
    p.add_argument("--batches", help="comma list (default 32,64; --cpu: 2)")
    p.add_argument("--precisions", help="comma list of f32,bf16 (default both; --cpu: f32)")
    p.add_argument("--frameworks", default="jax,torch", help="comma list of jax,torch")
    p.add_argument("--tasks", default="train_step,inference", help="comma list of train_step,inference")
    p.add_argument("--grouped-impls", default="taps,native,dense", help="JAX train-step grouped conv: taps,native,dense")
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
    p.add_argument("--results", default=str(RESULTS), help="JSON-lines file to append to")
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
                "precisions": "f32" if quick else "f32,bf16", "torch_variants": "eager" if quick else ",".join(TORCH_VARIANTS),
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
        print(render_table(read_records(Path(args.results))))
        return 0
    if args.fold_record:
        record = fold_record(Path(args.fold_record), args.model, args.fold, args.wall_s, args.slices)
        append_record(Path(args.results), record)
        copy_out(Path(args.results), args.out)
        print(json.dumps(record, sort_keys=True))
        return 0
    unknown = [m for m in _split(args.models) if m not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; expected some of {sorted(MODELS)}")
    plan = build_plan(_split(args.models), [int(b) for b in _split(args.batches)], _split(args.precisions),
                      _split(args.frameworks), _split(args.tasks), _split(args.grouped_impls), _split(args.torch_variants))
    timing = Timing(warmup=args.warmup, windows=args.windows, iters=args.iters, window_s=args.window_s)
    print(f"{len(plan)} configurations, deadline {args.deadline:.0f} s, results -> {args.results}", flush=True)
    return orchestrate(args, plan, timing)


if __name__ == "__main__":
    sys.exit(main())
