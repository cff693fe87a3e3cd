"""Finds cached ImageNet SE-ResNeXt weights on this machine and converts the first usable file.

    python benchmarks/find_imagenet_weights.py --encoder 50 --out runs/imagenet

The original fine-tuned from Cadene's ImageNet weights (pretrainedmodels' se_resnext50_32x4d,
torch_training/main_albunet_gated.py). The GPU machines cannot download them, so the real fold
starts from them only if some cache there already holds them: torch hub's checkpoints, the
Hugging Face or timm caches, or any file whose path names se_resnext/seresnext of that depth.
Every candidate and the fate of each goes to stderr; each is tried with convert.torch_to_flax,
which is strict, so a file in another layout (timm's ResNet-style `seresnext50_32x4d`, say) is
refused and reported, never half-loaded. stdout gets the converted checkpoint directory, or
nothing when no file was usable (then the fold trains from a random encoder and says so).
A directory converted before (on a still-warm machine) is reused.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

from salt_jax.models.store import METADATA

SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
# Never worth walking: kernel and device trees, and the repository (it holds our own outputs).
PRUNE = ("/proc", "/sys", "/dev", "/run")


def say(message: str) -> None:
    print(f"find_imagenet_weights: {message}", file=sys.stderr, flush=True)


def candidates(encoder: str, time_limit_s: float) -> list[pathlib.Path]:
    """Weight files whose path names SE-ResNeXt-`encoder`, the caches first, then the whole disk."""
    home = pathlib.Path.home()
    roots = [os.environ.get("TORCH_HOME"), os.environ.get("HF_HOME"), os.environ.get("XDG_CACHE_HOME"),
             home / ".cache", "/root/.cache", "/"]
    repo = pathlib.Path.cwd().resolve()
    names = (f"se_resnext{encoder}", f"seresnext{encoder}")
    found: list[pathlib.Path] = []
    deadline = time.monotonic() + time_limit_s
    for root in dict.fromkeys(str(r) for r in roots if r):
        for top, dirs, files in os.walk(root):
            if time.monotonic() > deadline:
                say(f"search stopped after {time_limit_s:.0f} s (in {top})")
                return found
            dirs[:] = [d for d in dirs if os.path.join(top, d) not in PRUNE and pathlib.Path(top, d) != repo]
            for name in files:
                path = pathlib.Path(top, name)
                if path.suffix in SUFFIXES and any(n in str(path).lower() for n in names) and path not in found:
                    found.append(path)
    return found


def as_torch_file(path: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
    """`path` itself, or for .safetensors (the Hugging Face / timm format) a torch copy of it."""
    if path.suffix != ".safetensors":
        return path
    import torch
    from safetensors.torch import load_file

    copy = tmp / (path.stem + ".pth")
    torch.save(load_file(str(path)), copy)
    return copy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="50", choices=["50", "101"])
    p.add_argument("--out", default="runs/imagenet", help="folder for the converted checkpoint")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds the search may take")
    args = p.parse_args(argv)
    arch = f"se_resnext{args.encoder}_32x4d"
    out = pathlib.Path(args.out) / arch
    if (out / METADATA).is_file():  # written last by store.save: the conversion finished
        say(f"reusing {out}, converted earlier on this machine")
        print(out)
        return 0
    searched = pathlib.Path(args.out) / f"{arch}.none"  # a search that found nothing, on this machine
    if searched.is_file():
        say(f"none usable ({searched} from an earlier search on this machine; delete it to search again)")
        return 0
    found = candidates(args.encoder, args.time_limit)
    say(f"{len(found)} candidate file(s) for {arch}" + "".join(f"\n  {f}" for f in found))
    from convert.torch_to_flax import ConversionError, convert_file

    with tempfile.TemporaryDirectory() as tmp:
        for path in found:
            try:
                summary = convert_file(arch, as_torch_file(path, pathlib.Path(tmp)), out)
            except (ConversionError, OSError, ImportError, ValueError) as err:
                say(f"not usable: {path}: {str(err)[:300]}")
                continue
            say(f"converted {path} ({summary['tensors']} tensors, sha256 {summary['sha256'][:16]}...) -> {out}")
            print(out)
            return 0
    say(f"no usable ImageNet weights for {arch}: the encoder will start from random weights")
    searched.parent.mkdir(parents=True, exist_ok=True)
    searched.write_text("".join(f"{f}\n" for f in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
