"""Host-side initialisation matches Flax's default initialisers in shape, dtype and scale."""

import jax
import numpy as np
import pytest
from flax import nnx

from salt_jax.models.initialize import init_module
from salt_jax.models.layers import BatchNorm, GroupedConv
from salt_jax.models.unet import SaltUNet

pytestmark = pytest.mark.timeout(300)


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


LAYERS = {
    "conv": lambda rngs: nnx.Conv(64, 48, (3, 3), rngs=rngs),
    "linear": lambda rngs: nnx.Linear(300, 40, rngs=rngs),
    "conv_transpose": lambda rngs: nnx.ConvTranspose(32, 16, (4, 4), transpose_kernel=True, rngs=rngs),
    "grouped": lambda rngs: GroupedConv(64, 64, 3, groups=8, rngs=rngs),
    "batchnorm": lambda rngs: BatchNorm(32),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_values_follow_flax_defaults(kind):
    ours, ref = _flat(init_module(LAYERS[kind], seed=1)), _flat(LAYERS[kind](nnx.Rngs(1)))
    assert ours.keys() == ref.keys()
    for path, value in ours.items():
        if path[-1] == "kernel":
            # lecun normal, truncated at 2 std: the sample std of >= 1000 draws is within ~5%.
            fan_in = np.prod(value.shape[:-1])
            assert value.size >= 1000
            assert abs(value.std() / ref[path].std() - 1) < 0.1, path
            assert np.abs(value).max() <= 2 / 0.87962566 / np.sqrt(fan_in) + 1e-6, path
        else:  # bias zeros, BatchNorm scale/mean/var ones/zeros/ones: exact
            np.testing.assert_array_equal(value, ref[path], err_msg=str(path))


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


def test_unknown_variable_is_a_clear_error():
    class Odd(nnx.Module):
        def __init__(self, rngs):
            self.weird = nnx.Param(np.zeros(3, np.float32))

    with pytest.raises(ValueError, match="weird"):
        init_module(Odd)
