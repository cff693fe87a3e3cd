"""Pictures: a grid of image / ground truth / prediction, and the training curves, as PNG.

Both functions draw with matplotlib's Agg backend (no display needed) on a figure of a fixed size
in pixels, so callers and tests know the PNG's dimensions in advance: the grid is
`CELL_PX * columns` wide and `CELL_PX * rows` high, the curves `CURVES_PX`. Files are written
atomically: to a temporary file in the target directory, then `os.replace`, so a reader never
sees a half-written PNG and a crash leaves no partial file behind.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless rendering, also on machines with a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from salt_jax.fileio import atomic_write  # noqa: E402
from salt_jax.metrics import kaggle_score_np  # noqa: E402

DPI = 100
CELL_PX = 200  # one grid cell (one image panel), square
CURVES_PX = (1200, 500)  # (width, height) of the training-curves figure
MASK_COLOUR = (0.1, 0.9, 0.2)  # ground truth overlay: green
PRED_COLOUR = (1.0, 0.2, 0.1)  # prediction overlay: red
OVERLAY_ALPHA = 0.4


def prediction_grid(
    images: np.ndarray,
    masks: np.ndarray | None,
    probs: np.ndarray,
    path: str | os.PathLike,
    *,
    ids: Sequence[str] | None = None,
    n: int = 8,
    threshold: float = 0.5,
) -> str:
    """Draw the first `n` samples as rows: image | ground-truth overlay | prediction overlay.

    Args:
      images: (N, H, W) grayscale, uint8 0..255 or float in [0, 1].
      masks: (N, H, W) binary ground truth, or None for unlabelled (test) images; then the
        ground-truth column is left out.
      probs: (N, H, W) salt probabilities in [0, 1]; the prediction is `probs > threshold`.
      path: the PNG to write.
      ids: optional N image ids, shown in the row titles.
      n: at most this many rows (the first n samples; pick the sample before calling).
      threshold: probability threshold of the predicted mask.

    Returns:
      The path written, as a string. The PNG is `CELL_PX * (3 or 2)` x `CELL_PX * rows` pixels.
    """
    images, probs = np.asarray(images), np.asarray(probs)
    _check_grid_inputs(images, masks, probs, ids)
    rows = min(n, len(images))
    if rows < 1:
        raise ValueError("prediction_grid: no images to draw")
    preds = probs[:rows] > threshold
    gray = _to_unit_gray(images[:rows])
    cols = 2 if masks is None else 3
    fig, axes = plt.subplots(
        rows, cols, figsize=(cols * CELL_PX / DPI, rows * CELL_PX / DPI), dpi=DPI, squeeze=False
    )
    scores = None if masks is None else kaggle_score_np(np.asarray(masks)[:rows] != 0, preds)
    for r in range(rows):
        name = ids[r] if ids is not None else f"#{r}"
        panels = [(gray[r], None, name)]
        if masks is not None:
            truth = np.asarray(masks)[r] != 0
            panels.append((gray[r], (truth, MASK_COLOUR), "ground truth"))
            title = f"IoU {_iou(truth, preds[r]):.2f} score {scores[r]:.2f}"
        else:
            title = f"pred (max p {probs[r].max():.2f})"
        panels.append((gray[r], (preds[r], PRED_COLOUR), title))
        for ax, (img, overlay, text) in zip(axes[r], panels):
            _draw_panel(ax, img, overlay, text)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.05, hspace=0.25)
    return _save_atomic(fig, path)


def plot_curves(records: Sequence[dict], path: str | os.PathLike) -> str:
    """Draw training curves from per-epoch records (the lines of a run's metrics.jsonl).

    Left panel: train_loss and val_loss vs epoch, with val_map on a secondary axis. Right panel:
    the learning rate (log scale). Keys missing from the records are skipped. The loss switch is
    marked with a dashed vertical line at the first epoch whose `round` differs from the previous
    record's, or at `switch_epoch` if a record carries that key.

    Args:
      records: dicts with "epoch" and some of "train_loss", "val_loss", "val_map", "lr",
        "round", "switch_epoch".
      path: the PNG to write (`CURVES_PX` pixels).

    Returns:
      The path written, as a string.
    """
    if not records:
        raise ValueError("plot_curves: no records to draw")
    if any("epoch" not in r for r in records):
        raise ValueError("plot_curves: every record needs an 'epoch' key")
    width, height = CURVES_PX
    fig, (ax_loss, ax_lr) = plt.subplots(
        1, 2, figsize=(width / DPI, height / DPI), dpi=DPI, gridspec_kw={"width_ratios": [2, 1]}
    )
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        _plot_series(ax_loss, records, key, style, "tab:blue" if key == "train_loss" else "tab:orange")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_map = ax_loss.twinx()
    _plot_series(ax_map, records, "val_map", "-", "tab:green")
    ax_map.set_ylabel("val_map")
    _merge_legends(ax_loss, ax_map)
    if _plot_series(ax_lr, records, "lr", "-", "tab:purple"):
        ax_lr.set_yscale("log")
    ax_lr.set_xlabel("epoch")
    ax_lr.set_ylabel("learning rate")
    switch = _switch_epoch(records)
    if switch is not None:
        for ax in (ax_loss, ax_lr):
            ax.axvline(switch, color="gray", linestyle=":")
        ax_loss.set_title(f"loss switch at epoch {switch}")
    fig.tight_layout()
    return _save_atomic(fig, path)


# --------------------------------------------------------------------------- helpers


def _check_grid_inputs(images, masks, probs, ids) -> None:
    """Shapes must agree: (N, H, W) everywhere, N ids."""
    if images.ndim != 3:
        raise ValueError(f"prediction_grid: images must be (N, H, W), got shape {images.shape}")
    if probs.shape != images.shape:
        raise ValueError(f"prediction_grid: probs {probs.shape} and images {images.shape} differ in shape")
    if masks is not None and np.shape(masks) != images.shape:
        raise ValueError(f"prediction_grid: masks {np.shape(masks)} and images {images.shape} differ in shape")
    if ids is not None and len(ids) != len(images):
        raise ValueError(f"prediction_grid: {len(ids)} ids for {len(images)} images")


def _to_unit_gray(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float in [0, 1]; floats are taken to be in [0, 1] already."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    return np.clip(images.astype(np.float32), 0.0, 1.0)


def _iou(truth: np.ndarray, pred: np.ndarray) -> float:
    """IoU of two boolean masks; 1.0 when both are empty (as the Kaggle metric counts them)."""
    union = np.logical_or(truth, pred).sum()
    return 1.0 if union == 0 else float(np.logical_and(truth, pred).sum() / union)


def _draw_panel(ax, gray: np.ndarray, overlay, title: str) -> None:
    """The image in gray, optionally with a binary mask tinted on top (RGBA, transparent where 0)."""
    ax.imshow(gray, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if overlay is not None:
        mask, colour = overlay
        rgba = np.zeros(mask.shape + (4,), np.float32)
        rgba[..., :3] = colour
        rgba[..., 3] = OVERLAY_ALPHA * mask
        ax.imshow(rgba, interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_series(ax, records: Sequence[dict], key: str, style: str, colour: str) -> bool:
    """Plot records[key] vs epoch where present; False if no record has the key."""
    points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
    if not points:
        return False
    epochs, values = zip(*points)
    ax.plot(epochs, values, style, color=colour, label=key, marker="." if len(points) < 30 else None)
    return True


def _merge_legends(*axes) -> None:
    """One legend for twin axes (matplotlib gives each axis its own)."""
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        axes[0].legend(handles, labels, loc="upper right", fontsize=8)


def _switch_epoch(records: Sequence[dict]) -> int | None:
    """The epoch of the loss switch: an explicit `switch_epoch` inside the plotted epochs (after the
    first, so a run that never switched or started with the second loss gets no mark), else the
    first epoch where `round` changes."""
    epochs = [r["epoch"] for r in records]
    for r in records:
        if r.get("switch_epoch") is not None:
            switch = int(r["switch_epoch"])
            return switch if min(epochs) < switch <= max(epochs) else None
    for prev, cur in zip(records, records[1:]):
        if "round" in cur and cur.get("round") != prev.get("round"):
            return int(cur["epoch"])
    return None


def _save_atomic(fig, path: str | os.PathLike) -> str:
    """Save `fig` as PNG to a temporary file beside `path`, then rename it into place; closes `fig`."""
    try:
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return os.fspath(path)
