"""SaltUNet: layer semantics vs torch, the gate, bf16, train-mode BatchNorm, ImageNet encoder init.

Whole-model parity with the original layout is in test_unet_convert.py.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.torch_reference import optional_torch_reference

torch, reference, needs_torch = optional_torch_reference()

from convert.torch_to_flax import convert_state  # noqa: E402
from salt_jax import models  # noqa: E402
from salt_jax.models import archs  # noqa: E402
from salt_jax.models.unet import DecoderBlock, init_encoder_from_imagenet, upsample_bilinear  # noqa: E402

if torch is not None:
    from convert.torch_unet import TorchSaltUNet

pytestmark = pytest.mark.timeout(300)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    """Returns the outputs and the state after the call (train mode updates BatchNorm)."""
    model = nnx.merge(graphdef, state)
    return model(x), nnx.state(model)


def forward(model: nnx.Module, x) -> tuple[tuple[np.ndarray, np.ndarray], nnx.State]:
    graphdef, state = nnx.split(model)
    (logits, prob), new_state = _forward(graphdef, state, jnp.asarray(x))
    return (np.asarray(logits), np.asarray(prob)), new_state


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 128, 128, 3), dtype=np.float32)


def torch_tiny_unet(seed: int = 0) -> TorchSaltUNet:
    torch.manual_seed(seed)
    model = TorchSaltUNet("tiny")
    reference.randomize_batchnorm(model, seed)
    return model


def state_dict_np(model) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny() -> models.SaltUNet:
    """A random tiny SaltUNet in eval mode, by conversion: eager NNX initialisation compiles
    one initializer per parameter shape, which takes minutes on a busy 2-core CPU."""
    return convert_state("unet_tiny", state_dict_np(torch_tiny_unet()))


@needs_torch
def test_transposed_conv_is_torch_conv_transpose2d_k4_s2_p1():
    block = DecoderBlock(4, 3, 5, dtype=jnp.float32, rngs=nnx.Rngs(0))
    t_deconv = torch.nn.ConvTranspose2d(3, 5, kernel_size=4, stride=2, padding=1)
    with torch.no_grad():
        # torch (in, out, kh, kw) -> (kh, kw, out, in): the layout of transpose_kernel=True.
        block.deconv.kernel[...] = jnp.asarray(t_deconv.weight.numpy().transpose(2, 3, 1, 0))
        block.deconv.bias[...] = jnp.asarray(t_deconv.bias.numpy())
        x = np.random.default_rng(0).standard_normal((2, 6, 7, 3)).astype(np.float32)
        expected = t_deconv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    got = np.asarray(block.deconv(jnp.asarray(x)))
    assert got.shape == (2, 12, 14, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@needs_torch
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_upsampling_is_torch_bilinear_align_corners_false(factor):
    x = np.random.default_rng(factor).standard_normal((2, 4, 5, 3)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(x.transpose(0, 3, 1, 2)), scale_factor=factor, mode="bilinear", align_corners=False
    )
    got = np.asarray(upsample_bilinear(jnp.asarray(x), factor))
    np.testing.assert_allclose(got, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


@needs_torch
@pytest.mark.parametrize("factor,size", [(2, (4, 5)), (4, (1, 3)), (8, (3, 2))])
def test_upsampling_gradient_is_torch_autograd(factor, size):
    """The hand-written adjoint against torch's autograd in float64 (a 1-pixel side included:
    both its neighbours are the edge). float32 sums of at most 2 * factor terms: 1e-5."""
    rng = np.random.default_rng(factor)
    x = rng.standard_normal((2, *size, 3)).astype(np.float32)
    dy = rng.standard_normal((2, size[0] * factor, size[1] * factor, 3)).astype(np.float32)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.interpolate(xt, scale_factor=factor, mode="bilinear", align_corners=False)
    y.backward(torch.tensor(dy.transpose(0, 3, 1, 2), dtype=torch.float64))
    _, vjp = jax.vjp(lambda x: upsample_bilinear(x, factor), jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(dy))[0]), xt.grad.numpy().transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-5)


@needs_torch
def test_closed_gate_leaves_only_the_final_bias(tiny):
    """p = 0 zeroes the whole hypercolumn, so every mask logit is the final conv's bias."""
    saved = tiny.classifier.bias[...], tiny.final.bias[...]
    tiny.classifier.bias[...] = jnp.full_like(saved[0], -1e4)
    tiny.final.bias[...] = jnp.full_like(saved[1], 0.375)
    try:
        (logits, prob), _ = forward(tiny, images(1))
    finally:
        tiny.classifier.bias[...], tiny.final.bias[...] = saved
    assert logits.shape == (1, 128, 128, 1) and prob.shape == (1, 1)
    np.testing.assert_array_equal(prob, 0.0)
    np.testing.assert_array_equal(logits, 0.375)


