"""The independent PyTorch reference: Cadene's `pretrainedmodels/models/senet.py`, loaded by path.

`import pretrainedmodels` fails here because its `__init__` imports torchvision (which has
no CPU build matching our torch), but `models/senet.py` itself imports only torch. So we
locate the installed package without importing it and load that one file with importlib.

Used by the parity tests, the converter tests and the encoder benchmark; never by the
library itself.
"""

from __future__ import annotations

import importlib.util
import pathlib
import types
from functools import cache

# The tiny SENet's numbers, written here and not imported from salt_jax: the reference must not
# share the configuration of the code it checks (a wrong width there must fail the parity tests).
# salt_jax.models.senet's "tiny" is meant to be this network: one block a stage, stages 32/64/128/256.
TINY_SENET = {"blocks": (1, 1, 1, 1), "groups": 4, "base_width": 16, "stem_width": 8,
              "planes": (8, 16, 32, 64), "reduction": 8}
EXPANSION = 4  # Cadene's SEResNeXtBottleneck.expansion

# The arch names of salt_jax.models.io mapped to Cadene's constructor names.
_CADENE_CONSTRUCTORS = {
    "se_resnext50_32x4d": "se_resnext50_32x4d",
    "se_resnext101_32x4d": "se_resnext101_32x4d",
}


class ReferenceUnavailable(ImportError):
    """pretrainedmodels (or torch) is not installed, so there is no reference to compare with."""


@cache
def cadene_senet() -> types.ModuleType:
    """Returns the module `pretrainedmodels/models/senet.py`, loaded by file path.

    Raises:
      ReferenceUnavailable: pretrainedmodels is not installed (install it with
        `pip install --no-deps pretrainedmodels==0.7.4`).
    """
    spec = importlib.util.find_spec("pretrainedmodels")
    if spec is None or spec.origin is None:
        raise ReferenceUnavailable(
            "the PyTorch reference needs pretrainedmodels: pip install --no-deps pretrainedmodels==0.7.4"
        )
    path = pathlib.Path(spec.origin).parent / "models" / "senet.py"
    if not path.is_file():
        raise ReferenceUnavailable(f"pretrainedmodels is installed but {path} is missing")
    module_spec = importlib.util.spec_from_file_location("_cadene_senet", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def torch_senet(arch: str, num_classes: int = 1000, *, adaptive_pool: bool = False):
    """A randomly initialised Cadene SENet (torch.nn.Module, train mode) for `arch`.

    Args:
      arch: "se_resnext50_32x4d" | "se_resnext101_32x4d" (Cadene's own constructors) or
        "se_resnext_tiny" (Cadene's SENet class and bottleneck, narrowed to TINY_SENET).
      num_classes: size of `last_linear`.
      adaptive_pool: replace Cadene's fixed `AvgPool2d(7)` with `AdaptiveAvgPool2d(1)`. The
        two agree at 224x224 (a 7x7 final map); at other input sizes AvgPool2d(7) gives a
        spatial map (or fails below 7x7) while our SENet always pools globally.
    """
    import torch.nn as nn

    senet = cadene_senet()
    if arch in _CADENE_CONSTRUCTORS:
        model = getattr(senet, _CADENE_CONSTRUCTORS[arch])(num_classes=num_classes, pretrained=None)
    elif arch == "se_resnext_tiny":
        model = _tiny_torch_senet(senet, num_classes)
    else:
        raise ValueError(f"no torch reference for arch {arch!r}")
    if adaptive_pool:
        model.avg_pool = nn.AdaptiveAvgPool2d(1)
    return model


def _tiny_torch_senet(senet: types.ModuleType, num_classes: int):
    """Cadene's SENet with TINY_SENET's numbers.

    Cadene's constructor hard-codes planes 64/128/256/512, base width 4 and a 2048-wide head;
    the subclasses below change only those numbers, so every forward pass, the bottleneck,
    the SE module and the stem remain Cadene's own code.
    """
    import torch.nn as nn

    cfg = TINY_SENET
    plane_scale = dict(zip((64, 128, 256, 512), cfg["planes"]))

    class TinyBottleneck(senet.SEResNeXtBottleneck):
        def __init__(self, inplanes, planes, groups, reduction, stride=1, downsample=None):
            super().__init__(inplanes, planes, groups, reduction, stride, downsample, base_width=cfg["base_width"])

    class TinySENet(senet.SENet):
        def _make_layer(self, block, planes, blocks, groups, reduction, stride=1, **kwargs):
            return super()._make_layer(block, plane_scale[planes], blocks, groups, reduction, stride, **kwargs)

    model = TinySENet(
        TinyBottleneck,
        list(cfg["blocks"]),
        groups=cfg["groups"],
        reduction=cfg["reduction"],
        dropout_p=None,
        inplanes=cfg["stem_width"],
        input_3x3=False,
        downsample_kernel_size=1,
        downsample_padding=0,
        num_classes=num_classes,
    )
    model.last_linear = nn.Linear(cfg["planes"][3] * EXPANSION, num_classes)
    return model


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Gives every BatchNorm2d of `model` non-default weight, bias and running statistics.

    Fresh BatchNorms are the identity in eval mode (mean 0, var 1, weight 1, bias 0), which
    would hide a mis-mapped or un-transformed statistic; after this they would not.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
