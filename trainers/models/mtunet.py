"""Multi-task U-Net with pluggable encoders, after the multi-task U-Net with VGG16 / MobileNetV2 encoders (MT-U-Net).

A U-Net whose bottleneck (the "compressed representation" of MT-U-Net, Sec. 2.2) also feeds a
classification head (GAP -> FC -> ReLU -> FC; ``cls_pool="gap_gmp"`` concatenates global max pooling, as the
MTTU-Net classifier does, Cheng et al., IEEE TMI 2022, Eq. 10-11). Encoders: VGG16-style stages (2, 2, 3, 3, 3
convs, max-pool between), MobileNetV2-style inverted residuals, or ResNet basic blocks.
Default loss weights seg : cls = 5 : 1 (the "mtunet" loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import MODELS
from .blocks import BasicBlock, DropoutPlan, InvertedResidual, UpBlock, VGGBlock, check_input, conv_bn_act, gap, gmp
from .unet_decoder import UNetDecoder
from .weights import load_weights

MOBILENET_MULT = (1, 1.5, 2, 4, 6, 10, 20)  # 16, 24, 32, 64, 96, 160, 320 at width 16
CLS_POOLS = ("gap", "gap_gmp")


def gap_gmp(x: torch.Tensor) -> torch.Tensor:
    """Global average and global max pooling, concatenated (B, C, H, W) -> (B, 2C) (MTTU-Net Eq. 10-11)."""
    return torch.cat([gap(x), gmp(x)], dim=1)


class Encoder(nn.Module):
    """A list of stages; stage i returns features at H / 2**i. ``channels[i]`` = its width."""

    def __init__(self, kind: str, in_channels: int, width: int, depth: int) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        if kind == "vgg":
            chs = [width * min(2**i, 8) for i in range(depth + 1)]
            convs = [2, 2] + [3] * (depth - 1)
            for i in range(depth + 1):
                block = VGGBlock(in_channels if i == 0 else chs[i - 1], chs[i], convs[i])
                stages.append(block if i == 0 else nn.Sequential(nn.MaxPool2d(2), block))
        elif kind == "mobilenetv2":
            mult = list(MOBILENET_MULT) + [MOBILENET_MULT[-1]] * max(0, depth + 1 - len(MOBILENET_MULT))
            chs = [max(int(round(width * m)), 2) for m in mult[: depth + 1]]
            stages.append(nn.Sequential(conv_bn_act(in_channels, chs[0], act="relu6"),
                                        InvertedResidual(chs[0], chs[0], 1, expand=1)))
            for i in range(1, depth + 1):
                stages.append(
                    nn.Sequential(InvertedResidual(chs[i - 1], chs[i], 2), InvertedResidual(chs[i], chs[i], 1))
                )
        elif kind == "resnet":
            chs = [width * 2**i for i in range(depth + 1)]
            stages.append(nn.Sequential(conv_bn_act(in_channels, chs[0]), BasicBlock(chs[0], chs[0])))
            for i in range(1, depth + 1):
                stages.append(nn.Sequential(BasicBlock(chs[i - 1], chs[i], 2), BasicBlock(chs[i], chs[i])))
        else:
            raise ValueError(f"unknown mtunet encoder {kind!r}; choose vgg, mobilenetv2 or resnet")
        self.stages = nn.ModuleList(stages)
        self.channels = chs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class MTUNet(UNetDecoder):
    """U-Net + bottleneck classifier of the multi-task U-Net with VGG16 / MobileNetV2 encoders (MT-U-Net), Fig. 1-2."""

    default_loss = "mtunet"
    pool = staticmethod(gap)

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 3, width: int = 16, depth: int = 4,
        dropout: float = 0.2, dropout_placement: str | Iterable[str] | None = ("decoder", "classifier"),
        seg_classes: int = 2, encoder: str = "vgg", dropout_levels: Sequence[int] | None = None,
        cls_hidden: int | None = None, weights: str | Path | None = None, weights_prefix: str = "",
        weights_strict: bool = True, cls_pool: str = "gap",
    ) -> None:
        super().__init__()
        if cls_pool not in CLS_POOLS:
            raise ValueError(f"mtunet cls_pool: expected one of {list(CLS_POOLS)}, got {cls_pool!r}")
        self.in_channels, self.depth = in_channels, depth
        self.pool = gap if cls_pool == "gap" else gap_gmp
        plan = DropoutPlan(dropout, dropout_placement, dropout_levels)
        self.encoder = Encoder(encoder, in_channels, width, depth)
        chs = self.encoder.channels
        self.bottleneck_drop = plan.bottleneck()
        # decoder level j (0 = deepest) goes from chs[depth - j] to chs[depth - j - 1]
        self.ups = nn.ModuleList(UpBlock(chs[depth - j], chs[depth - j - 1], chs[depth - j - 1]) for j in range(depth))
        self.dec_drops = plan.decoders(depth)
        self.seg_head = nn.Conv2d(chs[0], seg_classes, 1)
        hidden = cls_hidden or 4 * width
        self.classifier = nn.Sequential(
            plan.classifier(), nn.Linear(chs[-1] * (1 if cls_pool == "gap" else 2), hidden), nn.ReLU(inplace=True),
            plan.classifier(), nn.Linear(hidden, num_classes),
        )
        if weights is not None:
            load_weights(self, weights, prefix=weights_prefix, strict=weights_strict)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.in_channels, 2**self.depth)
        return self.encoder(x)


@MODELS.register("mtunet")
def build_mtunet(**options: Any) -> MTUNet:
    return MTUNet(**options)

