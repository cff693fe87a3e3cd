"""Read the TGS Salt data in Kaggle's layout into uint8 arrays, validated and cached.

Layout of `data_dir` (Kaggle's zips may stand in for the two folders)::

    train/images/<id>.png  train/masks/<id>.png   (or train.zip holding images/ and masks/)
    test/images/<id>.png                          (or test.zip holding images/)
    train.csv              id,rle_mask   -- defines the training ids and their order
    depths.csv             id,z          -- optional: unknown depths become NaN
    sample_submission.csv  id,rle_mask   -- defines the test ids and their order

Encodings accepted (those of the real files, and their obvious equivalents):
- images: 8-bit PNG in mode L, LA, RGB, RGBA or P; converted with PIL's `convert("L")`. The real
  images are RGB with three identical channels, for which this returns that channel exactly
  (PIL's integer luma weights sum to one).
- masks: one salt level and zero. The real masks are 16-bit 0/65535 (salt present) or 8-bit
  all-zero (empty); 8-bit 0/255, 0/1 and 1-bit masks are accepted too. A mask with two non-zero
  levels, or a salt level other than 1 or the full scale, is rejected. Every mask PNG must equal
  the decoding of its RLE in train.csv.

Caching: the arrays are stored as `<cache_dir>/<split>-<key>.npz`, where `key` is a BLAKE2b hash
of the bytes of every PNG (with its id) and of the CSVs. Reading the bytes is needed anyway and
costs far less than decoding them, so the cache is keyed by content, not by names or mtimes.
Nothing is written unless the whole split validated; the write is atomic (temp file, then
`os.replace`). A cache that cannot be written is only a warning.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import struct
import warnings
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from salt_jax.cache import cache_root
from salt_jax.data.geometry import IMAGE_SIZE as SIZE
from salt_jax.data.rle import rle_decode
from salt_jax.errors import DataError
from salt_jax.fileio import atomic_write

__all__ = ["TrainSet", "TestSet", "load_train", "load_test", "default_cache_dir"]

_CACHE_VERSION = b"salt_jax.kaggle/v1"
_IMAGE_MODES = ("L", "LA", "RGB", "RGBA", "P")
# Full-scale salt level per mask mode, besides 1 which is accepted for every mode.
_MASK_FULL_SCALE = {"1": 1, "L": 255, "LA": 255, "RGB": 255, "RGBA": 255, "P": 255,
                    "I;16": 65535, "I;16B": 65535, "I": 65535}
# What PIL raises on corrupt or truncated input, depending on where the damage is.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


@dataclass(frozen=True, eq=False)
class TrainSet:
    """The training split, ordered as in train.csv; arrays are read-only.

    ids: N ids. images: uint8 (N, 101, 101), 0..255. masks: uint8 (N, 101, 101), 0/1.
    depths: float32 (N,), NaN where depths.csv has no value.
    content_key: the BLAKE2b hash of the CSVs and of every (id, image, mask) PNG that keys the
        cache; it identifies the data a training run saw (recorded in its workdir).
    """

    ids: tuple[str, ...]
    images: np.ndarray
    masks: np.ndarray
    depths: np.ndarray
    content_key: str

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, eq=False)
class TestSet:
    """The test split, ordered as in sample_submission.csv: ids and uint8 (N, 101, 101) images."""

    ids: tuple[str, ...]
    images: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_train(data_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
               use_cache: bool = True) -> TrainSet:
    """Load, validate and cache the training split of a Kaggle-layout folder.

    Raises:
        DataError: missing folder/CSV, unreadable PNG, wrong size, bad mask levels, ids without
            files or files without ids, malformed RLE, or a mask PNG that disagrees with its RLE.
    """
    root = _check_root(data_dir)
    csv_path = root / "train.csv"
    rows = _read_csv(csv_path, ("id", "rle_mask"))
    ids = _unique_ids(rows, csv_path)
    if not ids:
        raise DataError(f"{csv_path} lists no ids (a header without rows)")
    depths_path = root / "depths.csv"
    depths_bytes = depths_path.read_bytes() if depths_path.is_file() else b""
    images = _read_pngs(root, "train", "images")
    masks = _read_pngs(root, "train", "masks")
    _match_ids(ids, images, csv_path, _where(root, "train", "images"))
    _match_ids(ids, masks, csv_path, _where(root, "train", "masks"))

    key = _content_key(b"train", csv_path.read_bytes(), depths_bytes,
                       ((i, images[i][1], masks[i][1]) for i in ids))
    cache = _cache_file(root, cache_dir, "train", key) if use_cache else None
    cached = _load_cache(cache, len(ids))
    if cached is not None:
        return TrainSet(ids=ids, images=_frozen(cached["images"]), masks=_frozen(cached["masks"]),
                        depths=_frozen(cached["depths"]), content_key=key)

    image_arr = np.stack([_decode_image(*images[i]) for i in ids])
    mask_arr = _decode_masks([masks[i] for i in ids])
    for row, mask, i in zip(rows, mask_arr, ids):
        _check_rle_agrees(row, mask, i, csv_path, masks[i][0])
    depth_arr = _depths_for(ids, depths_path) if depths_bytes else np.full(len(ids), np.nan, np.float32)
    arrays = {"ids": np.array(ids), "images": image_arr, "masks": mask_arr, "depths": depth_arr}
    _write_cache(cache, arrays)
    return TrainSet(ids=ids, images=_frozen(image_arr), masks=_frozen(mask_arr),
                    depths=_frozen(depth_arr), content_key=key)


def load_test(data_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
              use_cache: bool = True) -> TestSet:
    """Load, validate and cache the test split (ids in sample_submission.csv order).

    Raises:
        DataError: as `load_train`, for the test images and sample_submission.csv.
    """
    root = _check_root(data_dir)
    csv_path = root / "sample_submission.csv"
    ids = _unique_ids(_read_csv(csv_path, ("id",)), csv_path)
    images = _read_pngs(root, "test", "images")
    _match_ids(ids, images, csv_path, _where(root, "test", "images"))

    key = _content_key(b"test", csv_path.read_bytes(), b"", ((i, images[i][1]) for i in ids))
    cache = _cache_file(root, cache_dir, "test", key) if use_cache else None
    cached = _load_cache(cache, len(ids))
    if cached is not None:
        return TestSet(ids=ids, images=_frozen(cached["images"]))

    image_arr = np.stack([_decode_image(*images[i]) for i in ids]) if ids else np.zeros((0, SIZE, SIZE), np.uint8)
    _write_cache(cache, {"ids": np.array(ids), "images": image_arr})
    return TestSet(ids=ids, images=_frozen(image_arr))


def default_cache_dir(data_dir: str | os.PathLike) -> Path:
    """`$SALT_JAX_CACHE`, else `~/.cache/salt_jax/arrays` (`$XDG_CACHE_HOME` honoured).

    Never inside `data_dir`: a user's data folder (or a shared read-only copy that root
    could still write to) is not ours to modify. Cache files are keyed by content, so one
    folder serves every dataset. `data_dir` is accepted for a uniform call signature.
    """
    del data_dir
    if os.environ.get("SALT_JAX_CACHE"):
        return Path(os.environ["SALT_JAX_CACHE"])
    return cache_root() / "arrays"


# ---------------------------------------------------------------------------------------------
# CSVs and files


def _check_root(data_dir: str | os.PathLike) -> Path:
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    return root


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV with a header that names at least `required`; every row must be complete."""
    if not path.is_file():
        raise DataError(f"missing CSV {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: header {reader.fieldnames} lacks column(s) {missing}")
        rows = list(reader)
    for line, row in enumerate(rows, start=2):
        if any(row.get(c) is None for c in required) or None in row:
            raise DataError(f"{path}, line {line}: wrong number of fields")
        if not row["id"]:
            raise DataError(f"{path}, line {line}: empty id")
    return rows


