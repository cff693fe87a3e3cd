"""SaltUNet: the original's gated hypercolumn UNet on an SE-ResNeXt encoder (docs/ORIGINAL.md, Model).

Input x: (N, 128, 128, 3) float32 in [0, 1]. Output: (mask_logits (N, 128, 128, 1),
salt_prob (N, 1)), both float32. Shapes below are for the SE-ResNeXt widths (channels@side):

    encoder.layer0 (UNet stem): conv 7x7 s1 p3 -> BN -> ReLU (no max pool)   64@128
    encoder.layer1..layer4 (the SENet stages)            256@128, 512@64, 1024@32, 2048@16
    center1: conv3x3 (bias) -> BN -> ReLU -> maxpool 2                          512@8
    center2: conv3x3 -> BN -> ReLU                                               512@8
    center_decode: DecoderBlock(cat[center1, center2], mid 768)                  512@16
    dec5 = scse5(DecoderBlock(cat[center, layer4], mid 512))                      64@32
    dec4 = scse4(DecoderBlock(cat[dec5, layer3], mid 256))                        64@64
    dec3 = scse3(DecoderBlock(cat[dec4, layer2], mid 128))                        64@128
    dec2 = scse2(ConvBnRelu(cat[dec3, layer1]))                                   64@128
    dec1 = scse1(ConvBnRelu(cat[dec2, stem]))                                     64@128
    hypercolumn = cat[dec1, dec2, dec3, up2(dec4), up4(dec5), up8(center)]       832@128
    salt_prob = sigmoid(classifier(maxpool2(center2)))   conv 4x4 valid on 512@4 -> (N, 1)
    mask_logits = final(hypercolumn * salt_prob)          conv 1x1 -> 1@128

DecoderBlock = conv3x3 (bias) -> BN -> ReLU -> ConvTranspose(k4, s2, p1) -> ReLU. Upsampling is
bilinear with align_corners=False (torch `F.interpolate`), what `jax.image.resize` computes when
enlarging (`upsample_bilinear` computes it as per-phase blends). The gate is soft and not
detached, identical in train and eval.

Module names follow the original's state_dict where that reads well (`center1`, `dec5`,
`classifier`, `final`); the encoder keeps Cadene's names (`encoder.layer0.conv1`,
`encoder.layer1[0].se_module.fc1`) with `layer0` replaced by the stride-1 stem, and the
original's SE6..SE10 are `scse5..scse1` (numbered by the decoder level they follow).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from salt_jax.models import presets
from salt_jax.models.layers import BatchNorm, conv, conv_transpose, max_pool
from salt_jax.models.presets import Preset
from salt_jax.models.senet import SEModule, SENet

Array = jax.Array


class ConvBnRelu(nnx.Module):
    """conv3x3 p1 (bias) -> BN -> ReLU; the original's `ConvBnRelu` with `.conv` and `.bn`."""

    def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        self.conv = conv(in_features, out_features, 3, padding=1, use_bias=True, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm(out_features)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class DecoderBlock(nnx.Module):
    """ConvBnRelu(in -> mid) -> ConvTranspose(mid -> out, k4, s2, p1, bias) -> ReLU; doubles H, W.

    The transposed conv is torch's `ConvTranspose2d(k=4, s=2, p=1)` (`layers.conv_transpose`);
    kernel shape (4, 4, out, in).
    """

    def __init__(self, in_features: int, mid_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        self.conv = conv(in_features, mid_features, 3, padding=1, use_bias=True, dtype=dtype, rngs=rngs)
        self.bn = BatchNorm(mid_features)
        self.deconv = conv_transpose(mid_features, out_features, 4, stride=2, padding=1, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.deconv(jax.nn.relu(self.bn(self.conv(x)))))


class SpatialSE(nnx.Module):
    """sSE: x * sigmoid(conv1x1(x -> 1 channel, bias))."""

    def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
        self.conv = conv(channels, 1, 1, use_bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return x * jax.nn.sigmoid(self.conv(x))


class SCSE(nnx.Module):
    """Concurrent spatial and channel squeeze-excitation: cSE(x) + sSE(x) (a sum).

    cSE is the encoder's squeeze-excitation (the original's cSE.linear_1/linear_2 are our fc1/fc2).
    """

    def __init__(self, channels: int, reduction: int, *, dtype, rngs: nnx.Rngs):
        self.cse = SEModule(channels, reduction, dtype=dtype, rngs=rngs)
        self.sse = SpatialSE(channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.cse(x) + self.sse(x)


class UNetStem(nnx.Module):
    """The UNet's stem: conv 7x7 **stride 1** p3 (no bias) -> BN -> ReLU, no max pool.

    Named like Cadene's `layer0` (`conv1`, `bn1`) because it takes those ImageNet weights.
    """

    def __init__(self, width: int, *, dtype, rngs: nnx.Rngs):
        self.conv1 = conv(3, width, 7, stride=1, padding=3, dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm(width)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.bn1(self.conv1(x)))


def upsample_bilinear(x: Array, factor: int) -> Array:
    """Bilinear upsampling by an integer factor, torch `align_corners=False` semantics.

    Separable, and per axis each output phase p (pixel factor*i + p) is a fixed blend of input
    pixels i and i - 1 or i + 1: elementwise work that XLA fuses, with its adjoint written out.
    `jax.image.resize` computes the same with dense interpolation matrices, whose transposes made
    the x8 hypercolumn upsampling 2x slower on a CPU, forward and backward (docs/BENCHMARKS.md).
    """
    if factor == 1:
        return x
    return _upsample_axis(_upsample_axis(x, factor, 1), factor, 2)


def _phase_offsets(factor: int) -> list[float]:
    """Output pixel factor*i + p samples the input at i + d_p (align_corners=False)."""
    return [(2 * p + 1 - factor) / (2 * factor) for p in range(factor)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _upsample_axis(x: Array, factor: int, axis: int) -> Array:
    size = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    edge = jnp.pad(x, pad, mode="edge")  # torch clamps the source index to the map
    prev, mid, nxt = (jax.lax.slice_in_dim(edge, i, i + size, axis=axis) for i in range(3))
    phases = [(1 - abs(d)) * mid + abs(d) * (prev if d < 0 else nxt) for d in _phase_offsets(factor)]
    shape = list(x.shape)
    shape[axis] = size * factor
    return jnp.stack(phases, axis=axis + 1).reshape(shape)


def _upsample_axis_fwd(x, factor, axis):
    return _upsample_axis(x, factor, axis), None


def _upsample_axis_bwd(factor, axis, _, dy):
    """The adjoint: each phase's cotangent goes back to the pixels it read, in the edge-padded
    frame (prev = index i, mid = i + 1, next = i + 2), then the pad's two edges onto the map's."""
    shape = list(dy.shape)
    size = shape[axis] // factor
    g = dy.reshape(shape[:axis] + [size, factor] + shape[axis + 1:])
    phases = [jax.lax.index_in_dim(g, p, axis=axis + 1, keepdims=False) for p in range(factor)]
    offsets = _phase_offsets(factor)
    mid = sum((1 - abs(d)) * gp for d, gp in zip(offsets, phases))
    prev = sum(-d * gp for d, gp in zip(offsets, phases) if d < 0)
    nxt = sum(d * gp for d, gp in zip(offsets, phases) if d > 0)

    def pad(a, lo, hi):
        widths = [(0, 0)] * a.ndim
        widths[axis] = (lo, hi)
        return jnp.pad(a, widths)

    edge = pad(prev, 0, 2) + pad(mid, 1, 1) + pad(nxt, 2, 0)
    take = lambda lo, hi: jax.lax.slice_in_dim(edge, lo, hi, axis=axis)
    return (take(1, size + 1) + pad(take(0, 1), 0, size - 1) + pad(take(size + 1, size + 2), size - 1, 0),)


_upsample_axis.defvjp(_upsample_axis_fwd, _upsample_axis_bwd)


class SaltUNet(nnx.Module):
    """The original gated hypercolumn UNet (see the module docstring for the layout).

    Args:
      encoder: the architecture: a `presets.Preset`, or the name or alias of a registered one
        ("se_resnext50_32x4d" / "50", "se_resnext101_32x4d" / "101", "tiny").
      rngs: parameter initialisation.
      dtype: compute dtype (e.g. jnp.bfloat16); parameters and BatchNorm statistics stay
        float32 and both outputs are float32.
      grouped_impl: grouped-conv implementation, "blocks" | "taps" | "native" | "dense" | None (default).
    """

    def __init__(
        self,
        encoder: str | Preset = "se_resnext50_32x4d",
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        grouped_impl: str | None = None,
    ):
        preset = encoder if isinstance(encoder, Preset) else presets.get(encoder)
        enc_cfg, cfg = preset.senet, preset.unet
        self.dtype = dtype
        self.encoder = SENet(enc_cfg, num_classes=0, grouped_impl=grouped_impl, dtype=dtype, rngs=rngs)
        # The ImageNet stem (stride 2 + max pool) gives way to the full-resolution one.
        self.encoder.layer0 = UNetStem(enc_cfg.stem_width, dtype=dtype, rngs=rngs)
        c1, c2, c3, c4 = enc_cfg.stage_channels
        kw = dict(dtype=dtype, rngs=rngs)
        self.center1 = ConvBnRelu(c4, cfg.center, **kw)
        self.center2 = ConvBnRelu(cfg.center, cfg.center, **kw)
        self.center_decode = DecoderBlock(2 * cfg.center, cfg.center_mid, cfg.center, **kw)
        m5, m4, m3 = cfg.dec_mid
        out = cfg.dec_out
        self.dec5 = DecoderBlock(cfg.center + c4, m5, out, **kw)
        self.dec4 = DecoderBlock(out + c3, m4, out, **kw)
        self.dec3 = DecoderBlock(out + c2, m3, out, **kw)
        self.dec2 = ConvBnRelu(out + c1, out, **kw)
        self.dec1 = ConvBnRelu(out + enc_cfg.stem_width, out, **kw)
        self.scse5, self.scse4, self.scse3, self.scse2, self.scse1 = (
            SCSE(out, cfg.scse_reduction, **kw) for _ in range(5)
        )
        self.classifier = nnx.Conv(
            cfg.center, 1, kernel_size=(4, 4), padding="VALID", dtype=dtype, param_dtype=jnp.float32, rngs=rngs
        )
        self.final = conv(cfg.hypercolumn_channels, 1, 1, use_bias=True, **kw)

    def __call__(self, x: Array) -> tuple[Array, Array]:
        """x: (N, 128, 128, 3) in [0, 1] -> (mask_logits (N, 128, 128, 1), salt_prob (N, 1)), float32."""
        stem = self.encoder.layer0(x.astype(self.dtype))
        l1, l2, l3, l4 = self.encoder.stages(stem)

        center1 = max_pool(self.center1(l4), 2)
        center2 = self.center2(center1)
        center = self.center_decode(jnp.concatenate([center1, center2], axis=-1))

        d5 = self.scse5(self.dec5(jnp.concatenate([center, l4], axis=-1)))
        d4 = self.scse4(self.dec4(jnp.concatenate([d5, l3], axis=-1)))
        d3 = self.scse3(self.dec3(jnp.concatenate([d4, l2], axis=-1)))
        d2 = self.scse2(self.dec2(jnp.concatenate([d3, l1], axis=-1)))
        d1 = self.scse1(self.dec1(jnp.concatenate([d2, stem], axis=-1)))
        hypercolumn = jnp.concatenate(
            [d1, d2, d3, upsample_bilinear(d4, 2), upsample_bilinear(d5, 4), upsample_bilinear(center, 8)], axis=-1
        )

        # One logit per image from the 4x4 pooled center2 (valid 4x4 conv -> 1x1).
        salt_logit = self.classifier(max_pool(center2, 2)).reshape(x.shape[0], 1)
        salt_prob = jax.nn.sigmoid(salt_logit.astype(jnp.float32))
        gated = hypercolumn * salt_prob[:, None, None, :].astype(hypercolumn.dtype)
        mask_logits = self.final(gated).astype(jnp.float32)
        return mask_logits, salt_prob


def init_encoder_from_imagenet(unet: SaltUNet, senet: SENet) -> None:
    """Copies ImageNet SENet weights into `unet`'s encoder, in place, as the original does.

    layer1..layer4: every parameter and BatchNorm statistic. Stem: the 7x7 conv kernel (used at
    stride 1 here) and the BN scale/bias; the stem BN running statistics stay fresh (mean 0,
    var 1). `last_linear` is not used. Raises ValueError if the encoders' shapes differ.
    """
    enc = unet.encoder
    for i in range(1, 5):
        name = f"layer{i}"
        src, dst = nnx.state(getattr(senet, name)), nnx.state(getattr(enc, name))
        _check_same_shapes(src, dst, name)
        nnx.update(getattr(enc, name), src)
    src_stem, dst_stem = senet.layer0, enc.layer0
    pairs = [
        (src_stem.conv1.kernel, dst_stem.conv1.kernel, "layer0.conv1.kernel"),
        (src_stem.bn1.scale, dst_stem.bn1.scale, "layer0.bn1.scale"),
        (src_stem.bn1.bias, dst_stem.bn1.bias, "layer0.bn1.bias"),
    ]
    for src, dst, name in pairs:
        if src.shape != dst.shape:
            raise ValueError(f"ImageNet {name} has shape {src.shape}, the UNet expects {dst.shape}")
        dst[...] = src[...]
    dst_stem.bn1.mean[...] = jnp.zeros_like(dst_stem.bn1.mean[...])
    dst_stem.bn1.var[...] = jnp.ones_like(dst_stem.bn1.var[...])


def _check_same_shapes(src: nnx.State, dst: nnx.State, where: str) -> None:
    src_shapes = {path: v.shape for path, v in nnx.to_flat_state(src)}
    dst_shapes = {path: v.shape for path, v in nnx.to_flat_state(dst)}
    if src_shapes != dst_shapes:
        diff = sorted(set(src_shapes.items()) ^ set(dst_shapes.items()), key=str)[:4]
        raise ValueError(f"ImageNet encoder {where} does not fit the UNet's; first differences: {diff}")
