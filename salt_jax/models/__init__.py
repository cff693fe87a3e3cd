"""Models: SE-ResNeXt encoders (Cadene layout) and the SaltUNet, their presets; saving and loading.

    from salt_jax import models
    unet = models.SaltUNet(encoder="se_resnext50_32x4d", rngs=nnx.Rngs(0))
    mask_logits, salt_prob = unet(x)   # (N, 128, 128, 3) in [0, 1] -> (N, 128, 128, 1), (N, 1)
    best = models.load("runs/se_resnext50_32x4d-fold0")   # the best model of a run, eval mode

presets.py: the architectures as data (one entry each); senet.py, unet.py: the networks;
archs.py: the arch names saved models record, and `build`; store.py: the saved-model format.
"""

from salt_jax.models.archs import build
from salt_jax.models.initialize import init_module
from salt_jax.models.presets import Preset, SENetConfig, UNetConfig
from salt_jax.models.senet import SENet, se_resnext50_32x4d, se_resnext101_32x4d, se_resnext_tiny
from salt_jax.models import store
from salt_jax.models.store import read_metadata, save
from salt_jax.models.unet import SaltUNet, init_encoder_from_imagenet


def load(directory, **kwargs):
    """`store.load` for users: a saved model directory, or a training run's (its best model, `best/`).

    The run layout is training's fact (salt_jax.training.workdir), imported here when called so
    that importing the models never imports the training code.
    """
    from salt_jax.training.workdir import model_dir

    return store.load(model_dir(directory), **kwargs)


__all__ = [
    "Preset", "SENetConfig", "UNetConfig",
    "SENet", "se_resnext50_32x4d", "se_resnext101_32x4d", "se_resnext_tiny",
    "SaltUNet", "init_encoder_from_imagenet",
    "build", "save", "load", "read_metadata", "init_module",
]