def _unique_ids(rows: list[dict[str, str]], path: Path) -> tuple[str, ...]:
    ids = tuple(row["id"] for row in rows)
    if len(set(ids)) != len(ids):
        dup = next(i for i, count in Counter(ids).items() if count > 1)
        raise DataError(f"{path}: id {dup!r} appears more than once")
    return ids


def _where(root: Path, split: str, kind: str) -> str:
    """How error messages name a folder of PNGs (or its zip)."""
    folder = root / split / kind
    return str(folder) if folder.is_dir() else f"{root / (split + '.zip')}:{kind}/"


def _read_pngs(root: Path, split: str, kind: str) -> dict[str, tuple[str, bytes]]:
    """id -> (label for messages, PNG bytes) for `root/split/kind/*.png` or `root/split.zip`.

    Names that do not end in .png are ignored (e.g. .DS_Store).
    """
    folder, archive = root / split / kind, root / f"{split}.zip"
    if folder.is_dir():
        return {p.stem: (str(p), p.read_bytes()) for p in sorted(folder.glob("*.png")) if p.is_file()}
    if archive.is_file():
        return _read_zip_pngs(archive, split, kind)
    raise DataError(f"missing folder {folder} (or {archive})")


def _read_zip_pngs(archive: Path, split: str, kind: str) -> dict[str, tuple[str, bytes]]:
    """PNGs under `kind/` (or `split/kind/`) in a Kaggle zip."""
    pattern = re.compile(rf"^(?:{re.escape(split)}/)?{re.escape(kind)}/([^/]+)\.png$")
    found: dict[str, tuple[str, bytes]] = {}
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                match = pattern.match(info.filename)
                if not match:
                    continue
                label = f"{archive}:{info.filename}"
                if match.group(1) in found:
                    raise DataError(f"{label}: id {match.group(1)!r} appears twice in the zip")
                found[match.group(1)] = (label, zf.read(info))
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{archive}: unreadable zip ({err})") from err
    if not found:
        raise DataError(f"{archive} holds no {kind}/*.png")
    return found


