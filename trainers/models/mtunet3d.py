"""3D multi-task U-Net: the baseline of the volume models.

The multi-task U-Net of :mod:`.mtunet` (a U-Net whose bottleneck also feeds a classification head,
GAP -> FC -> ReLU -> FC) with 3D levels as in the 3D U-Net of Cicek et al., MICCAI 2016: two
3x3x3 conv-BN-ReLU per level, 2x2x2 max-pooling down, 2x2x2 transposed convolutions up with skip
concatenation; channels ``width * 2**i``. Default loss: the "mtunet" loss (seg : cls = 5 : 1).

MC-dropout contract as in :mod:`.base`: ``encode`` = the encoder, ``decode`` = the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from . import MODELS
from .blocks3d import DoubleConv3d, DropoutPlan3d, UpBlock3d, check_volume, gap3
from .unet_decoder import UNetDecoder


class MTUNet3D(UNetDecoder):
    """3D U-Net + bottleneck classifier (multi-task U-Net baseline in 3D)."""

    default_loss = "mtunet"
    pool = staticmethod(gap3)
    spatial_dims = 3

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 3, width: int = 16, depth: int = 4,
        dropout: float = 0.2, dropout_placement: str | Iterable[str] | None = ("decoder", "classifier"),
        seg_classes: int = 2, dropout_levels: Sequence[int] | None = None, cls_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if seg_classes < 2:
            raise ValueError(f"seg_classes counts the background too: >= 2, got {seg_classes}")
        self.in_channels, self.depth = in_channels, depth
        chs = [width * 2**i for i in range(depth + 1)]
        plan = DropoutPlan3d(dropout, dropout_placement, dropout_levels)
        self.stages = nn.ModuleList(
            DoubleConv3d(in_channels, chs[0]) if i == 0 else nn.Sequential(nn.MaxPool3d(2),
                                                                          DoubleConv3d(chs[i - 1], chs[i]))
            for i in range(depth + 1)
        )
        self.bottleneck_drop = plan.bottleneck()
        self.ups = nn.ModuleList(UpBlock3d(chs[depth - j], chs[depth - j - 1], chs[depth - j - 1])
                                 for j in range(depth))
        self.dec_drops = plan.decoders(depth)
        self.seg_head = nn.Conv3d(chs[0], seg_classes, 1)
        hidden = cls_hidden or 4 * width
        self.classifier = nn.Sequential(
            plan.classifier(), nn.Linear(chs[-1], hidden), nn.ReLU(inplace=True), plan.classifier(),
            nn.Linear(hidden, num_classes),
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_volume(x, self.in_channels, 2**self.depth)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


@MODELS.register("mtunet3d")
def build_mtunet3d(**options: Any) -> MTUNet3D:
    return MTUNet3D(**options)
