"""The architecture presets: every network salt_jax builds is one entry of numbers here.

A `Preset` names an SE-ResNeXt encoder (`SENetConfig`, the arguments of Cadene's `SENet`) and the
UNet around it (`UNetConfig`), with the command-line aliases that select it and, when Cadene's
`pretrainedmodels` has ImageNet weights for the encoder, its constructor name and download URL.
Everything that needs an architecture reads it from here: `SENet` / `SaltUNet`, saving and
loading (`archs`), the converter's name maps and the PyTorch reference (convert/), `--encoder`.

    from salt_jax.models import presets
    presets.register(presets.Preset("mini", presets.SENetConfig(blocks=(1, 2, 1, 1)), presets.UNetConfig()))
    unet = SaltUNet("mini", rngs=nnx.Rngs(0))   # or SaltUNet(presets.get("mini"), ...)

This module holds data only and imports nothing of salt_jax (senet.py and unet.py read it).
"""

from __future__ import annotations

import dataclasses

EXPANSION = 4  # a bottleneck's output channels per plane (Cadene's SEResNeXtBottleneck.expansion)


@dataclasses.dataclass(frozen=True)
class SENetConfig:
    """The numbers that make an SE-ResNeXt (Cadene's `SENet` constructor arguments).

    blocks: bottlenecks in layer1..layer4. groups / base_width: the grouped 3x3's cardinality and
    width per group at 64 planes. stem_width: channels of layer0. planes: layer1..layer4's
    bottleneck planes (outputs are planes * EXPANSION). reduction: the squeeze-excitation ratio.
    """

    blocks: tuple[int, int, int, int]
    groups: int = 32
    base_width: int = 4
    stem_width: int = 64
    planes: tuple[int, int, int, int] = (64, 128, 256, 512)
    reduction: int = 16

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Output channels of layer1..layer4."""
        return tuple(p * EXPANSION for p in self.planes)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Widths of the non-encoder part of the UNet (defaults: the original's).

    center: center1/center2 and center_decode output channels.
    center_mid: center_decode's middle (conv) width.
    dec_mid: middle widths of dec5, dec4, dec3.
    dec_out: output channels of every decoder level (dec5..dec1).
    scse_reduction: scSE channel-squeeze ratio (hidden units = dec_out // scse_reduction >= 1).
    """

    center: int = 512
    center_mid: int = 768
    dec_mid: tuple[int, int, int] = (512, 256, 128)
    dec_out: int = 64
    scse_reduction: int = 16

    @property
    def hypercolumn_channels(self) -> int:
        """Five decoder levels plus the upsampled center."""
        return 5 * self.dec_out + self.center


@dataclasses.dataclass(frozen=True)
class Preset:
    """One architecture: the encoder's and the UNet's numbers, its names and its PyTorch weights.

    name: the canonical name (`--encoder`, run directories, saved `arch` strings).
    aliases: other names accepted wherever a preset is named (e.g. "50").
    cadene_name: the `pretrainedmodels` constructor of this SENet (None: Cadene has none).
    imagenet_url: Cadene's ImageNet weights for it (None: none published).
    """

    name: str
    senet: SENetConfig
    unet: UNetConfig = UNetConfig()
    aliases: tuple[str, ...] = ()
    cadene_name: str | None = None
    imagenet_url: str | None = None


class UnknownPresetError(ValueError):
    """A name that is no preset's name or alias; the message lists the known ones."""


_PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    """Adds `preset`; returns it. Raises ValueError if its name or an alias is already taken."""
    taken = set(_PRESETS) | {a for p in _PRESETS.values() for a in p.aliases}
    clashes = sorted({preset.name, *preset.aliases} & taken)
    if clashes:
        raise ValueError(f"preset {preset.name!r}: the name(s) {clashes} are already registered")
    _PRESETS[preset.name] = preset
    return preset


def get(name: str) -> Preset:
    """The preset called `name` (its name or one of its aliases)."""
    if name in _PRESETS:
        return _PRESETS[name]
    for preset in _PRESETS.values():
        if name in preset.aliases:
            return preset
    raise UnknownPresetError(f"unknown encoder {name!r}; known: {', '.join(choices())}")


def names() -> list[str]:
    """The canonical names, in registration order."""
    return list(_PRESETS)


def choices() -> list[str]:
    """Every accepted name, each preset's aliases after its name (for messages and --help)."""
    return [n for p in _PRESETS.values() for n in (p.name, *p.aliases)]


_CADENE = "http://data.lip6.fr/cadene/pretrainedmodels"

# SE-ResNeXt-50 / -101 (32x4d) with the original's UNet (docs/ORIGINAL.md, Model): the numbers
# are Cadene's senet.py defaults (SENetConfig's) and the original's widths (UNetConfig's).
register(Preset("se_resnext50_32x4d", SENetConfig(blocks=(3, 4, 6, 3)), aliases=("50",),
                cadene_name="se_resnext50_32x4d", imagenet_url=f"{_CADENE}/se_resnext50_32x4d-a260b3a4.pth"))
register(Preset("se_resnext101_32x4d", SENetConfig(blocks=(3, 4, 23, 3)), aliases=("101",),
                cadene_name="se_resnext101_32x4d", imagenet_url=f"{_CADENE}/se_resnext101_32x4d-3b2fe3d8.pth"))
# Same code, one block a stage and narrow widths (encoder stages 32/64/128/256, 4 scSE hidden
# units as in the full model): the UNet runs its stem and layer1 at full 128x128 resolution, so
# these widths set the CPU cost of the tests and the demo (docs/BENCHMARKS.md). No ImageNet
# weights. "se_resnext_tiny" is the arch name its ImageNet-style SENet checkpoints carry.
register(Preset(
    "tiny",
    SENetConfig(blocks=(1, 1, 1, 1), groups=4, base_width=16, stem_width=8, planes=(8, 16, 32, 64), reduction=8),
    UNetConfig(center=32, center_mid=48, dec_mid=(32, 16, 16), dec_out=8, scse_reduction=2),
    aliases=("se_resnext_tiny",),
))
