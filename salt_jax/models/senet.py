"""SE-ResNeXt encoders, the same network as Cadene's `pretrainedmodels` SENets.

Attribute names mirror the PyTorch state_dict (`layer0.conv1`, `layer1[0].se_module.fc1`,
`last_linear`, ...) so that the converter's name map reads as a list of identities.
Input is NHWC float32 in [0, 1] after ImageNet normalisation (for the classifier) or the
UNet's raw [0, 1] images; the output of `__call__` is float32 logits (N, num_classes).

Layout (SE-ResNeXt-50: blocks [3, 4, 6, 3]; -101: [3, 4, 23, 3]):
    layer0: conv 7x7 s2 p3 -> BN -> ReLU -> max pool 3 s2 (ceil mode)
    layer1..layer4: bottlenecks; planes 64/128/256/512, stride 1/2/2/2, output planes * 4
    global average pool -> last_linear
Bottleneck: 1x1 -> BN -> ReLU -> grouped 3x3 (stride) -> BN -> ReLU -> 1x1 -> BN
            -> SE (gates the branch before the add) -> + shortcut -> ReLU
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from salt_jax.models import presets
from salt_jax.models.layers import BatchNorm, GroupedConv, conv, max_pool_ceil
from salt_jax.models.presets import EXPANSION, SENetConfig

Array = jax.Array


class SEModule(nnx.Module):
    """Squeeze-and-excitation: x * sigmoid(fc2(relu(fc1(mean_hw(x))))).

    Cadene's fc1/fc2 are 1x1 convs with bias on the pooled map, i.e. dense layers.
    """

    def __init__(self, channels: int, reduction: int, *, dtype, rngs: nnx.Rngs):
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"squeeze-excitation on {channels} channels with reduction {reduction} has no hidden unit")
        self.fc1 = nnx.Linear(channels, hidden, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, channels, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        s = jnp.mean(x, axis=(1, 2), dtype=jnp.float32).astype(x.dtype)
        s = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(s))))
        return x * s[:, None, None, :]


class Downsample(nnx.Module):
    """The shortcut projection: strided 1x1 conv + BN (Cadene's `downsample.0`, `downsample.1`)."""

    def __init__(self, in_features: int, out_features: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.conv = conv(in_features, out_features, 1, stride=stride, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm(out_features)

    def __call__(self, x: Array) -> Array:
        return self.bn(self.conv(x))


class Bottleneck(nnx.Module):
    """`SEResNeXtBottleneck`: the stride sits on the grouped 3x3, SE before the residual add."""

    def __init__(
        self,
        in_features: int,
        planes: int,
        stride: int,
        cfg: SENetConfig,
        *,
        grouped_impl: str | None,
        dtype,
        rngs: nnx.Rngs,
    ):
        width = (planes * cfg.base_width // 64) * cfg.groups
        out = planes * EXPANSION
        self.conv1 = conv(in_features, width, 1, dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm(width)
        self.conv2 = GroupedConv(
            width, width, 3, stride=stride, padding=1, groups=cfg.groups, impl=grouped_impl, dtype=dtype, rngs=rngs
        )
        self.bn2 = BatchNorm(width)
        self.conv3 = conv(width, out, 1, dtype=dtype, rngs=rngs)
        self.bn3 = BatchNorm(out)
        self.se_module = SEModule(out, cfg.reduction, dtype=dtype, rngs=rngs)
        needs_projection = stride != 1 or in_features != out
        self.downsample = Downsample(in_features, out, stride, dtype=dtype, rngs=rngs) if needs_projection else None

    def __call__(self, x: Array) -> Array:
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = jax.nn.relu(self.bn2(self.conv2(h)))
        h = self.se_module(self.bn3(self.conv3(h)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(h + shortcut)


class Stem(nnx.Module):
    """Cadene's `layer0`: conv 7x7 s2 p3 (no bias) -> BN -> ReLU -> MaxPool(3, 2, ceil_mode)."""

    def __init__(self, width: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = conv(3, width, 7, stride=2, padding=3, dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm(width)

    def __call__(self, x: Array) -> Array:
        return max_pool_ceil(jax.nn.relu(self.bn1(self.conv1(x))), 3, 2)


def _make_stage(in_features, planes, n_blocks, stride, cfg, *, grouped_impl, dtype, rngs) -> nnx.List:
    blocks = []
    for i in range(n_blocks):
        blocks.append(
            Bottleneck(
                in_features, planes, stride if i == 0 else 1, cfg, grouped_impl=grouped_impl, dtype=dtype, rngs=rngs
            )
        )
        in_features = planes * EXPANSION
    return nnx.List(blocks)


class SENet(nnx.Module):
    """An SE-ResNeXt classifier. `stages()` exposes layer1..layer4 for the UNet.

    Args:
      cfg: the architecture numbers (a preset's `senet`, see presets.py).
      num_classes: size of `last_linear`; 0 drops the classifier (encoder only).
      grouped_impl: "blocks" | "taps" | "native" | "dense" | None (the default, see layers.py).
      dtype: compute dtype; parameters and BatchNorm statistics stay float32.
    """

    def __init__(
        self,
        cfg: SENetConfig,
        num_classes: int = 1000,
        *,
        grouped_impl: str | None = None,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.cfg = cfg
        self.dtype = dtype
        self.layer0 = Stem(cfg.stem_width, dtype=dtype, rngs=rngs)
        in_features = cfg.stem_width
        strides = (1, 2, 2, 2)
        for i, (planes, n, stride) in enumerate(zip(cfg.planes, cfg.blocks, strides), start=1):
            stage = _make_stage(in_features, planes, n, stride, cfg, grouped_impl=grouped_impl, dtype=dtype, rngs=rngs)
            setattr(self, f"layer{i}", stage)
            in_features = planes * EXPANSION
        self.last_linear = (
            nnx.Linear(in_features, num_classes, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
            if num_classes
            else None
        )

    def stages(self, h: Array) -> tuple[Array, Array, Array, Array]:
        """Runs layer1..layer4 on a stem output; returns the four stage outputs."""
        outs = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                h = block(h)
            outs.append(h)
        return tuple(outs)

    def __call__(self, x: Array) -> Array:
        if self.last_linear is None:
            raise ValueError("this SENet was built with num_classes=0 (encoder only); use stages()")
        h = self.layer0(x.astype(self.dtype))
        *_, h = self.stages(h)
        # Global average pool: equal to Cadene's AvgPool2d(7) at 224x224, defined at any size.
        pooled = jnp.mean(h, axis=(1, 2), dtype=jnp.float32).astype(self.dtype)
        return self.last_linear(pooled).astype(jnp.float32)


def se_resnext50_32x4d(num_classes: int = 1000, *, rngs: nnx.Rngs, **kwargs) -> SENet:
    """SE-ResNeXt-50 (32x4d): 27,559,896 parameters with the 1000-class head."""
    return SENet(presets.get("se_resnext50_32x4d").senet, num_classes, rngs=rngs, **kwargs)


def se_resnext101_32x4d(num_classes: int = 1000, *, rngs: nnx.Rngs, **kwargs) -> SENet:
    """SE-ResNeXt-101 (32x4d)."""
    return SENet(presets.get("se_resnext101_32x4d").senet, num_classes, rngs=rngs, **kwargs)


def se_resnext_tiny(num_classes: int = 1000, *, rngs: nnx.Rngs, **kwargs) -> SENet:
    """The tiny variant (same code, fewer and narrower blocks) for tests and the CPU demo."""
    return SENet(presets.get("tiny").senet, num_classes, rngs=rngs, **kwargs)
