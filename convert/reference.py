"""The independent PyTorch reference: Cadene's `pretrainedmodels/models/senet.py`, loaded by path.

`import pretrainedmodels` fails here because its `__init__` imports torchvision (which has
no CPU build matching our torch), but `models/senet.py` itself imports only torch. So we
locate the installed package without importing it and load that one file with importlib.

Used by the parity tests, the converter tests and the encoder benchmark; never by the
library itself.

`torch_senet(name)` builds a preset's SENet (salt_jax/models/presets.py) with Cadene's code. A
preset that Cadene ships (`cadene_name`: SE-ResNeXt-50/101) comes from Cadene's own constructor,
whose numbers are Cadene's literals, so a wrong number in our preset fails the parity tests.
Any other preset (tiny, or one a user registers) has no numbers but ours: its SENet is Cadene's
SENet class and bottleneck given the preset's numbers, which still checks all of our code.
"""

from __future__ import annotations

import importlib.util
import pathlib
import types
from functools import cache

from salt_jax.models import presets
from salt_jax.models.presets import EXPANSION, SENetConfig


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


def torch_senet(name: str, num_classes: int = 1000, *, adaptive_pool: bool = False):
    """A randomly initialised Cadene SENet (torch.nn.Module, train mode) of a preset.

    Args:
      name: a preset's name or alias (also a SENet arch: "se_resnext50_32x4d", "se_resnext_tiny").
      num_classes: size of `last_linear`.
      adaptive_pool: replace Cadene's fixed `AvgPool2d(7)` with `AdaptiveAvgPool2d(1)`. The
        two agree at 224x224 (a 7x7 final map); at other input sizes AvgPool2d(7) gives a
        spatial map (or fails below 7x7) while our SENet always pools globally.
    """
    import torch.nn as nn

    senet = cadene_senet()
    preset = presets.get(name)
    if preset.cadene_name is not None:
        model = getattr(senet, preset.cadene_name)(num_classes=num_classes, pretrained=None)
    else:
        model = _senet_from_numbers(senet, preset.senet, num_classes)
    if adaptive_pool:
        model.avg_pool = nn.AdaptiveAvgPool2d(1)
    return model


def _senet_from_numbers(senet: types.ModuleType, cfg: SENetConfig, num_classes: int):
    """Cadene's SENet with the numbers of `cfg`.

    Cadene's constructor hard-codes planes 64/128/256/512, base width 4 and a 2048-wide head;
    the subclasses below change only those numbers, so every forward pass, the bottleneck,
    the SE module and the stem remain Cadene's own code.
    """
    import torch.nn as nn

    plane_of = dict(zip((64, 128, 256, 512), cfg.planes))

    class Bottleneck(senet.SEResNeXtBottleneck):
        def __init__(self, inplanes, planes, groups, reduction, stride=1, downsample=None):
            super().__init__(inplanes, planes, groups, reduction, stride, downsample, base_width=cfg.base_width)

    class SENet(senet.SENet):
        def _make_layer(self, block, planes, blocks, groups, reduction, stride=1, **kwargs):
            return super()._make_layer(block, plane_of[planes], blocks, groups, reduction, stride, **kwargs)

    model = SENet(
        Bottleneck,
        list(cfg.blocks),
        groups=cfg.groups,
        reduction=cfg.reduction,
        dropout_p=None,
        inplanes=cfg.stem_width,
        input_3x3=False,
        downsample_kernel_size=1,
        downsample_padding=0,
        num_classes=num_classes,
    )
    model.last_linear = nn.Linear(cfg.planes[3] * EXPANSION, num_classes)
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
