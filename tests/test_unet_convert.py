"""Original-layout UNet checkpoints -> SaltUNet: the converted model predicts what PyTorch predicts.

The reference is convert/torch_unet.py (our PyTorch build of the original, with Cadene's own
encoder code) with random weights and non-default BatchNorm statistics, in eval mode.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convert import torch_to_flax
from convert.torch_to_flax import ConversionError, convert_state
from salt_jax import models
from tests.torch_reference import optional_torch_reference

torch, reference, needs_torch = optional_torch_reference()
if torch is not None:
    from convert.torch_unet import TorchSaltUNet

pytestmark = pytest.mark.timeout(300)


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x)


def forward(model: nnx.Module, x_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Jitted forward; models of one structure share one compilation."""
    graphdef, state = nnx.split(model)
    logits, prob = _forward(graphdef, state, jnp.asarray(x_nhwc))
    return np.asarray(logits), np.asarray(prob)


def torch_forward(model, x_nhwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        logits, prob = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2)))
    return logits.numpy().transpose(0, 2, 3, 1), prob.numpy()


def torch_unet(encoder: str, seed: int = 0) -> TorchSaltUNet:
    torch.manual_seed(seed)
    model = TorchSaltUNet(encoder)
    reference.randomize_batchnorm(model, seed)
    return model.eval()


def state_dict_np(model) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 128, 128, 3), dtype=np.float32)


def assert_outputs_close(got, expected) -> None:
    """Mask logits: max error <= 1e-4 of their largest magnitude; probability: 1e-5 absolute."""
    (logits, prob), (t_logits, t_prob) = got, expected
    assert logits.shape == t_logits.shape and prob.shape == t_prob.shape
    assert logits.dtype == np.float32 and prob.dtype == np.float32
    rel = np.abs(logits - t_logits).max() / np.abs(t_logits).max()
    assert rel <= 1e-4, f"mask logits relative error {rel:.2e}"
    np.testing.assert_allclose(prob, t_prob, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_torch() -> TorchSaltUNet:
    return torch_unet("tiny")


@needs_torch
def test_state_dict_keys_are_the_originals(tiny_torch):
    keys = set(tiny_torch.state_dict())
    for key in (
        "conv_in.weight", "bn_in.running_var", "conv1.0.weight", "conv1.1.running_mean",
        "conv2.0.conv2.weight", "conv2.0.se_module.fc1.weight", "conv2.0.downsample.0.weight",
        "conv5.0.bn3.bias", "center1.0.bias", "center1.1.weight", "center2.0.weight",
        "center_decode.block.0.conv.weight", "center_decode.block.0.bn.running_var",
        "center_decode.block.1.weight", "dec5.block.1.bias", "dec3.block.0.conv.bias",
        "dec2.conv.weight", "dec1.bn.bias", "SE6.cSE.linear_1.weight", "SE10.cSE.linear_2.bias",
        "SE8.sSE.conv.weight", "SE11.sSE.conv.bias", "classifier.weight", "final.bias",
    ):  # fmt: skip
        assert key in keys, key
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {
        "conv_in", "bn_in", "conv1", "conv2", "conv3", "conv4", "conv5", "center1", "center2",
        "center_decode", "dec5", "dec4", "dec3", "dec2", "dec1", "SE6", "SE7", "SE8", "SE9",
        "SE10", "SE11", "classifier", "final",
    }  # fmt: skip


@needs_torch
def test_tiny_matches_torch_eval(tiny_torch):
    model = convert_state("unet_tiny", state_dict_np(tiny_torch))
    x = images(1)
    assert_outputs_close(forward(model, x), torch_forward(tiny_torch, x))


@needs_torch
def test_se_resnext50_matches_torch_eval():
    tm = torch_unet("se_resnext50_32x4d", seed=1)
    model = convert_state("unet_se_resnext50_32x4d", state_dict_np(tm))
    x = images(1, seed=1)
    assert_outputs_close(forward(model, x), torch_forward(tm, x))


def abstract_unet101() -> nnx.Module:
    return nnx.eval_shape(lambda: models.SaltUNet("se_resnext101_32x4d", rngs=nnx.Rngs(0)))


@needs_torch
def test_se_resnext101_parameter_count():
    """Too slow to run on CPU here: compare the abstract model with torch's parameter count."""
    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        tm = TorchSaltUNet("se_resnext101_32x4d")
    # torch's parameters() lists the modules shared by conv1 and conv_in/bn_in once; SE11 is unused.
    n_torch = sum(p.numel() for name, p in tm.named_parameters() if not name.startswith("SE11."))
    n_flax = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(abstract_unet101(), nnx.Param)))
    assert n_flax == n_torch


def test_se_resnext101_output_shapes():
    """Shapes only (no torch): a 128x128 batch gives per-pixel logits and one salt probability."""
    graphdef, state = nnx.split(abstract_unet101())
    logits, prob = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, jax.ShapeDtypeStruct((2, 128, 128, 3), jnp.float32))
    assert (logits.shape, logits.dtype, prob.shape, prob.dtype) == ((2, 128, 128, 1), jnp.float32, (2, 1), jnp.float32)


@needs_torch
def test_cli_converts_and_load_returns_eval_model(tiny_torch, tmp_path):
    weights, out = tmp_path / "model-0.pt", tmp_path / "converted"
    torch.save(tiny_torch.state_dict(), weights)
    with pytest.warns(UserWarning, match="SE11"):
        assert torch_to_flax.main(["--arch", "unet_tiny", "--weights", str(weights), "--out", str(out)]) == 0
    model = models.load(out)
    assert isinstance(model, models.SaltUNet)
    assert model.center2.bn.use_running_average  # eval mode
    # Outputs were compared with torch above; here the saved state must be the converted one.
    expected = nnx.to_flat_state(nnx.state(convert_state("unet_tiny", state_dict_np(tiny_torch))))
    loaded = dict(nnx.to_flat_state(nnx.state(model)))
    assert len(loaded) == len(expected)
    for path, value in expected:
        np.testing.assert_array_equal(np.asarray(loaded[path][...]), np.asarray(value[...]), err_msg=str(path))


@needs_torch
def test_differing_duplicate_stem_tensors_are_refused(tiny_torch):
    state = state_dict_np(tiny_torch)
    state["conv1.1.running_mean"] = state["conv1.1.running_mean"] + 1.0
    with pytest.raises(ConversionError, match=r"conv1\.1\.running_mean != bn_in\.running_mean"):
        convert_state("unet_tiny", state)


@needs_torch
def test_missing_tensor_is_named(tiny_torch):
    state = state_dict_np(tiny_torch)
    del state["dec3.block.1.weight"]
    with pytest.raises(ConversionError, match=r"dec3\.block\.1\.weight"):
        convert_state("unet_tiny", state)
