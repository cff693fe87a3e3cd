"""Inference throughput of `salt_jax.predict.predict_probs` (images/s), per encoder and TTA mode.

    python benchmarks/bench_predict.py                                  # tiny and 50, batch 32
    python benchmarks/bench_predict.py --encoders tiny 50 101 --batch 64 --images 512

Times `predict_probs` end to end on uint8 (N, 101, 101) images (host->device copy, padding,
forward, sigmoid, crop, device->host copy) after one untimed warm-up call that compiles (benchmarks/timing.py).
Weights are random (drawn with numpy into the abstract module: the figure does not depend on
their values, and the modules' own initialisers are slow on a CPU). Appends one JSON line per
measurement to benchmarks/results.jsonl (benchmarks/records.py's schema, task "predict"; one
call is `--images` images, so images_per_s counts those, and images_per_cpu_s the images per
CPU second of this process, the stabler figure on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from flax import nnx

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's salt_jax
import records  # noqa: E402
from salt_jax import predict  # noqa: E402
from salt_jax.models import archs  # noqa: E402
from timing import timed  # noqa: E402

ARCHS = {"tiny": "unet_tiny", "50": "unet_se_resnext50_32x4d", "101": "unet_se_resnext101_32x4d"}


def random_model(arch: str, seed: int = 0) -> nnx.Module:
    """The eval-mode module `arch`, randomly initialised (the rate does not depend on the values)."""
    model = archs.build(arch, seed=seed)
    model.eval()
    return model


def measure(model: nnx.Module, images: np.ndarray, *, batch: int, tta: str) -> tuple[dict[str, float], float]:
    """(timing.timed's figures of one predict_probs call over `images`, images per CPU second of
    this process), after a compiling warm-up on one batch."""
    predict.predict_probs(model, images[:batch], batch_size=batch, tta=tta, progress=False)
    cpu = time.process_time()
    t = timed(lambda: predict.predict_probs(model, images, batch_size=batch, tta=tta, progress=False), 1, warmup=0)
    return t, len(images) / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", nargs="+", choices=sorted(ARCHS), default=["tiny", "50"])
    parser.add_argument("--tta", nargs="+", choices=predict.TTA_MODES, default=["none", "flip"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=128, help="timed images per measurement")
    parser.add_argument("--no-record", action="store_true", help="do not append to results.jsonl")
    args = parser.parse_args()

    images = np.random.default_rng(0).integers(0, 256, (args.images, 101, 101), dtype=np.uint8)
    for encoder in args.encoders:
        model = random_model(ARCHS[encoder])
        for tta in args.tta:
            t, cpu_rate = measure(model, images, batch=args.batch, tta=tta)
            line = records.record("predict", framework="jax", batch=args.batch, timing=t, model=ARCHS[encoder],
                                  variant=f"tta={tta}", tta=tta, images=args.images,
                                  images_per_s=args.images * 1e3 / t["ms"], images_per_cpu_s=cpu_rate)
            print(json.dumps(line), flush=True)
            if not args.no_record:
                records.append(line)


if __name__ == "__main__":
    main()
