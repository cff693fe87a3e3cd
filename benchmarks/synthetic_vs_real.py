"""Draw synthetic samples next to real ones (image with the mask outline in red).

    python benchmarks/synthetic_vs_real.py [--out docs/figures/synthetic_vs_real.png]

Real images come from TGS_SALT_DIR (default ../shared/tgs_salt); without them only the
synthetic rows are drawn.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from salt_jax.data import load_train  # noqa: E402
from salt_jax.data.synthetic import generate_arrays  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def pick(masks: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Indices of `count` samples, half with salt and half at random, for a fair look."""
    salty = rng.choice(np.flatnonzero(masks.any(axis=(1, 2))), count // 2, replace=False)
    others = rng.choice(np.setdiff1d(np.arange(len(masks)), salty), count - len(salty), replace=False)
    return np.sort(np.concatenate([salty, others]))


def draw_rows(axes: np.ndarray, images: np.ndarray, masks: np.ndarray, title: str) -> None:
    for ax, image, mask in zip(axes.ravel(), images, masks):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        if mask.any() and not mask.all():
            ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes.ravel()[0].set_title(title, loc="left", fontsize=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs/figures/synthetic_vs_real.png"))
    parser.add_argument("--per-kind", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    real_dir = Path(os.environ.get("TGS_SALT_DIR", ROOT.parent / "shared" / "tgs_salt"))
    rows = []
    if (real_dir / "train.csv").is_file():
        real = load_train(real_dir, use_cache=False)  # a one-off: leave no cache behind
        idx = pick(real.masks, rng, args.per_kind)
        rows.append(("real (TGS train)", real.images[idx], real.masks[idx]))
    images, masks = generate_arrays(256, seed=0)
    idx = pick(masks, rng, args.per_kind)
    rows.append(("synthetic (seed 0)", images[idx], masks[idx]))

    cols = 8
    n_rows = sum(len(r[1]) // cols for r in rows)
    fig, axes = plt.subplots(n_rows, cols, figsize=(cols * 1.3, n_rows * 1.35))
    start = 0
    for title, imgs, msks in rows:
        count = len(imgs) // cols
        draw_rows(axes[start:start + count], imgs, msks, title)
        start += count
    fig.tight_layout(pad=0.3)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
