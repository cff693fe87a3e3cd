"""PyTorch state_dict -> salt_jax checkpoint, through declarative name maps.

    python -m convert.torch_to_flax --arch se_resnext50_32x4d [--weights FILE.pth] --out DIR

A name map is a function of the architecture that yields one `Entry(flax_path, torch_key,
transform)` per tensor, so it reads as a table (print it with `--print-map`). The maps are
generic over a preset's numbers (salt_jax/models/presets.py): `senet_name_map` for an ImageNet
SENet in Cadene's layout, `unet_name_map` for the original's UNet, both composed of the helpers
below (`conv`, `batchnorm`, `linear`, `bottleneck`, `senet_stages` with prefixes); `converter(arch)`
picks one, so every registered preset converts with no entry here.

Conversion is strict: each Flax state leaf must be filled exactly once from a torch tensor
of the right shape, and each torch tensor (except BatchNorm's `num_batches_tracked`
counters) must be used. Anything else is a `ConversionError` that lists every offending
key, grouped as missing / unexpected / shape mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import warnings
import hashlib
import pathlib
import sys
import urllib.error
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from salt_jax.errors import UserError
from salt_jax.models import archs
from salt_jax.models.presets import EXPANSION, SENetConfig

FlaxPath = tuple[str | int, ...]


class ConversionError(ValueError):
    """The torch checkpoint does not match the Flax model (or is not a state_dict)."""


class Entry(NamedTuple):
    """One row of a name map: Flax state path <- transform(torch tensor)."""

    flax_path: FlaxPath
    torch_key: str
    transform: str


# Each transform turns a torch tensor (as numpy) into the Flax layout.
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda w: w.transpose(2, 3, 1, 0),  # OIHW -> HWIO
    "linear": lambda w: w.T,  # (out, in) -> (in, out)
    "conv1x1_as_linear": lambda w: w[:, :, 0, 0].T,  # (out, in, 1, 1) -> (in, out)
    "copy": lambda w: w,  # biases, BatchNorm vectors
}

# ---------------------------------------------------------------- name-map building blocks


def conv(flax: FlaxPath, torch: str, *, bias: bool = False) -> Iterator[Entry]:
    """A Conv2d: weight -> kernel (OIHW -> HWIO), bias -> bias."""
    yield Entry((*flax, "kernel"), f"{torch}.weight", "conv")
    if bias:
        yield Entry((*flax, "bias"), f"{torch}.bias", "copy")


def batchnorm(flax: FlaxPath, torch: str) -> Iterator[Entry]:
    """A BatchNorm2d: weight -> scale, bias, running_mean -> mean, running_var -> var."""
    for flax_name, torch_name in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"), ("var", "running_var")):
        yield Entry((*flax, flax_name), f"{torch}.{torch_name}", "copy")


def linear(flax: FlaxPath, torch: str, *, as_conv1x1: bool = False) -> Iterator[Entry]:
    """An nnx.Linear from torch Linear (out, in) or from a 1x1 Conv2d with bias (out, in, 1, 1)."""
    yield Entry((*flax, "kernel"), f"{torch}.weight", "conv1x1_as_linear" if as_conv1x1 else "linear")
    yield Entry((*flax, "bias"), f"{torch}.bias", "copy")


def bottleneck(flax: FlaxPath, torch: str, *, downsample: bool) -> Iterator[Entry]:
    """Cadene's SEResNeXtBottleneck; our `downsample.conv/bn` are torch's `downsample.0/1`."""
    for i in (1, 2, 3):
        yield from conv((*flax, f"conv{i}"), f"{torch}.conv{i}")
        yield from batchnorm((*flax, f"bn{i}"), f"{torch}.bn{i}")
    yield from linear((*flax, "se_module", "fc1"), f"{torch}.se_module.fc1", as_conv1x1=True)
    yield from linear((*flax, "se_module", "fc2"), f"{torch}.se_module.fc2", as_conv1x1=True)
    if downsample:
        yield from conv((*flax, "downsample", "conv"), f"{torch}.downsample.0")
        yield from batchnorm((*flax, "downsample", "bn"), f"{torch}.downsample.1")


def senet_stages(
    cfg: SENetConfig,
    *,
    flax_prefix: FlaxPath = (),
    torch_stages: tuple[str, str, str, str] = ("layer1", "layer2", "layer3", "layer4"),
) -> Iterator[Entry]:
    """layer1..layer4 of an SE-ResNeXt; the UNet passes its own prefixes (e.g. conv2..conv5)."""
    in_features = cfg.stem_width
    for stage, (torch_stage, planes, n_blocks) in enumerate(zip(torch_stages, cfg.planes, cfg.blocks), start=1):
        for i in range(n_blocks):
            # Same rule as senet.Bottleneck: project when the stride or the width changes.
            stride = 2 if (stage > 1 and i == 0) else 1
            needs_projection = stride != 1 or in_features != planes * EXPANSION
            yield from bottleneck((*flax_prefix, f"layer{stage}", i), f"{torch_stage}.{i}", downsample=needs_projection)
            in_features = planes * EXPANSION


def senet_name_map(cfg: SENetConfig) -> Iterator[Entry]:
    """The full Cadene SENet classifier: stem (layer0), layer1..layer4, last_linear."""
    yield from conv(("layer0", "conv1"), "layer0.conv1")
    yield from batchnorm(("layer0", "bn1"), "layer0.bn1")
    yield from senet_stages(cfg)
    yield from linear(("last_linear",), "last_linear")


# ---------------------------------------------------------------- the original UNet
# Torch side: convert/torch_unet.py (the original's state_dict keys); Flax side:
# salt_jax/models/unet.py. The stem conv_in/bn_in sits in the encoder as layer0.conv1/bn1.


def decoder_block(flax: FlaxPath, torch: str) -> Iterator[Entry]:
    """ConvBnRelu (block.0) -> ConvTranspose2d (block.1, (in, out, kh, kw) -> (kh, kw, out, in))."""
    yield from conv((*flax, "conv"), f"{torch}.block.0.conv", bias=True)
    yield from batchnorm((*flax, "bn"), f"{torch}.block.0.bn")
    yield from conv((*flax, "deconv"), f"{torch}.block.1", bias=True)


def scse(flax: FlaxPath, torch: str) -> Iterator[Entry]:
    """cSE.linear_1/linear_2 (nn.Linear; our SEModule's fc1/fc2) and sSE.conv (1x1 Conv2d with bias)."""
    yield from linear((*flax, "cse", "fc1"), f"{torch}.cSE.linear_1")
    yield from linear((*flax, "cse", "fc2"), f"{torch}.cSE.linear_2")
    yield from conv((*flax, "sse", "conv"), f"{torch}.sSE.conv", bias=True)


def unet_name_map(cfg: SENetConfig) -> Iterator[Entry]:
    """The original UNet: conv_in/bn_in, conv2..conv5 = layer1..layer4, center, decoder, heads."""
    yield from conv(("encoder", "layer0", "conv1"), "conv_in")
    yield from batchnorm(("encoder", "layer0", "bn1"), "bn_in")
    yield from senet_stages(cfg, flax_prefix=("encoder",), torch_stages=("conv2", "conv3", "conv4", "conv5"))
    for name in ("center1", "center2"):
        yield from conv((name, "conv"), f"{name}.0", bias=True)
        yield from batchnorm((name, "bn"), f"{name}.1")
    for name in ("center_decode", "dec5", "dec4", "dec3"):
        yield from decoder_block((name,), name)
    for name in ("dec2", "dec1"):
        yield from conv((name, "conv"), f"{name}.conv", bias=True)
        yield from batchnorm((name, "bn"), f"{name}.bn")
    # The original numbers its scSE modules SE6..SE10 from dec5 down to dec1.
    for level, torch_name in zip((5, 4, 3, 2, 1), ("SE6", "SE7", "SE8", "SE9", "SE10")):
        yield from scse((f"scse{level}",), torch_name)
    yield from conv(("classifier",), "classifier", bias=True)
    yield from conv(("final",), "final", bias=True)


def unet_prepare(torch_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Checks the aliases of the original's state_dict and drops what has no Flax counterpart.

    conv1.0.* / conv1.1.* are conv_in / bn_in listed a second time (a Sequential sharing those
    modules): they must be identical, else the file was edited and we refuse to guess.
    SE11.* is a module the original builds but never calls: dropped with a warning.
    """
    aliases = {"conv1.0.": "conv_in.", "conv1.1.": "bn_in."}
    differing = []
    for key, value in torch_state.items():
        for alias, target in aliases.items():
            if key.startswith(alias):
                original = torch_state.get(target + key.removeprefix(alias))
                if original is None or not np.array_equal(original, value):
                    differing.append(f"{key} != {target + key.removeprefix(alias)}")
    if differing:
        raise ConversionError("the UNet's duplicated stem tensors differ (or lack their originals): " + ", ".join(differing))
    unused = sorted(k for k in torch_state if k.startswith("SE11."))
    if unused:
        warnings.warn(f"ignoring {len(unused)} tensors of SE11 (built but never used by the original UNet)", stacklevel=2)
    return {k: v for k, v in torch_state.items() if not k.startswith(("conv1.", "SE11."))}


# ---------------------------------------------------------------- per arch


@dataclasses.dataclass(frozen=True)
class Converter:
    """How to convert one arch: its saved-model arch name, name map and default weights."""

    arch: str
    name_map: Callable[[], Iterator[Entry]]
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    url: str | None = None  # official weights, downloaded when --weights is not given
    # Checks and drops torch keys that carry no tensor of their own (the UNet's aliases).
    prepare: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None


def converter(arch: str) -> Converter:
    """The converter of `arch` (salt_jax.models.archs): an ImageNet SENet in Cadene's layout (its
    preset's ImageNet weights by default), or the original's trained UNet (model-<fold>.pt; no
    public download). Raises archs.UnknownArchError."""
    parsed = archs.parse(arch)
    cfg = parsed.preset.senet
    if parsed.kind == "senet":
        return Converter(parsed.name, lambda: senet_name_map(cfg), {"num_classes": 1000}, parsed.preset.imagenet_url)
    return Converter(parsed.name, lambda: unet_name_map(cfg), prepare=unet_prepare)


# ---------------------------------------------------------------- reading torch checkpoints


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The float tensors of a torch checkpoint as numpy arrays.

    Accepts a plain state_dict, one wrapped as {"state_dict": ...}, and DataParallel keys
    ("module." prefix). Loads with weights_only=True: no code in the file is run.

    Raises:
      ConversionError: the file cannot be read, does not hold a state_dict, or holds
        half-precision tensors (float16/bfloat16: the float32 model would silently carry
        their rounding) or NaN/infinite values.
    """
    import torch

    path = pathlib.Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean the same here
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ConversionError(
            f"{path}: expected a state_dict (a dict of parameter name -> tensor), got {type(obj).__name__}"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    half = sorted(k for k, v in obj.items() if v.dtype in (torch.float16, torch.bfloat16))
    if half:
        raise ConversionError(f"{path}: {len(half)} tensor(s) in half precision ({half[0]}: {obj[half[0]].dtype}); "
                              f"convert the float32 original")
    bad = sorted(k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ConversionError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:3])})")
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}


