"""Inference throughput of `salt_jax.predict.predict_probs` (images/s), per encoder and TTA mode.

    python benchmarks/bench_predict.py                                  # tiny and 50, batch 32
    python benchmarks/bench_predict.py --encoders tiny 50 101 --batch 64 --images 512

Times `predict_probs` end to end on uint8 (N, 101, 101) images (host->device copy, padding,
forward, sigmoid, crop, device->host copy) after one untimed warm-up call that compiles.
Weights are random (drawn with numpy into the abstract module: the figure does not depend on
their values, and the modules' own initialisers are slow on a CPU). Appends one JSON line per
measurement to benchmarks/results.jsonl (task "predict").
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from salt_jax import predict
from salt_jax.models import archs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results.jsonl"
ARCHS = {"tiny": "unet_tiny", "50": "unet_se_resnext50_32x4d", "101": "unet_se_resnext101_32x4d"}


def random_model(arch: str, seed: int = 0) -> nnx.Module:
    """The eval-mode module `arch`, randomly initialised (the rate does not depend on the values)."""
    model = archs.build(arch, seed=seed)
    model.eval()
    return model


def measure(model: nnx.Module, images: np.ndarray, *, batch: int, tta: str) -> tuple[float, float]:
    """(images per wall second, images per CPU second of this process) of predict_probs over
    `images`, after a compiling warm-up. On a shared machine the CPU-second figure is the stabler."""
    predict.predict_probs(model, images[:batch], batch_size=batch, tta=tta, progress=False)
    wall, cpu = time.perf_counter(), time.process_time()
    predict.predict_probs(model, images, batch_size=batch, tta=tta, progress=False)
    return len(images) / (time.perf_counter() - wall), len(images) / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", nargs="+", choices=sorted(ARCHS), default=["tiny", "50"])
    parser.add_argument("--tta", nargs="+", choices=predict.TTA_MODES, default=["none", "flip"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=128, help="timed images per measurement")
    parser.add_argument("--no-record", action="store_true", help="do not append to results.jsonl")
    args = parser.parse_args()

    images = np.random.default_rng(0).integers(0, 256, (args.images, 101, 101), dtype=np.uint8)
    device = f"{jax.default_backend()} x{jax.device_count()} ({jax.devices()[0].device_kind})"
    for encoder in args.encoders:
        model = random_model(ARCHS[encoder])
        for tta in args.tta:
            rate, cpu_rate = measure(model, images, batch=args.batch, tta=tta)
            row = {"task": "predict", "encoder": encoder, "tta": tta, "batch": args.batch, "images": args.images,
                   "images_per_s": round(rate, 2), "images_per_cpu_s": round(cpu_rate, 2), "device": device,
                   "jax": jax.__version__, "load_avg_1min": round(os.getloadavg()[0], 1),
                   "date": datetime.date.today().isoformat()}
            print(json.dumps(row), flush=True)
            if not args.no_record:
                with open(RESULTS, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
