"""The one record schema of benchmarks/results.jsonl: every benchmark script writes through `record`.

A line is one measurement (keys sorted; docs/BENCHMARKS.md, "The record schema"):

    date          UTC, ISO 8601, seconds
    device        what ran it: "CPU: <model> (<n> cores)" or the accelerator's name (device_name)
    versions      python, jax, jaxlib, flax, optax, numpy, torch (None where not installed)
    loadavg       the 1-, 5- and 15-minute load averages when the line was written (a shared
                  machine's figures are only as good as its load)
    task          what was timed: "train_step", "inference", "lovasz", "augment", "predict", ...
    model         the architecture (salt_jax.models.archs name, e.g. "unet_se_resnext50_32x4d"), or what
                  stands for it ("grouped_conv_..."); None where no model is involved
    framework     "jax" | "torch"
    variant       how it ran within the framework ("jit", "eager", "amp_cl", a grouped-conv impl, ...)
    precision     compute dtype: "float32" | "bfloat16"
    batch         images per call
    ms, ms_min, ms_max   milliseconds per call: median, min, max over the timed windows (timing.py)
    repeats, iters       timed windows, calls per window
    images_per_s  batch * 1000 / ms, unless the task counts otherwise (predict: the images of a
                  call; train_fold: the median of the run's epochs); None when the measurement
                  failed, and then "error" says why

plus the fields of the task (flops_per_image, compile_s, peak_mem_gib, tta, ...). Lines written
before this schema (before issue 14) stay as they were and may lack or name fields differently.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.jsonl")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def cpu_name() -> str:
    """'CPU: <model name> (<n> cores)' from /proc/cpuinfo (Linux), else the platform string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def device_name(framework: str = "jax") -> str:
    """The device `framework` computes on: the accelerator's name, else the CPU's."""
    if framework == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name()
    import jax

    dev = jax.devices()[0]
    return cpu_name() if dev.platform == "cpu" else dev.device_kind


def package_versions() -> dict[str, str | None]:
    """Installed versions (from metadata, without importing the frameworks)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def record(task: str, *, framework: str, batch: int | None, timing: dict[str, float] | None = None,
           model: str | None = None, variant: str | None = None, precision: str | None = None,
           device: str | None = None, **fields: Any) -> dict[str, Any]:
    """One results.jsonl line: the schema's fields, `timing` (timing.timed's dict), then `fields`."""
    line: dict[str, Any] = {
        "date": now(), "device": device or device_name(framework), "versions": package_versions(),
        "loadavg": [round(x, 2) for x in os.getloadavg()], "task": task, "model": model, "framework": framework,
        "variant": variant, "precision": precision, "batch": batch,
        "ms": None, "ms_min": None, "ms_max": None, "images_per_s": None,
    }
    if timing:
        line.update(timing)
        if batch:
            line["images_per_s"] = batch * 1e3 / timing["ms"]
    line.update(fields)
    return line


def append(line: dict[str, Any], path: str | os.PathLike = RESULTS) -> None:
    """Appends `line` (keys sorted) to the JSON-lines file `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")


def read(path: str | os.PathLike = RESULTS) -> list[dict[str, Any]]:
    """Every line of `path` ([] if absent); a line that is not JSON is an error naming it."""
    path = Path(path)
    if not path.exists():
        return []
    lines = []
    for lineno, text in enumerate(path.read_text().splitlines(), 1):
        if text.strip():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({exc})") from None
    return lines