def download_weights(url: str) -> pathlib.Path:
    """Downloads `url` once into torch's hub cache and returns the local file.

    Raises:
      ConversionError: offline or unreachable (says how to proceed without network).
    """
    import torch.hub

    target = pathlib.Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=sys.stderr.isatty())
    except (urllib.error.URLError, OSError) as err:
        raise ConversionError(
            f"could not download {url} ({err}). Without network, download that file on another "
            f"machine, copy it here and pass it with --weights FILE.pth (or place it at {target})."
        ) from err
    return target


# ---------------------------------------------------------------- conversion


def convert_state(arch: str, torch_state: dict[str, np.ndarray]):
    """Builds the Flax model of `arch` with its state taken from `torch_state`.

    Returns the module (eval mode). Raises ConversionError listing every missing, unexpected
    and mis-shaped key.
    """
    spec = converter(arch)
    if spec.prepare is not None:
        torch_state = spec.prepare(torch_state)
    model = archs.build(spec.arch, spec.model_kwargs, abstract=True)
    graphdef, abstract_state = nnx.split(model)
    target = traverse_util.flatten_dict(nnx.to_pure_dict(abstract_state))  # {flax path: leaf}

    entries = list(spec.name_map())
    filled, missing, mismatched = {}, [], []
    for entry in entries:
        if entry.flax_path not in target:
            raise KeyError(f"name map names {_dotted(entry.flax_path)}, which the Flax model does not have")
        leaf = target[entry.flax_path]
        if entry.torch_key not in torch_state:
            missing.append(f"{entry.torch_key} (for {_dotted(entry.flax_path)})")
            continue
        value = TRANSFORMS[entry.transform](torch_state[entry.torch_key])
        if value.shape != leaf.shape:
            mismatched.append(
                f"{entry.torch_key}: torch {torch_state[entry.torch_key].shape} -> {value.shape} "
                f"after {entry.transform!r}, but {_dotted(entry.flax_path)} is {leaf.shape}"
            )
            continue
        # A device array, not numpy: a jitted call copies numpy arguments to the device on every
        # call (the SE-ResNeXt-50 UNet's forward took 0.97 s with numpy weights, 0.78 s without).
        filled[entry.flax_path] = jnp.asarray(value, leaf.dtype)

    used = {e.torch_key for e in entries}
    unexpected = sorted(k for k in torch_state if k not in used and not k.endswith("num_batches_tracked"))
    mapped = {e.flax_path for e in entries}
    unmapped = [_dotted(p) for p in target if p not in mapped]
    if missing or unexpected or mismatched or unmapped:
        raise ConversionError(_report(arch, missing, unexpected, mismatched, unmapped))

    nnx.replace_by_pure_dict(abstract_state, traverse_util.unflatten_dict(filled))
    model = nnx.merge(graphdef, abstract_state)
    model.eval()
    return model


