"""salt_jax.viz: PNG files of the promised size, overlays where the masks are, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from salt_jax import viz

pytestmark = pytest.mark.timeout(120)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png(path) -> np.ndarray:
    """The RGB pixels of a PNG file, after checking it is one."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"), np.float32) / 255.0


def _cell_centre(pixels: np.ndarray, row: int, col: int) -> np.ndarray:
    """Mean RGB of a 40x40 window in the middle of grid cell (row, col)."""
    y, x = row * viz.CELL_PX + viz.CELL_PX // 2, col * viz.CELL_PX + viz.CELL_PX // 2
    return pixels[y - 20 : y + 20, x - 20 : x + 20].mean(axis=(0, 1))


def test_grid_with_masks_has_three_columns_and_tints_the_masks(tmp_path):
    images = np.zeros((3, 101, 101), np.uint8)  # black: any colour in a panel is an overlay
    masks = np.stack([np.ones((101, 101)), np.zeros((101, 101)), np.ones((101, 101))]).astype(np.uint8)
    probs = np.stack([np.full((101, 101), 0.9), np.full((101, 101), 0.9), np.full((101, 101), 0.1)])
    path = tmp_path / "grid.png"
    assert viz.prediction_grid(images, masks, probs, path, ids=["a", "b", "c"]) == str(path)
    pixels = _png(path)
    assert pixels.shape == (3 * viz.CELL_PX, 3 * viz.CELL_PX, 3)

    def tint(row, col):  # (red, green) of the cell centre
        r, g, _ = _cell_centre(pixels, row, col)
        return r, g

    assert max(tint(0, 0)) < 0.05  # plain black image
    r, g = tint(0, 1)
    assert g > 0.2 and g > 2 * r  # ground truth in green
    r, g = tint(0, 2)
    assert r > 0.2 and r > 2 * g  # prediction (0.9 > 0.5) in red
    assert max(tint(1, 1)) < 0.05  # empty ground truth: no tint
    assert max(tint(2, 2)) < 0.05  # 0.1 < threshold: no prediction


def test_grid_without_masks_has_two_columns_and_at_most_n_rows(tmp_path):
    images = np.random.default_rng(0).random((10, 101, 101)).astype(np.float32)
    path = tmp_path / "sub" / "test.png"  # missing folders are created
    viz.prediction_grid(images, None, images, path, n=4)
    assert _png(path).shape == (4 * viz.CELL_PX, 2 * viz.CELL_PX, 3)


def test_threshold_decides_what_is_predicted(tmp_path):
    images = np.zeros((1, 101, 101), np.uint8)
    probs = np.full((1, 101, 101), 0.6)
    path = tmp_path / "t.png"
    viz.prediction_grid(images, None, probs, path, threshold=0.7)
    assert _cell_centre(_png(path), 0, 1).max() < 0.05


def test_grid_rejects_mismatched_shapes(tmp_path):
    images = np.zeros((2, 101, 101), np.uint8)
    with pytest.raises(ValueError, match="probs"):
        viz.prediction_grid(images, None, np.zeros((2, 101, 100)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="masks"):
        viz.prediction_grid(images, np.zeros((3, 101, 101)), np.zeros((2, 101, 101)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="ids"):
        viz.prediction_grid(images, None, np.zeros((2, 101, 101)), tmp_path / "x.png", ids=["a"])
    assert list(tmp_path.iterdir()) == []


def _records(n: int = 12, switch: int = 5) -> list[dict]:
    return [dict(epoch=e, train_loss=1 / (e + 1), val_loss=1.2 / (e + 1), val_map=0.5 + 0.02 * e,
                 lr=1e-4 if e < 8 else 5e-5, round=int(e >= switch)) for e in range(n)]


def test_curves_png_size_and_no_temporary_left(tmp_path):
    path = tmp_path / "curves.png"
    path.write_bytes(b"old")  # replaced whole
    viz.plot_curves(_records(), path)
    width, height = viz.CURVES_PX
    assert _png(path).shape == (height, width, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_curves_accept_missing_keys(tmp_path):
    viz.plot_curves([{"epoch": 0, "train_loss": 1.0}], tmp_path / "c.png")
    assert (tmp_path / "c.png").exists()
    with pytest.raises(ValueError, match="epoch"):
        viz.plot_curves([{"train_loss": 1.0}], tmp_path / "d.png")
    with pytest.raises(ValueError, match="no records"):
        viz.plot_curves([], tmp_path / "d.png")


def test_switch_epoch_from_round_change_or_explicit_key():
    assert viz._switch_epoch(_records(switch=5)) == 5
    assert viz._switch_epoch(_records(switch=99)) is None
    explicit = [{"epoch": e, "switch_epoch": 20} for e in range(30)]
    assert viz._switch_epoch(explicit) == 20
    assert viz._switch_epoch(explicit[:20]) is None  # not reached yet
    assert viz._switch_epoch([{"epoch": 0, "round": "lovasz", "switch_epoch": 0}]) is None
