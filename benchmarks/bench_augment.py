"""On-device augmentation throughput (and the docs figure of augmented samples).

    python benchmarks/bench_augment.py                   # default backend, batches 32 and 256
    python benchmarks/bench_augment.py --device cpu --batch 32 256 --iters 10
    python benchmarks/bench_augment.py --figure          # docs/figures/augment.png from real data

Throughput is images/s of the jitted `augment_batch` on (N, 128, 128, 1) float32 images, after
warm-up (compilation excluded): one window of `--iters` calls closed by block_until_ready
(benchmarks/timing.py). Each run appends one JSON line per batch size to benchmarks/results.jsonl
(benchmarks/records.py's schema, task "augment").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(REPO))  # this checkout's salt_jax
import records  # noqa: E402
from timing import timed  # noqa: E402

FIGURE = REPO / "docs" / "figures" / "augment.png"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto",
                        help="backend to run on (auto: JAX's default)")
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--iters", type=int, default=20, help="timed calls per batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls (compile included)")
    parser.add_argument("--no-record", action="store_true", help="do not append to results.jsonl")
    parser.add_argument("--figure", action="store_true", help=f"write {FIGURE.relative_to(REPO)}")
    parser.add_argument("--figure-ids", type=int, default=4, help="real images in the figure")
    parser.add_argument("--figure-augs", type=int, default=5, help="augmentations per image")
    return parser.parse_args(argv)


def measure(batch: int, iters: int, warmup: int) -> dict[str, float]:
    """timing.timed's figures (ms per call) of augment_batch for one batch size on JAX's default device."""
    import jax

    from salt_jax.data.augment import augment_batch, batch_key

    k_img, _ = jax.random.split(jax.random.key(0))
    images = jax.random.uniform(k_img, (batch, 128, 128, 1))
    masks = (images > 0.5).astype(images.dtype)
    keys = [batch_key(0, 0, step) for step in range(warmup + iters)]  # made before the clock starts
    jax.block_until_ready(keys)
    keys = iter(keys)
    last = []

    def call() -> None:
        last[:] = [augment_batch(next(keys), images, masks)]

    return timed(call, 1, warmup=warmup, iters=iters, sync=lambda: jax.block_until_ready(last))


def benchmark(args: argparse.Namespace) -> None:
    import jax

    name = records.device_name()
    print(f"augment_batch throughput on {name} (jax {jax.__version__})")
    print(f"{'batch':>6} {'images/s':>12}")
    for batch in args.batch:
        line = records.record("augment", framework="jax", batch=batch, timing=measure(batch, args.iters, args.warmup),
                              precision="float32", device=name)
        print(f"{batch:>6} {line['images_per_s']:>12.0f}")
        if not args.no_record:
            records.append(line)


def _read_real(n: int):
    """n real train images with salt (uint8 (n, 101, 101)) and masks, read with PIL."""
    import numpy as np
    from PIL import Image

    root = Path(os.environ.get("TGS_SALT_DIR", REPO.parent / "shared" / "tgs_salt"))
    if not (root / "train" / "masks").is_dir():
        sys.exit(f"real TGS data not found in {root} (set TGS_SALT_DIR)")
    images, masks = [], []
    for path in sorted((root / "train" / "masks").glob("*.png")):
        mask = np.asarray(Image.open(path)) > 0
        if 0.15 < mask.mean() < 0.7:  # salt and sediment both visible
            images.append(np.asarray(Image.open(root / "train" / "images" / path.name))[..., 0])
            masks.append(mask.astype(np.uint8))
        if len(images) == n:
            break
    return np.stack(images), np.stack(masks)


def figure(args: argparse.Namespace) -> None:
    """Rows: real images; first column the padded original, then augmentations (chain forced
    on, p=1, so every panel shows ops). Mask boundary in yellow; titles name the ops."""
    import jax
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from salt_jax.data import augment as A, geometry

    raw_images, raw_masks = _read_real(args.figure_ids)
    images = geometry.to_unit(geometry.pad(raw_images))[..., None]
    masks = geometry.pad(raw_masks)[..., None].astype(np.float32)
    cols = 1 + args.figure_augs
    fig, axes = plt.subplots(len(images), cols, figsize=(2.0 * cols, 2.15 * len(images)))
    for c in range(cols):
        if c == 0:
            out, out_masks, titles = images, masks, ["original (padded)"] * len(images)
        else:
            key = jax.random.key(c)
            out, out_masks = A.augment_batch(key, images, masks, p=1.0)
            ops = A.sample_ops(key, len(images), p=1.0)
            titles = [_op_title(ops, r) for r in range(len(images))]
        for r in range(len(images)):
            ax = axes[r, c]
            ax.imshow(np.asarray(out[r, ..., 0]), cmap="gray", vmin=0, vmax=1)
            ax.contour(np.asarray(out_masks[r, ..., 0]), levels=[0.5], colors="yellow",
                       linewidths=0.8)
            ax.set_title(titles[r], fontsize=6)
            ax.set_axis_off()
    fig.suptitle("augment_batch on real TGS images: mask boundary in yellow", fontsize=9)
    fig.tight_layout()
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=90)
    print(f"wrote {FIGURE}")


def _op_title(ops: dict, row: int) -> str:
    from salt_jax.data.augment import GEO_OPS, PHOTO_OPS

    flip = "flip + " if int(ops["flip"][row]) else ""
    geo = GEO_OPS[int(ops["geo"][row])].replace("_", " ")
    photo = PHOTO_OPS[int(ops["photo"][row])].replace("_", " ")
    return f"{flip}{geo}\n+ {photo}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.device != "auto":  # must be set before JAX initialises its backends
        os.environ["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else "cpu"
    if args.figure:
        figure(args)
    else:
        benchmark(args)


if __name__ == "__main__":
    main()
