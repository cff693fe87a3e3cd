"""Models: SE-ResNeXt encoders (Cadene layout) and the SaltUNet."""

from salt_jax.models.io import load, read_metadata, save
from salt_jax.models.senet import SENet, SENetConfig, se_resnext50_32x4d, se_resnext101_32x4d, se_resnext_tiny
from salt_jax.models.unet import SaltUNet, UNetConfig

__all__ = ["SENet", "SENetConfig", "se_resnext50_32x4d", "se_resnext101_32x4d", "se_resnext_tiny", "save", "load", "read_metadata"]
__all__ += ["SaltUNet", "UNetConfig"]
