"""Models: SE-ResNeXt encoders (Cadene layout) and the SaltUNet; checkpoint save/load.

    from salt_jax import models
    unet = models.SaltUNet(encoder="se_resnext50_32x4d", rngs=nnx.Rngs(0))
    mask_logits, salt_prob = unet(x)   # (N, 128, 128, 3) in [0, 1] -> (N, 128, 128, 1), (N, 1)
    best = models.load("runs/se_resnext50_32x4d-fold0")   # a run's best model, eval mode
"""

from salt_jax.models.initialize import init_module
from salt_jax.models.io import load, read_metadata, save
from salt_jax.models.senet import SENet, SENetConfig, se_resnext50_32x4d, se_resnext101_32x4d, se_resnext_tiny
from salt_jax.models.unet import SaltUNet, UNetConfig, init_encoder_from_imagenet, load_imagenet_encoder

__all__ = [
    "SENet", "SENetConfig", "se_resnext50_32x4d", "se_resnext101_32x4d", "se_resnext_tiny",
    "SaltUNet", "UNetConfig", "init_encoder_from_imagenet", "load_imagenet_encoder",
    "save", "load", "read_metadata", "init_module",
]
