"""Benchmark: Lovasz hinge value + gradient, JAX (jitted, batched sort) vs a PyTorch port.

The PyTorch side is a straightforward port of the published algorithm (Berman et al. 2018) as the
original solution ran it: a Python loop over images, torch.sort per image, autograd for the
gradient. Both compute the loss of a (batch, size, size) logit map and its gradient; the figures are
median wall-clock milliseconds per value-and-gradient call.

    python benchmarks/bench_lovasz.py                       # CPU, batch 32 x 128 x 128
    python benchmarks/bench_lovasz.py --device gpu          # JAX on the GPU, torch on cuda

Each measurement is appended as one JSON line to benchmarks/results.jsonl
(benchmarks/records.py's schema; task "lovasz", variant the hinge: "elu+1" or "relu").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np
import torch

sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's salt_jax
import records  # noqa: E402
from salt_jax.losses import lovasz_hinge  # noqa: E402
from timing import timed  # noqa: E402


# ----------------------------------------------------------------------------------------------
# PyTorch port (per-image loop, as in the reference implementation)
# ----------------------------------------------------------------------------------------------


def torch_jaccard_weights(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss at labels sorted by decreasing error."""
    positives = gt_sorted.sum()
    intersection = positives - gt_sorted.cumsum(0)
    union = positives + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def torch_lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor, variant: str) -> torch.Tensor:
    """Mean over images of the Lovasz hinge of each flattened image; logits, labels (N, H, W)."""
    per_image = []
    for x, y in zip(logits, labels):
        x, y = x.reshape(-1), y.reshape(-1)
        errors = 1.0 - x * (2.0 * y - 1.0)
        errors_sorted, perm = torch.sort(errors, descending=True)
        weights = torch_jaccard_weights(y[perm])
        hinge = torch.relu(errors_sorted) if variant == "relu" else torch.nn.functional.elu(errors_sorted) + 1.0
        per_image.append(torch.dot(hinge, weights))
    return torch.stack(per_image).mean()


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def bench_jax(logits: np.ndarray, labels: np.ndarray, variant: str, device: str, **timing) -> tuple[dict, float]:
    """(timing.timed's figures, loss) of the jitted value-and-gradient on the chosen JAX backend."""
    target = jax.devices(device)[0]
    x, y = jax.device_put(logits, target), jax.device_put(labels, target)
    step = jax.jit(jax.value_and_grad(lambda a, b: lovasz_hinge(a, b, variant=variant)))
    t = timed(lambda: jax.block_until_ready(step(x, y)), **timing)
    return t, float(step(x, y)[0])


def bench_torch(logits: np.ndarray, labels: np.ndarray, variant: str, device: str, **timing) -> tuple[dict, float]:
    """(timing.timed's figures, loss) of forward + backward of the per-image PyTorch port."""
    torch_device = "cuda" if device == "gpu" else "cpu"
    x = torch.tensor(logits, device=torch_device, requires_grad=True)
    y = torch.tensor(labels, device=torch_device)

    def run() -> float:
        x.grad = None
        loss = torch_lovasz_hinge(x, y, variant)
        loss.backward()
        if torch_device == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    t = timed(run, **timing)
    return t, run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--variants", nargs="+", choices=["elu+1", "relu"], default=["elu+1", "relu"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to results.jsonl")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    shape = (args.batch, args.size, args.size)
    logits = rng.normal(scale=2.0, size=shape).astype(np.float32)
    labels = (rng.random(shape) < 0.4).astype(np.float32)
    labels[: args.batch // 4] = 0.0  # like the data: a good share of empty masks
    timing = {"warmup": args.warmup, "repeats": args.repeats}
    device = records.cpu_name() if args.device == "cpu" else records.device_name("jax")

    print(f"Lovasz hinge value+grad, batch {shape}, {device}")
    print(f"jax {jax.__version__}, torch {torch.__version__}, median of {args.repeats}")
    print(f"{'framework':<10}{'variant':<8}{'ms':>10}{'loss':>12}")
    lines = []
    for variant in args.variants:
        losses_seen = []
        for framework, bench in (("jax", bench_jax), ("torch", bench_torch)):
            t, loss = bench(logits, labels, variant, args.device, **timing)
            losses_seen.append(loss)
            print(f"{framework:<10}{variant:<8}{t['ms']:>10.2f}{loss:>12.6f}")
            lines.append(records.record("lovasz", framework=framework, batch=args.batch, timing=t, variant=variant,
                                        precision="float32", device=device, size=args.size))
        if not np.isclose(*losses_seen, rtol=1e-5):
            raise SystemExit(f"jax and torch losses disagree for {variant}: {losses_seen}")
    if not args.no_record:
        for line in lines:
            records.append(line)
        print(f"appended {len(lines)} lines to {records.RESULTS}")


if __name__ == "__main__":
    main()
