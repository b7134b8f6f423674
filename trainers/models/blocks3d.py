"""3D building blocks of the volume models (``mttu3d``, ``mtunet3d``).

The 3D counterparts of :mod:`.blocks`: 3x3x3 conv-BN-activation, the pre-activation residual
block of Cheng et al., MTTU-Net, IEEE TMI 2022 (BN, LeakyReLU, 3x3x3 conv, twice, plus a skip),
a 3D U-Net up block, global average / max pooling over (D, H, W), ``Dropout3d`` placement and
the input check. Volumes are ``(B, C, D, H, W)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DropoutPlan, PreActResBlock


def conv3_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, act: str = "relu") -> nn.Sequential:
    """Conv3d -> BatchNorm3d -> activation ("relu", "leaky" or "none")."""
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                               nn.BatchNorm3d(cout)]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "leaky":
        layers.append(nn.LeakyReLU(0.01, inplace=True))
    elif act != "none":
        raise ValueError(f"unknown activation {act!r}")
    return nn.Sequential(*layers)


class DoubleConv3d(nn.Sequential):
    """Two 3x3x3 conv-BN-ReLU (a 3D U-Net level, Cicek et al., MICCAI 2016)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(conv3_bn_act(cin, cout), conv3_bn_act(cout, cout))


class PreActResBlock3d(PreActResBlock):
    """Residual block of Cheng et al., MTTU-Net, IEEE TMI 2022 (Sec. III-A-1) on volumes: two (BN, LeakyReLU,
    3x3x3 conv) units plus a skip (1x1x1 projection when the channels change)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, dims=3)


class UpBlock3d(nn.Module):
    """3D U-Net decoder level: 2x2x2 transposed conv up, skip concat, two 3x3x3 convs."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(cin, cout, 2, stride=2)
        self.conv = DoubleConv3d(cout + skip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], 1))


def gap3(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling (B, C, D, H, W) -> (B, C)."""
    return x.mean((2, 3, 4))


def gmp3(x: torch.Tensor) -> torch.Tensor:
    """Global max pooling (B, C, D, H, W) -> (B, C)."""
    return x.amax((2, 3, 4))


class DropoutPlan3d(DropoutPlan):
    """:class:`.blocks.DropoutPlan` with ``Dropout3d`` (whole feature channels of a volume) at the
    bottleneck and decoder levels; ``nn.Dropout`` in the classifier. Every module is a torch dropout
    module, so :func:`medloop.trainers.uncertainty.mc.enable_mc_dropout` switches it on."""

    def _make(self, where: str, two_d: bool) -> nn.Module:
        if self.p == 0 or where not in self.places:
            return nn.Identity()
        return nn.Dropout3d(self.p) if two_d else nn.Dropout(self.p)


def check_volume(x: torch.Tensor, in_channels: int, multiple: int) -> None:
    """Clear errors for a wrong rank / channel count or a size not divisible by ``multiple``."""
    if x.ndim != 5 or x.shape[1] != in_channels:
        raise ValueError(f"expected a volume batch (B, {in_channels}, D, H, W), got {tuple(x.shape)}")
    if any(s % multiple for s in x.shape[2:]):
        raise ValueError(f"D, H and W must be divisible by {multiple}, got {tuple(x.shape[2:])}")
