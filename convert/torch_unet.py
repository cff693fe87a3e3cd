"""Our PyTorch build of the original gated hypercolumn UNet (torch_models/resnext50_hyper_gated.py
of terkelbo/TGS-Salt-Kaggle-Competition, written anew; docs/DESIGN.md "Model").

It exists to be the independent reference for salt_jax.models.SaltUNet: the converter is
tested by converting its state_dict and comparing outputs, and the benchmark times it. The
encoder stages are Cadene's own code (`convert.reference`, pretrainedmodels' senet.py loaded
by path), so only the UNet around them is ours.

Input (N, 3, 128, 128) float32 in [0, 1]; `forward` returns (mask_logits (N, 1, 128, 128),
salt_prob (N, 1)).

State-dict keys are those of a trained original model (`model-<fold>.pt`). Where a key's module
was ours to choose, we chose:
- `conv_in` = Conv2d(3, 64, 7, stride 1, padding 3, bias=False) (it takes Cadene's
  `layer0.conv1` weights, which have no bias), `bn_in` = BatchNorm2d(64);
  `conv1 = nn.Sequential(conv_in, bn_in)` holds the *same* modules, so the state_dict lists
  their tensors twice (`conv1.0.*`, `conv1.1.*`); ReLU is applied in forward.
- `conv2..conv5` = Cadene's `layer1..layer4` (e.g. `conv2.0.se_module.fc1.weight`).
- `center1`, `center2` = Sequential(Conv2d 3x3 p1 with bias, BatchNorm2d); ReLU (and for
  center1 the 2x2 max pool) are applied in forward.
- A decoder block's `block` = Sequential(ConvBnRelu (`.conv`, `.bn`), ConvTranspose2d(k4, s2,
  p1, bias), ReLU): keys `block.0.conv.*`, `block.0.bn.*`, `block.1.*`.
- `dec2`, `dec1` = ConvBnRelu (`.conv` 3x3 p1 with bias, `.bn`).
- `SE6..SE10` = scSE after dec5, dec4, dec3, dec2, dec1 in that order, each with
  `cSE.linear_1`, `cSE.linear_2` (nn.Linear) and `sSE.conv` (Conv2d 1x1 with bias). `SE11`
  (same shape) is constructed but never called, as in the original.
- `classifier` = Conv2d(512, 1, 4) (valid) on the 2x2-max-pooled center2; `final` =
  Conv2d(832, 1, 1).

Every width comes from a preset (salt_jax/models/presets.py): its encoder is `convert.reference.
torch_senet(preset)` (Cadene's own constructor for SE-ResNeXt-50/101, whose numbers are Cadene's),
and the UNet around it takes the preset's `UNetConfig`. That the full presets carry the
original's UNet widths is checked against the original's literals in tests/test_presets.py,
so a wrong width there fails a test instead of being copied into this reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from convert.reference import torch_senet
from salt_jax.models import presets


class ConvBnRelu(nn.Module):
    """Conv2d 3x3 p1 (bias) -> BatchNorm2d -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class DecoderBlock(nn.Module):
    """ConvBnRelu(in -> mid) -> ConvTranspose2d(mid -> out, 4, 2, 1) -> ReLU; doubles H, W."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.block = nn.Sequential(
            ConvBnRelu(in_channels, mid_channels),
            nn.ConvTranspose2d(mid_channels, out_channels, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ChannelSE(nn.Module):
    """x * sigmoid(linear_2(relu(linear_1(spatial mean of x))))."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.linear_1 = nn.Linear(channels, channels // reduction)
        self.linear_2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.linear_2(F.relu(self.linear_1(x.mean(dim=(2, 3))))))
        return x * s[:, :, None, None]


