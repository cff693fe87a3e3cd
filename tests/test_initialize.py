"""Host-side initialisation draws what PyTorch's default initialisers draw, layer by layer.

Two references, never constants of the module under test: torch itself, where it is installed
(each of our layers against the PyTorch layer it stands for, built and re-initialised by torch's
`reset_parameters`, through empirical statistics: the largest magnitude, which estimates the
uniform bound, and the standard deviation); and, with or without torch, the bounds derived by
hand below from PyTorch's source, for each layer's numbers. The other tests need only JAX.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from salt_jax.models.initialize import init_module
from salt_jax.models.layers import BatchNorm, GroupedConv
from salt_jax.models.unet import SaltUNet
from tests.torch_reference import optional_torch

torch, needs_torch = optional_torch()  # the tests that compare with torch itself skip; the others need only JAX
pytestmark = pytest.mark.timeout(300)
DRAWS = 100  # re-initialisations per layer: enough bias values (>= 1600) for the statistics


def _flat(module):
    return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(module))}


def _make_unet(rngs):
    return SaltUNet("tiny", rngs=rngs)


def test_same_variables_shapes_and_dtypes_as_the_flax_build():
    ours = _flat(init_module(_make_unet, seed=0))
    ref = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(nnx.eval_shape(lambda: _make_unet(nnx.Rngs(0)))))}
    assert ours.keys() == ref.keys()
    for path in ref:
        assert ours[path].shape == ref[path].shape and ours[path].dtype == ref[path].dtype, path


# ours -> the torch layer it stands for. in != out everywhere, so a fan_in taken from the wrong
# dimension (e.g. in*k*k for the transposed conv, whose torch fan_in is out*k*k) changes the bound.
LAYERS = {
    "conv": (lambda rngs: nnx.Conv(64, 48, (3, 3), rngs=rngs), lambda: torch.nn.Conv2d(64, 48, 3)),
    "linear": (lambda rngs: nnx.Linear(300, 40, rngs=rngs), lambda: torch.nn.Linear(300, 40)),
    "conv_transpose": (
        lambda rngs: nnx.ConvTranspose(32, 16, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                                       transpose_kernel=True, rngs=rngs),
        lambda: torch.nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1)),
    "grouped": (lambda rngs: GroupedConv(64, 128, 3, groups=8, rngs=rngs),
                lambda: torch.nn.Conv2d(64, 128, 3, padding=1, groups=8, bias=False)),
}


def _torch_draws(make) -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    layer = make()
    draws = {"kernel": [], "bias": []}
    for _ in range(DRAWS):
        layer.reset_parameters()
        draws["kernel"].append(layer.weight.detach().numpy().ravel().copy())  # not a view: reset reuses it
        if layer.bias is not None:
            draws["bias"].append(layer.bias.detach().numpy().ravel().copy())
    return {k: np.concatenate(v) for k, v in draws.items() if v}


def _our_draws(make) -> dict[str, np.ndarray]:
    draws = {}
    for seed in range(DRAWS):
        for path, value in _flat(init_module(make, seed=seed)).items():
            draws.setdefault(path[-1], []).append(value.ravel())
    return {k: np.concatenate(v) for k, v in draws.items()}


# PyTorch's defaults by hand (torch/nn/modules/conv.py _ConvNd.reset_parameters and
# linear.py Linear.reset_parameters): weight kaiming_uniform_(a=sqrt(5)), i.e. U(-b, b) with
# b = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), so b = 1 / sqrt(fan_in);
# bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)). fan_in (init._calculate_fan_in_and_fan_out) is
# weight.size(1) * kh * kw: Conv2d's weight is (out, in/groups, kh, kw), ConvTranspose2d's is
# (in, out/groups, kh, kw). For the layers of LAYERS:
HAND_FAN_IN = {
    "conv": 64 * 3 * 3,  # 576, b = 1/24
    "linear": 300,
    "conv_transpose": 16 * 4 * 4,  # out * k * k = 256, b = 1/16 (in * k * k would give 1/32)
    "grouped": 64 // 8 * 3 * 3,  # 72 (ungrouped 576 would give a bound 3x smaller)
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_values_within_hand_derived_torch_bounds(kind):
    """Every kernel and bias value lies in [-b, b], b = 1/sqrt(fan_in) as derived above, and fills
    it: the largest of n >= 1600 draws of U(-b, b) falls below 0.98 b with probability
    0.98^1600 < 1e-14; the standard deviation is b/sqrt(3) within 5% (relative standard error
    0.45/sqrt(n) <= 1.1%, so > 4 sigma)."""
    bound = 1 / np.sqrt(HAND_FAN_IN[kind])
    for name, values in _our_draws(LAYERS[kind][0]).items():
        assert values.size >= 1600, name
        assert np.abs(values).max() <= bound * (1 + 1e-6), (name, np.abs(values).max(), bound)
        assert np.abs(values).max() >= 0.98 * bound, (name, np.abs(values).max(), bound)
        assert abs(values.std() / (bound / np.sqrt(3)) - 1) < 0.05, (name, values.std(), bound)


def test_batchnorm_hand_defaults():
    """torch/nn/modules/batchnorm.py (_NormBase.reset_parameters, reset_running_stats): weight 1,
    bias 0, running_mean 0, running_var 1."""
    ours = _flat(init_module(lambda rngs: BatchNorm(32), seed=1))
    for name, value in {"scale": 1.0, "bias": 0.0, "mean": 0.0, "var": 1.0}.items():
        np.testing.assert_array_equal(ours[(name,)], np.full(32, value, np.float32), err_msg=name)


@needs_torch
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_values_follow_torch_defaults(kind):
    ours_make, torch_make = LAYERS[kind]
    ours, ref = _our_draws(ours_make), _torch_draws(torch_make)
    assert ours.keys() == ref.keys()
    for name, theirs in ref.items():
        mine = ours[name]
        assert mine.size == theirs.size and mine.size >= 1600, name
        # The max of n >= 1600 draws of U(-b, b) is b(1 - O(1/n)): both estimate b within 0.5%;
        # a sqrt(2) error in fan_in moves it by 30%, a normal law has no bound at all.
        assert abs(np.abs(mine).max() / np.abs(theirs).max() - 1) < 0.02, (name, mine.max(), theirs.max())
        # Sample std: relative standard error ~0.45/sqrt(n) <= 1.1% each, so 5% is > 3 sigma of
        # the ratio; it would catch a law of another shape with the same bound.
        assert abs(mine.std() / theirs.std() - 1) < 0.05, (name, mine.std(), theirs.std())
        assert abs(mine.mean()) < 4 * theirs.std() / np.sqrt(mine.size), name


@needs_torch
def test_batchnorm_matches_torch():
    bn = torch.nn.BatchNorm2d(32)
    ours = _flat(init_module(lambda rngs: BatchNorm(32), seed=1))
    torch_values = {"scale": bn.weight, "bias": bn.bias, "mean": bn.running_mean, "var": bn.running_var}
    for name, value in torch_values.items():
        np.testing.assert_array_equal(ours[(name,)], value.detach().numpy(), err_msg=name)


def test_unet_layers_outside_the_encoder_within_hand_derived_bounds():
    """The tiny UNet as training and loading build it (init_module): each decoder/center/head
    layer's kernel and bias lie in [-b, b], b = 1/sqrt(fan_in) of the PyTorch layer it stands for
    (derived above), and the kernel reaches 0.9 b (a fan_in too small by sqrt(2) would not)."""
    model = init_module(_make_unet, seed=0)
    c4, center, mid5, out = 256, 32, 32, 8  # tiny encoder stage 4, the tiny preset's UNetConfig
    fan_in = {
        "center1.conv": (model.center1.conv, c4 * 3 * 3),  # Conv2d(c4, center, 3)
        "dec5.deconv": (model.dec5.deconv, out * 4 * 4),  # ConvTranspose2d(mid5, out, 4): out * k * k
        "scse5.cse.fc1": (model.scse5.cse.fc1, out),  # Linear(out, out // 2)
        "classifier": (model.classifier, center * 4 * 4),  # Conv2d(center, 1, 4)
        "final": (model.final, 5 * out + center),  # Conv2d(5 * out + center, 1, 1)
    }
    assert model.dec5.deconv.in_features == mid5  # in != out: the transposed fan_in rule matters
    for where, (layer, n) in fan_in.items():
        bound = 1 / np.sqrt(n)
        kernel, bias = np.abs(np.asarray(layer.kernel[...])), np.abs(np.asarray(layer.bias[...]))
        assert kernel.max() <= bound * (1 + 1e-6) and bias.max() <= bound * (1 + 1e-6), where
        assert kernel.max() >= 0.9 * bound, where
        assert np.all(bias != 0), where  # torch's biases are drawn, not zero


@needs_torch
def test_unet_layers_outside_the_encoder_get_torch_defaults():
    """The path training and loading (archs.build) use: each decoder/center/head layer of the tiny
    UNet lies in the bound of the torch layer of the same shape (largest magnitude over 200 torch
    draws)."""
    model = init_module(_make_unet, seed=0)
    c4, center, mid5, out = 256, 32, 32, 8  # tiny encoder stage 4, the tiny preset's UNetConfig
    pairs = {
        "center1.conv": (model.center1.conv, lambda: torch.nn.Conv2d(c4, center, 3, padding=1)),
        "dec5.deconv": (model.dec5.deconv, lambda: torch.nn.ConvTranspose2d(mid5, out, 4, stride=2, padding=1)),
        "scse5.cse.fc1": (model.scse5.cse.fc1, lambda: torch.nn.Linear(out, out // 2)),
        "classifier": (model.classifier, lambda: torch.nn.Conv2d(center, 1, 4)),
        "final": (model.final, lambda: torch.nn.Conv2d(5 * out + center, 1, 1)),
    }
    torch.manual_seed(0)
    for where, (layer, make) in pairs.items():
        ref = make()
        bound = 0.0
        for _ in range(200):
            ref.reset_parameters()
            bound = max(bound, ref.weight.abs().max().item())
        kernel, bias = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
        assert kernel.size == ref.weight.numel(), where
        assert np.abs(kernel).max() <= bound * 1.01 and np.abs(bias).max() <= bound * 1.01, where
        assert np.abs(kernel).max() >= 0.9 * bound, where  # uniform over the whole range
        assert np.all(bias != 0), where  # torch's biases are drawn, not zero


def test_deterministic_from_seed():
    a, b, c = (_flat(init_module(_make_unet, seed=s)) for s in (3, 3, 4))
    for path in a:
        np.testing.assert_array_equal(a[path], b[path])
    kernels = [p for p in a if p[-1] == "kernel"]
    assert any(not np.array_equal(a[p], c[p]) for p in kernels)


def test_module_runs_and_is_jax_backed():
    model = init_module(_make_unet, seed=0)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(nnx.state(model)))
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))  # one compile, not one per op
    logits, prob = forward(state, np.full((1, 128, 128, 3), 0.5, np.float32))
    assert logits.shape == (1, 128, 128, 1) and prob.shape == (1, 1)


def test_unknown_variable_or_layer_is_a_clear_error():
    class Odd(nnx.Module):
        def __init__(self, rngs):
            self.weird = nnx.Param(np.zeros(3, np.float32))

    with pytest.raises(ValueError, match="weird"):
        init_module(Odd)

    class OwnLayer(nnx.Module):  # a kernel, but no known PyTorch layer behind it
        def __init__(self, rngs):
            self.kernel = nnx.Param(np.zeros((3, 3), np.float32))

    with pytest.raises(ValueError, match="kernel: no PyTorch fan_in rule for OwnLayer"):
        init_module(OwnLayer)
