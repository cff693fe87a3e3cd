"""Architecture names, as saved models record them, and building the module one names.

An arch is a kind of network on a preset (presets.py): "<preset>" is the SE-ResNeXt classifier
(`SENet`, e.g. converted ImageNet weights) and "unet_<preset>" the `SaltUNet`. Any of a preset's
names works, so the arch strings that existing checkpoints carry ("se_resnext50_32x4d",
"se_resnext_tiny", "unet_se_resnext101_32x4d", "unet_tiny") name the same architectures as
before, and a newly registered preset is saved, loaded and converted with no other change.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from flax import nnx

from salt_jax.models import presets
from salt_jax.models.initialize import init_module
from salt_jax.models.presets import Preset
from salt_jax.models.senet import SENet
from salt_jax.models.unet import SaltUNet

UNET_PREFIX = "unet_"


class UnknownArchError(ValueError):
    """An arch string that names no registered preset."""


@dataclasses.dataclass(frozen=True)
class Arch:
    """A parsed arch: the kind of network and its preset."""

    kind: Literal["senet", "unet"]
    preset: Preset

    @property
    def name(self) -> str:
        """The canonical arch string (the preset's own name, not an alias)."""
        return self.preset.name if self.kind == "senet" else UNET_PREFIX + self.preset.name


def parse(arch: str) -> Arch:
    """The kind and preset `arch` names. Raises UnknownArchError listing the known archs."""
    kind, name = ("unet", arch.removeprefix(UNET_PREFIX)) if arch.startswith(UNET_PREFIX) else ("senet", arch)
    try:
        return Arch(kind, presets.get(name))
    except presets.UnknownPresetError:
        raise UnknownArchError(f"unknown arch {arch!r}; known: {', '.join(known())}") from None


def known() -> list[str]:
    """Every canonical arch string: each preset's SENet and UNet."""
    return [Arch(kind, presets.get(name)).name for name in presets.names() for kind in ("senet", "unet")]


def is_a(arch: str, kind: Literal["senet", "unet"], preset: str) -> bool:
    """Whether `arch` names the `kind` network of the preset called `preset` (under any of its names)."""
    try:
        return parse(arch) == Arch(kind, presets.get(preset))
    except ValueError:
        return False


def build(arch: str, model_kwargs: dict[str, Any] | None = None, *, abstract: bool = False, seed: int = 0,
          **overrides) -> nnx.Module:
    """Builds the module `arch` names: random init from `seed` with PyTorch's initialisers
    (host-side, see initialize.py); `abstract=True`: shapes only, no memory.

    `model_kwargs` and `overrides` go to the constructor (`num_classes` for a SENet; `dtype`,
    `grouped_impl` for both).
    """
    parsed = parse(arch)
    kwargs = {**(model_kwargs or {}), **overrides}

    def make(rngs: nnx.Rngs) -> nnx.Module:
        if parsed.kind == "unet":
            return SaltUNet(parsed.preset, rngs=rngs, **kwargs)
        return SENet(parsed.preset.senet, rngs=rngs, **kwargs)

    return nnx.eval_shape(lambda: make(nnx.Rngs(seed))) if abstract else init_module(make, seed=seed)