@needs_torch
def test_bfloat16_close_to_float32(tiny):
    """bf16 keeps 8 significant bits (relative rounding 2**-9 ~ 0.2% per operation). Over the
    ~15 layers between input and output such errors add up like a random walk to a few
    tenths of a percent of the activations' scale, so we allow 3% of the logits' range and
    0.01 on the probability; a wrong dtype path (e.g. bf16 statistics) is far beyond that.
    """
    model16 = archs.build("unet_tiny", abstract=True, dtype=jnp.bfloat16)
    nnx.update(model16, nnx.state(tiny))
    model16.eval()
    for param in jax.tree.leaves(nnx.state(model16, nnx.Param)):
        assert param.dtype == jnp.float32
    x = images(1, seed=3)
    (l32, p32), _ = forward(tiny, x)
    (l16, p16), _ = forward(model16, x)
    assert l16.dtype == np.float32 and p16.dtype == np.float32
    err = np.abs(l16 - l32).max() / np.abs(l32).max()
    assert err <= 3e-2, f"bf16 mask logits differ by {err:.2e} of their scale"
    np.testing.assert_allclose(p16, p32, rtol=0, atol=1e-2)


@needs_torch
def test_train_mode_updates_batchnorm_like_torch():
    t_model = torch_tiny_unet(seed=1)
    state = state_dict_np(t_model)
    model = convert_state("unet_tiny", state)
    model.train()
    t_model.train()

    x = images(2, seed=4)
    (logits, prob), new_state = forward(model, x)
    with torch.no_grad():
        t_logits, t_prob = t_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    t_logits = t_logits.numpy().transpose(0, 2, 3, 1)
    rel = np.abs(logits - t_logits).max() / np.abs(t_logits).max()
    assert rel <= 1e-4, f"train-mode mask logits relative error {rel:.2e}"
    np.testing.assert_allclose(prob, t_prob.numpy(), rtol=0, atol=1e-5)

    nnx.update(model, new_state)
    updated = t_model.state_dict()
    for flax_bn, torch_bn in (
        (model.encoder.layer0.bn1, "bn_in"),
        (model.encoder.layer3[0].bn2, "conv4.0.bn2"),
        (model.center2.bn, "center2.1"),
        (model.dec3.bn, "dec3.block.0.bn"),
        (model.dec1.bn, "dec1.bn"),
    ):
        before = state[f"{torch_bn}.running_var"]
        assert not np.allclose(np.asarray(flax_bn.var[...]), before), torch_bn
        for ours, theirs in ((flax_bn.mean, "running_mean"), (flax_bn.var, "running_var")):
            np.testing.assert_allclose(
                np.asarray(ours[...]), updated[f"{torch_bn}.{theirs}"].numpy(), rtol=1e-4, atol=1e-5, err_msg=torch_bn
            )


@needs_torch
def test_init_encoder_from_imagenet_copies_what_the_original_copies():
    unet = convert_state("unet_tiny", state_dict_np(torch_tiny_unet(seed=2)))
    # Non-default statistics everywhere, so a copied (or not reset) statistic shows.
    t_senet = reference.torch_senet("se_resnext_tiny")
    reference.randomize_batchnorm(t_senet, seed=3)
    senet = convert_state("se_resnext_tiny", state_dict_np(t_senet))
    unet.encoder.layer0.bn1.mean[...] = unet.encoder.layer0.bn1.mean[...] + 3.0  # must be reset
    before = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(unet))}

    init_encoder_from_imagenet(unet, senet)

    for i in range(1, 5):
        src = dict(nnx.to_flat_state(nnx.state(getattr(senet, f"layer{i}"))))
        dst = dict(nnx.to_flat_state(nnx.state(getattr(unet.encoder, f"layer{i}"))))
        assert src.keys() == dst.keys()
        for path in src:
            np.testing.assert_array_equal(np.asarray(dst[path][...]), np.asarray(src[path][...]))
    stem, src_stem = unet.encoder.layer0, senet.layer0
    np.testing.assert_array_equal(np.asarray(stem.conv1.kernel[...]), np.asarray(src_stem.conv1.kernel[...]))
    np.testing.assert_array_equal(np.asarray(stem.bn1.scale[...]), np.asarray(src_stem.bn1.scale[...]))
    np.testing.assert_array_equal(np.asarray(stem.bn1.bias[...]), np.asarray(src_stem.bn1.bias[...]))
    np.testing.assert_array_equal(np.asarray(stem.bn1.mean[...]), 0.0)
    np.testing.assert_array_equal(np.asarray(stem.bn1.var[...]), 1.0)
    # Nothing outside the encoder is touched.
    for path, value in nnx.to_flat_state(nnx.state(unet)):
        if path[0] != "encoder":
            np.testing.assert_array_equal(np.asarray(value[...]), before[path], err_msg=str(path))


def test_init_encoder_refuses_a_different_encoder():
    unet = archs.build("unet_tiny", abstract=True)
    senet = nnx.eval_shape(lambda: models.se_resnext50_32x4d(rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="layer1"):
        init_encoder_from_imagenet(unet, senet)
