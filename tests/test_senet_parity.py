"""SE-ResNeXt parity with the independent PyTorch reference (Cadene's senet.py).

Torch models get random weights AND non-default BatchNorm statistics (a fresh BatchNorm is
the identity in eval mode and would hide a mis-mapped statistic); the Flax model gets them
through the converter. Logits are compared with

    rel_err(a, b) = max|a - b| / max|b|

i.e. the worst absolute error in units of the largest reference logit. Element-wise relative
error is meaningless for logits that happen to sit near zero, and an absolute tolerance would
depend on the (arbitrary) scale that random weights give. float32 accumulates ~1e-7 relative
rounding per op; summed over ~50-100 layers that stays well below the 1e-5 we require, while any
mapping or semantic error (a transposed kernel, a biased variance, a half-pixel shift) gives
O(1e-2..1).
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest
from flax import nnx

from convert.torch_to_flax import convert_state, converter
from salt_jax.models import archs
from tests.torch_reference import optional_torch_reference

torch, reference, needs_torch = optional_torch_reference()

pytestmark = pytest.mark.timeout(300)

RTOL = 1e-5


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max|b| (see the module docstring)."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def torch_model(arch: str, seed: int):
    torch.manual_seed(seed)
    model = reference.torch_senet(arch)
    reference.randomize_batchnorm(model, seed)
    return model.eval()


def numpy_state(model) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}  # torch updates in place


@contextlib.contextmanager
def global_pool(model):
    """Cadene's head is a fixed AvgPool2d(7): right for 224x224 (a 7x7 final map) only. At 64x64
    the final map is 2x2 and AvgPool2d(7) fails, so the reference pools globally there, as ours does."""
    fixed = model.avg_pool
    model.avg_pool = torch.nn.AdaptiveAvgPool2d(1)
    try:
        yield model
    finally:
        model.avg_pool = fixed


def torch_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2))).numpy()


def flax_logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    return np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x_nhwc))


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def pair50():
    ref = torch_model("se_resnext50_32x4d", seed=0)
    return ref, convert_state("se_resnext50_32x4d", numpy_state(ref))


@needs_torch
@pytest.mark.parametrize("impl", ["native", "dense"])
def test_se_resnext50_matches_torch_at_64(pair50, impl):
    ref, model = pair50
    x = images(2, 64)
    with global_pool(ref):
        expected = torch_logits(ref, x)
    assert rel_err(flax_logits(nnx.view(model, impl=impl), x), expected) <= RTOL


@needs_torch
def test_se_resnext50_matches_torch_at_224(pair50):
    ref, model = pair50  # Cadene's own AvgPool2d(7) head
    x = images(1, 224, seed=1)
    assert rel_err(flax_logits(model, x), torch_logits(ref, x)) <= RTOL


@needs_torch
def test_se_resnext101_matches_torch_at_64():
    ref = torch_model("se_resnext101_32x4d", seed=1)
    model = convert_state("se_resnext101_32x4d", numpy_state(ref))
    x = images(2, 64, seed=2)
    with global_pool(ref):
        expected = torch_logits(ref, x)
    assert rel_err(flax_logits(model, x), expected) <= RTOL
    assert param_count(model) == sum(p.numel() for p in ref.parameters())


def param_count(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@needs_torch
def test_parameter_count_equals_torch(pair50):
    ref, _ = pair50
    abstract50 = archs.build("se_resnext50_32x4d", abstract=True)
    assert param_count(abstract50) == sum(p.numel() for p in ref.parameters()) == 27_559_896


def test_parameter_counts_are_the_published_ones():
    """Shapes only (no allocation, no torch): the published parameter counts of Cadene's
    SE-ResNeXt-50 32x4d (27.56 M) and -101 32x4d (48.96 M)."""
    assert param_count(archs.build("se_resnext50_32x4d", abstract=True)) == 27_559_896
    assert param_count(archs.build("se_resnext101_32x4d", abstract=True)) == 48_955_416


@needs_torch
def test_train_mode_batchnorm_matches_torch():
    """Train mode: outputs from batch statistics and running statistics updated with the
    UNBIASED batch variance, as torch does (Flax's own BatchNorm uses the biased one)."""
    ref = torch_model("se_resnext_tiny", seed=3)
    model = convert_state("se_resnext_tiny", numpy_state(ref))
    before = numpy_state(ref)
    x = images(4, 32, seed=4)  # batch 4 at 32x32: layer4 sees 4 values a channel, n/(n-1) = 4/3

    ref.train()
    with global_pool(ref):
        expected = torch_logits(ref, x)
    train_view = nnx.view(model, use_running_average=False)
    got = np.asarray(nnx.jit(lambda m, x: m(x))(train_view, x))
    assert rel_err(got, expected) <= RTOL

    after = numpy_state(ref)
    state = nnx.to_pure_dict(nnx.state(train_view))
    stats = [e for e in converter("se_resnext_tiny").name_map() if e.torch_key.endswith(("running_mean", "running_var"))]
    assert len(stats) == 2 * 17  # stem + 4 blocks x (bn1..bn3 + downsample)
    for entry in stats:
        leaf = state
        for key in entry.flax_path:
            leaf = leaf[key]
        assert not np.allclose(after[entry.torch_key], before[entry.torch_key]), entry.torch_key
        np.testing.assert_allclose(np.asarray(leaf), after[entry.torch_key], rtol=1e-5, atol=1e-6, err_msg=entry.torch_key)
