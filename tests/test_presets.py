"""The preset registry: the full presets are the original's numbers, and a variant registered
here (in this file only) trains through the real entry point, saves, loads and converts."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from salt_jax import models
from salt_jax.data.synthetic import generate
from salt_jax.models import archs, presets
from salt_jax.training import parse_args, run
from tests.torch_reference import optional_torch_reference

torch, reference, needs_torch = optional_torch_reference()

pytestmark = pytest.mark.timeout(600)

# Not the tiny preset's numbers: two blocks in layer2 (a block without projection after one with
# it), 2 groups, equal planes in layer3 and layer4, other UNet widths.
MINI = presets.Preset(
    "se_resnext_mini",
    presets.SENetConfig(blocks=(1, 2, 1, 1), groups=2, base_width=16, stem_width=8, planes=(8, 16, 16, 32), reduction=4),
    presets.UNetConfig(center=16, center_mid=24, dec_mid=(16, 8, 8), dec_out=8, scse_reduction=4),
    aliases=("mini",),
)


@pytest.fixture
def mini(monkeypatch):
    """MINI registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(presets, "_PRESETS", dict(presets._PRESETS))
    return presets.register(MINI)


def test_the_full_presets_carry_the_originals_numbers():
    """Literals from the sources, not from salt_jax: Cadene's senet.py builds se_resnext50_32x4d /
    se_resnext101_32x4d as SENet(SEResNeXtBottleneck, [3, 4, 6, 3] / [3, 4, 23, 3], groups=32,
    reduction=16, inplanes=64) with planes 64/128/256/512 and base width 4; the original's UNet
    (torch_models/resnext50_hyper_gated.py and resnext101_hyper_gated.py) has center1/center2 512,
    center_decode DecoderBlockV2(512*2, 512 + 256, 512), dec5/dec4/dec3 middles 512/256/128, 64
    channels at every decoder level, SCSE(64, 16) and final Conv2d(832, 1)."""
    for name, blocks in (("se_resnext50_32x4d", (3, 4, 6, 3)), ("se_resnext101_32x4d", (3, 4, 23, 3))):
        preset = presets.get(name)
        assert dataclasses.asdict(preset.senet) == dict(blocks=blocks, groups=32, base_width=4, stem_width=64,
                                                        planes=(64, 128, 256, 512), reduction=16)
        assert dataclasses.asdict(preset.unet) == dict(center=512, center_mid=768, dec_mid=(512, 256, 128),
                                                       dec_out=64, scse_reduction=16)
        assert preset.unet.hypercolumn_channels == 832 and preset.cadene_name == name


def test_names_aliases_and_clear_errors(mini):
    assert presets.get("50") is presets.get("se_resnext50_32x4d")
    assert presets.get("mini") is presets.get("se_resnext_mini") is MINI
    with pytest.raises(presets.UnknownPresetError, match=r"unknown encoder 'resnet152'; known: se_resnext50_32x4d, 50, "):
        presets.get("resnet152")
    with pytest.raises(ValueError, match=r"\['mini'\] are already registered"):
        presets.register(dataclasses.replace(MINI, name="other"))
    assert archs.parse("unet_mini").name == "unet_se_resnext_mini"
    assert archs.is_a("se_resnext_tiny", "senet", "tiny")  # the arch older tiny SENets carry


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "tgs", n_train=40, n_test=2, seed=3)


def test_a_registered_variant_trains_saves_and_loads(mini, data_dir, tmp_path):
    """`--encoder=mini` on the command line, one epoch of 4 steps, best/ saved and loaded back."""
    cfg = parse_args(["--encoder=mini", f"--data_dir={data_dir}", f"--workdir={tmp_path / 'w'}", "--epochs=1",
                      "--batch_size=8", "--dtype=float32", "--no_progress"])
    assert (cfg.encoder, cfg.arch) == ("se_resnext_mini", "unet_se_resnext_mini")
    result = run(cfg)
    assert [r["step"] for r in result.records] == [4] and np.isfinite(result.records[0]["train_loss"])

    best = result.workdir / "best"
    assert models.read_metadata(best)["arch"] == "unet_se_resnext_mini"
    loaded = models.load(best)
    assert isinstance(loaded, models.SaltUNet) and len(loaded.encoder.layer2) == 2
    assert loaded.center1.conv.kernel.shape == (3, 3, 32 * 4, 16)  # layer4 outputs 32 planes * 4
    assert loaded.encoder.layer2[1].downsample is None  # same width and stride: no projection
    trained = jax.tree.leaves(result.state["params"])
    for got, want in zip(jax.tree.leaves(nnx.state(loaded, nnx.Param)), trained, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@needs_torch
def test_a_registered_variant_converts_from_cadene_layout(mini, tmp_path):
    """Cadene's SENet class given MINI's numbers, and our PyTorch build of the original UNet on it:
    their state_dicts convert to models that compute what torch computes. Tolerances as in
    test_senet_parity.py (1e-5 of the largest logit) and test_unet_convert.py (1e-4 of the
    largest mask logit, 1e-5 on the probability)."""
    from convert import torch_to_flax
    from convert.torch_unet import TorchSaltUNet

    torch.manual_seed(0)
    t_senet = reference.torch_senet("mini", adaptive_pool=True)
    reference.randomize_batchnorm(t_senet)
    t_senet.eval()
    torch.save(t_senet.state_dict(), tmp_path / "mini.pth")
    out = tmp_path / "converted"
    assert torch_to_flax.main(["--arch", "mini", "--weights", str(tmp_path / "mini.pth"), "--out", str(out)]) == 0
    assert models.read_metadata(out)["arch"] == "se_resnext_mini"
    x = np.random.default_rng(0).random((2, 64, 64, 3), dtype=np.float32)
    with torch.no_grad():
        expected = t_senet(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(nnx.jit(lambda m, x: m(x))(models.load(out), x))
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-5

    t_unet = TorchSaltUNet("mini")
    reference.randomize_batchnorm(t_unet, seed=1)
    t_unet.eval()
    state = {k: v.numpy().copy() for k, v in t_unet.state_dict().items()}
    with pytest.warns(UserWarning, match="SE11"):
        unet = torch_to_flax.convert_state("unet_mini", state)
    x = np.random.default_rng(1).random((1, 128, 128, 3), dtype=np.float32)
    with torch.no_grad():
        t_logits, t_prob = (t.numpy() for t in t_unet(torch.from_numpy(x.transpose(0, 3, 1, 2))))
    logits, prob = (np.asarray(a) for a in nnx.jit(lambda m, x: m(x))(unet, x))
    t_logits = t_logits.transpose(0, 2, 3, 1)
    assert np.abs(logits - t_logits).max() / np.abs(t_logits).max() <= 1e-4
    np.testing.assert_allclose(prob, t_prob, rtol=0, atol=1e-5)
