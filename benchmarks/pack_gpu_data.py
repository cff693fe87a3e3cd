"""Packs the real training data for a device call: .gpudata/tgs.tar (about 28 MB).

A device call carries at most 64 MiB with the repository and the wheels (.whl, ~24 MB), and the
competition's train/ folder is ~36 MB: its 3,600 images are RGB PNGs whose three channels are equal.
Our loader reads every image as `convert("L")` (salt_jax/data/kaggle.py), so each is re-encoded as
a one-channel PNG of exactly those pixels (checked image by image: any difference stops the
packing); masks, train.csv and depths.csv are copied unchanged. gpu_fold.sh unpacks the tar into
.data/tgs_salt on the device.

    python benchmarks/pack_gpu_data.py [DATA_DIR]     # default: $TGS_SALT_DIR or ../shared/tgs_salt
"""
import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(".gpudata/tgs.tar")


class PackError(Exception):
    """Bad input or a re-encoding that would change the data: one line, exit 2."""


def gray_png(path: Path) -> bytes:
    """The image as a one-channel PNG holding exactly the pixels the loader reads."""
    pixels = np.asarray(Image.open(path).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(pixels, "L").save(buf, format="PNG", optimize=True)
    if not np.array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L")), pixels):
        raise PackError(f"{path}: the one-channel PNG does not hold the same pixels")
    return buf.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def main(data: Path) -> None:
    if not (data / "train.csv").is_file():
        raise PackError(f"{data / 'train.csv'}: not found (give the competition's data folder)")
    OUT.parent.mkdir(exist_ok=True)
    tmp = OUT.with_suffix(".tmp")  # renamed into place only when complete
    try:
        with tarfile.open(tmp, "w") as tar:
            for name in ("train.csv", "depths.csv"):
                add(tar, f"tgs_salt/{name}", (data / name).read_bytes())
            for path in sorted((data / "train" / "masks").glob("*.png")):
                add(tar, f"tgs_salt/train/masks/{path.name}", path.read_bytes())
            for path in sorted((data / "train" / "images").glob("*.png")):
                add(tar, f"tgs_salt/train/images/{path.name}", gray_png(path))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(OUT)
    print(f"{OUT}: {OUT.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TGS_SALT_DIR", "../shared/tgs_salt")))
    except (PackError, OSError) as err:
        print(f"pack_gpu_data: {err}", file=sys.stderr)
        sys.exit(2)