class SpatialSE(nn.Module):
    """x * sigmoid(conv1x1(x) -> 1 channel)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class SCSE(nn.Module):
    """cSE(x) + sSE(x)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.cSE = ChannelSE(channels, reduction)
        self.sSE = SpatialSE(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cSE(x) + self.sSE(x)


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class TorchSaltUNet(nn.Module):
    """The original UNet (see the module docstring); random init, stem taken from the encoder.

    As the original does with ImageNet weights, `conv_in` gets the encoder's `layer0.conv1`
    weight and `bn_in` its `layer0.bn1` weight and bias (running statistics fresh).
    """

    def __init__(self, encoder: str = "se_resnext50_32x4d"):
        super().__init__()
        preset = presets.get(encoder)
        cfg = preset.unet
        senet = torch_senet(preset.name)
        # The encoder's widths as Cadene's modules have them: the stem's and each stage's output.
        stem = senet.layer0.conv1.out_channels
        stages = (senet.layer1, senet.layer2, senet.layer3, senet.layer4)
        c1, c2, c3, c4 = (stage[-1].conv3.out_channels for stage in stages)

        self.conv_in = nn.Conv2d(3, stem, 7, stride=1, padding=3, bias=False)
        self.bn_in = nn.BatchNorm2d(stem)
        with torch.no_grad():
            self.conv_in.weight.copy_(senet.layer0.conv1.weight)
            self.bn_in.weight.copy_(senet.layer0.bn1.weight)
            self.bn_in.bias.copy_(senet.layer0.bn1.bias)
        self.conv1 = nn.Sequential(self.conv_in, self.bn_in)
        self.conv2, self.conv3, self.conv4, self.conv5 = senet.layer1, senet.layer2, senet.layer3, senet.layer4

        self.center1 = nn.Sequential(nn.Conv2d(c4, cfg.center, 3, padding=1), nn.BatchNorm2d(cfg.center))
        self.center2 = nn.Sequential(nn.Conv2d(cfg.center, cfg.center, 3, padding=1), nn.BatchNorm2d(cfg.center))
        self.center_decode = DecoderBlock(2 * cfg.center, cfg.center_mid, cfg.center)

        m5, m4, m3 = cfg.dec_mid
        out = cfg.dec_out
        self.dec5 = DecoderBlock(cfg.center + c4, m5, out)
        self.dec4 = DecoderBlock(out + c3, m4, out)
        self.dec3 = DecoderBlock(out + c2, m3, out)
        self.dec2 = ConvBnRelu(out + c1, out)
        self.dec1 = ConvBnRelu(out + stem, out)
        for i in range(6, 12):
            setattr(self, f"SE{i}", SCSE(out, cfg.scse_reduction))

        self.classifier = nn.Conv2d(cfg.center, 1, 4)
        self.final = nn.Conv2d(5 * cfg.dec_out + cfg.center, 1, 1)  # the hypercolumn's channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stem = F.relu(self.conv1(x))
        e2 = self.conv2(stem)
        e3 = self.conv3(e2)
        e4 = self.conv4(e3)
        e5 = self.conv5(e4)

        center1 = F.max_pool2d(F.relu(self.center1(e5)), 2)
        center2 = F.relu(self.center2(center1))
        center = self.center_decode(torch.cat([center1, center2], dim=1))

        d5 = self.SE6(self.dec5(torch.cat([center, e5], dim=1)))
        d4 = self.SE7(self.dec4(torch.cat([d5, e4], dim=1)))
        d3 = self.SE8(self.dec3(torch.cat([d4, e3], dim=1)))
        d2 = self.SE9(self.dec2(torch.cat([d3, e2], dim=1)))
        d1 = self.SE10(self.dec1(torch.cat([d2, stem], dim=1)))
        hypercolumn = torch.cat([d1, d2, d3, _up(d4, 2), _up(d5, 4), _up(center, 8)], dim=1)

        salt_prob = torch.sigmoid(self.classifier(F.max_pool2d(center2, 2))).view(x.shape[0], 1)
        mask_logits = self.final(hypercolumn * salt_prob[:, :, None, None])
        return mask_logits, salt_prob