def _report(arch: str, missing, unexpected, mismatched, unmapped) -> str:
    lines = [f"the checkpoint does not match {arch}:"]
    for title, keys in (
        ("missing from the checkpoint", missing),
        ("unexpected in the checkpoint", unexpected),
        ("shape mismatch", mismatched),
        ("Flax state not covered by the name map (a converter bug)", unmapped),
    ):
        if keys:
            lines.append(f"  {title} ({len(keys)}):")
            lines.extend(f"    {k}" for k in keys)
    return "\n".join(lines)


def _dotted(path: FlaxPath) -> str:
    return ".".join(str(k) for k in path)


# ---------------------------------------------------------------- CLI


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_file(arch: str, weights: pathlib.Path | None, out: pathlib.Path) -> dict[str, Any]:
    """Converts `weights` (or the downloaded official file) for `arch` and saves it to `out`.

    Returns the summary that the CLI prints.
    """
    import flax
    import jax

    import salt_jax
    from salt_jax.models import store

    spec = converter(arch)
    store.check_target(out)  # refuse to replace a user's files before any download or conversion
    if weights is None:
        if spec.url is None:
            raise ConversionError(f"{arch} has no official weights; pass --weights FILE.pth")
        weights = download_weights(spec.url)
    torch_state = read_state_dict(weights)
    model = convert_state(arch, torch_state)
    digest = sha256(weights)
    metadata = {
        "source_file": str(pathlib.Path(weights).absolute()),
        "source_sha256": digest,
        "converted_by": "convert.torch_to_flax",
        "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "salt_jax_version": salt_jax.__version__,
        "jax_version": jax.__version__,
        "flax_version": flax.__version__,
    }
    store.save(out, model, arch=spec.arch, model_kwargs=spec.model_kwargs, metadata=metadata)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    return {"arch": arch, "tensors": len(torch_state), "params": n_params, "sha256": digest, "out": str(out)}


def _arch(value: str) -> str:
    try:
        return archs.parse(value).name
    except archs.UnknownArchError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert.torch_to_flax", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, type=_arch, help="one of " + ", ".join(archs.known()))
    parser.add_argument("--weights", type=pathlib.Path, help="a torch state_dict (.pth); default: download")
    parser.add_argument("--out", type=pathlib.Path, help="output checkpoint directory")
    parser.add_argument("--print-map", action="store_true", help="print the name map as a table and exit")
    args = parser.parse_args(argv)
    if args.print_map:
        for e in converter(args.arch).name_map():
            print(f"{_dotted(e.flax_path):55s} <- {e.torch_key:50s} [{e.transform}]")
        return 0
    if args.out is None:
        parser.error("--out is required")
    try:
        summary = convert_file(args.arch, args.weights, args.out)
    except (ConversionError, UserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"converted {summary['arch']}: {summary['tensors']} torch tensors, {summary['params']:,} parameters, "
        f"source sha256 {summary['sha256'][:16]}..., written to {summary['out']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