def _match_ids(ids: tuple[str, ...], files: dict[str, tuple[str, bytes]], csv_path: Path,
               where: str) -> None:
    """Every CSV id has a file and every file has a CSV id."""
    no_file = [i for i in ids if i not in files]
    if no_file:
        raise DataError(f"{csv_path} lists {len(no_file)} id(s) with no PNG in {where}: "
                        f"{_few(no_file)}")
    known = set(ids)
    no_id = sorted(i for i in files if i not in known)
    if no_id:
        raise DataError(f"{where} holds {len(no_id)} PNG(s) whose id is not in {csv_path}: "
                        f"{_few([files[i][0] for i in no_id])}")


def _depths_for(ids: tuple[str, ...], path: Path) -> np.ndarray:
    """float32 (N,) depths for `ids`; NaN for ids that depths.csv does not list."""
    table: dict[str, float] = {}
    for line, row in enumerate(_read_csv(path, ("id", "z")), start=2):
        try:
            table[row["id"]] = float(row["z"]) if row["z"] else math.nan
        except ValueError:
            raise DataError(f"{path}, line {line}: depth {row['z']!r} is not a number") from None
    return np.array([table.get(i, math.nan) for i in ids], np.float32)


def _few(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")


# ---------------------------------------------------------------------------------------------
# PNG decoding and validation


def _open_png(label: str, data: bytes) -> Image.Image:
    """A fully decoded 101x101 PNG, or a DataError naming the file."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except _DECODE_ERRORS as err:
        raise DataError(f"{label}: unreadable or truncated PNG ({err})") from err
    if image.format != "PNG":
        raise DataError(f"{label}: not a PNG (format {image.format})")
    if image.size != (SIZE, SIZE):
        raise DataError(f"{label}: size {image.size[0]}x{image.size[1]}, expected {SIZE}x{SIZE}")
    return image


def _decode_image(label: str, data: bytes) -> np.ndarray:
    """uint8 (101, 101) grayscale image."""
    image = _open_png(label, data)
    if image.mode not in _IMAGE_MODES:
        raise DataError(f"{label}: image mode {image.mode!r} is not one of {_IMAGE_MODES}")
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _decode_masks(files: list[tuple[str, bytes]]) -> np.ndarray:
    """uint8 (N, 101, 101) 0/1 masks from (label, bytes) pairs."""
    if not files:
        return np.zeros((0, SIZE, SIZE), np.uint8)
    decoded = [_mask_levels(label, data) for label, data in files]
    levels = np.stack([lv for lv, _ in decoded])  # uint16 (N, 101, 101)
    full = np.array([fs for _, fs in decoded], np.uint16)
    # Vectorised check: all non-zero pixels of a mask share one level, which must be 1 or the
    # full scale of that file's encoding.
    peak = levels.max(axis=(1, 2))
    mixed = ((levels != 0) & (levels != peak[:, None, None])).any(axis=(1, 2))
    odd = (peak != 0) & (peak != 1) & (peak != full)
    bad = np.flatnonzero(mixed | odd)
    if bad.size:
        index = bad[0]
        found = np.unique(levels[index])[:6].tolist()
        what = "more than two levels" if mixed[index] else f"salt level {peak[index]}"
        raise DataError(f"{files[index][0]}: mask has {what} (values {found}); expected 0 and "
                        f"{full[index]} (or 1)")
    return (levels != 0).astype(np.uint8)


def _mask_levels(label: str, data: bytes) -> tuple[np.ndarray, int]:
    """Raw levels of a mask PNG as uint16 (101, 101), one channel (alpha ignored), and the
    full-scale level of its encoding."""
    image = _open_png(label, data)
    if image.mode not in _MASK_FULL_SCALE:
        raise DataError(f"{label}: mask mode {image.mode!r} is not one of {tuple(_MASK_FULL_SCALE)}")
    full_scale = _MASK_FULL_SCALE[image.mode]
    if image.mode == "P":
        image = image.convert("L")
    levels = np.asarray(image).astype(np.uint16)
    if levels.ndim == 3:
        colour = levels[..., :3] if levels.shape[-1] >= 3 else levels[..., :1]
        if (colour != colour[..., :1]).any():
            raise DataError(f"{label}: colour mask (channels differ); expected grayscale")
        levels = levels[..., 0]
    return levels, full_scale


def _check_rle_agrees(row: dict[str, str], mask: np.ndarray, image_id: str, csv_path: Path,
                      label: str) -> None:
    """The mask PNG must equal the RLE in train.csv."""
    try:
        decoded = rle_decode(row["rle_mask"], (SIZE, SIZE))
    except DataError as err:
        raise DataError(f"{csv_path}, id {image_id}: {err}") from None
    differ = int((decoded != mask).sum())
    if differ:
        raise DataError(f"{label} disagrees with its RLE in {csv_path} (id {image_id}): "
                        f"{differ} pixel(s) differ")


# ---------------------------------------------------------------------------------------------
# Cache


def _content_key(split: bytes, csv_bytes: bytes, depths_bytes: bytes, files) -> str:
    """BLAKE2b over the CSVs and every (id, PNG bytes...) tuple, lengths framing each part."""
    digest = hashlib.blake2b(_CACHE_VERSION, digest_size=20)
    for part in (split, csv_bytes, depths_bytes):
        digest.update(len(part).to_bytes(8, "little") + part)
    for record in files:
        for part in record:
            part = part.encode() if isinstance(part, str) else part
            digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()


def _cache_file(root: Path, cache_dir: str | os.PathLike | None, split: str, key: str) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir(root)
    return folder / f"{split}-{key}.npz"


def _load_cache(path: Path | None, n: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent, unreadable or not holding `n` images (then the
    split is decoded again and the cache rewritten)."""
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        warnings.warn(f"ignoring unreadable cache {path}: {err}", stacklevel=3)
        return None
    if arrays.get("images", np.zeros(0)).shape != (n, SIZE, SIZE):
        warnings.warn(f"ignoring inconsistent cache {path}", stacklevel=3)
        return None
    return arrays


def _write_cache(path: Path | None, arrays: dict[str, np.ndarray]) -> None:
    """Write the arrays to `path` atomically; failure to write is only a warning."""
    if path is None:
        return
    try:
        with atomic_write(path, "wb") as f:
            np.savez(f, **arrays)
    except OSError as err:
        warnings.warn(f"could not write cache {path}: {err}", stacklevel=3)


def _frozen(array: np.ndarray) -> np.ndarray:
    """Mark an array read-only: datasets are shared, so accidental in-place edits must fail."""
    array.flags.writeable = False
    return array
