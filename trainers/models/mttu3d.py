"""MTTU-Net in 3D, as published (Cheng et al., MTTU-Net, IEEE TMI 2022, Sec. III-A, Fig. 1).

* CNN encoder (Eq. 1): 3x3x3 conv to ``width`` (16) channels, then ``depth`` (3) stride-2 3x3x3
  convs doubling the channels (no max-pooling), each level followed by residual blocks of
  (BN, LeakyReLU, 3x3x3 conv) x 2 (1, 2, 2, 4 blocks). F_1..F_4 at H .. H/8; F_4 has 8*width = 128
  channels at the default size.
* Transformer (Eq. 2-8): a 3x3x3 conv projects F_4 to d = 32*width (512) channels; the
  (H/8)(W/8)(D/8) voxels become N tokens, plus a learnable position embedding E_pos (N x d) sized
  for ``image_size`` (the paper's 128^3 crop) and trilinearly interpolated for other grids; L = 4
  pre-norm layers (MSA + MLP) -> F_5.
* Decoder (Eq. 9): from F_5 (1x1x1 conv back to 8*width), each level = 1x1x1 conv + stride-2
  transposed conv, concat with the skip F_i, 1x1x1 conv, 3x3x3 residual block; final 1x1x1 conv
  to ``seg_classes`` regions (background included).
* Multi-scale classifier (Eq. 10-12): Concat(GAP(F_4), GMP(F_4), GAP(F_5), GMP(F_5)) -> FC 512 -
  32 - K (32*width, 2*width, K).
* The learned uncertainty weighting of the two tasks (Eq. 15) lives in the loss, as for the 2D
  model: ``default_loss = "mttu"`` (:class:`medloop.trainers.losses.composite.MTTULoss`).

MC-dropout contract as in :mod:`.base`: ``encode`` = encoder + transformer (deterministic),
``decode`` = bottleneck / decoder / classifier dropout and everything after.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS
from .base import JointModel, JointOutput
from .blocks import TransformerLayer
from .blocks3d import DropoutPlan3d, PreActResBlock3d, check_volume, gap3, gmp3


def _triple(size: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(size, int):
        return (size, size, size)
    t = tuple(int(s) for s in size)
    if len(t) != 3:
        raise ValueError(f"image_size must be an int or (D, H, W), got {size!r}")
    return (t[0], t[1], t[2])


class MTTUNet3D(JointModel):
    """Hybrid 3D CNN-Transformer multi-task U-Net (Cheng et al., MTTU-Net, IEEE TMI 2022)."""

    default_loss = "mttu"
    spatial_dims = 3

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 3, width: int = 16, depth: int = 3,
        dropout: float = 0.2, dropout_placement: str | Iterable[str] | None = ("decoder", "classifier"),
        seg_classes: int = 2, dropout_levels: Sequence[int] | None = None,
        image_size: int | Sequence[int] = 128, transformer_dim: int | None = None, transformer_layers: int = 4,
        heads: int = 8, mlp_ratio: float = 4.0, res_blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if seg_classes < 2:
            raise ValueError(f"seg_classes counts the background too: >= 2, got {seg_classes}")
        self.in_channels, self.depth = in_channels, depth
        chs = [width * 2**i for i in range(depth + 1)]
        d = transformer_dim or 32 * width
        if d % heads:
            raise ValueError(f"transformer_dim {d} must be divisible by heads {heads}")
        blocks = list(res_blocks) if res_blocks is not None else ([1, 2, 2, 4] + [4] * depth)[: depth + 1]
        plan = DropoutPlan3d(dropout, dropout_placement, dropout_levels)
        self.stem = nn.Conv3d(in_channels, chs[0], 3, padding=1)
        levels: list[nn.Module] = []
        for i in range(depth + 1):
            down: list[nn.Module] = [] if i == 0 else [nn.Conv3d(chs[i - 1], chs[i], 3, stride=2, padding=1)]
            levels.append(nn.Sequential(*down, *[PreActResBlock3d(chs[i], chs[i]) for _ in range(blocks[i])]))
        self.levels = nn.ModuleList(levels)
        self.proj = nn.Conv3d(chs[-1], d, 3, padding=1)
        self.grid = tuple(max(s // 2**depth, 1) for s in _triple(image_size))
        self.pos = nn.Parameter(torch.zeros(1, math.prod(self.grid), d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.transformer = nn.ModuleList(TransformerLayer(d, heads, mlp_ratio) for _ in range(transformer_layers))
        self.norm = nn.LayerNorm(d)
        self.bottleneck_drop = plan.bottleneck()
        self.reduce = nn.Conv3d(d, chs[-1], 1)
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv3d(chs[depth - j], chs[depth - j - 1], 1),
                          nn.ConvTranspose3d(chs[depth - j - 1], chs[depth - j - 1], 2, stride=2))
            for j in range(depth)
        )
        self.fuse = nn.ModuleList(nn.Conv3d(2 * chs[depth - j - 1], chs[depth - j - 1], 1) for j in range(depth))
        self.res = nn.ModuleList(PreActResBlock3d(chs[depth - j - 1], chs[depth - j - 1]) for j in range(depth))
        self.dec_drops = plan.decoders(depth)
        self.seg_head = nn.Conv3d(chs[0], seg_classes, 1)
        self.classifier = nn.Sequential(
            plan.classifier(), nn.Linear(2 * chs[-1] + 2 * d, 32 * width), nn.ReLU(inplace=True),
            plan.classifier(), nn.Linear(32 * width, 2 * width), nn.ReLU(inplace=True),
            nn.Linear(2 * width, num_classes),
        )

    def position_embedding(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """E_pos (1, N, d) for a (D', H', W') token grid (trilinear interpolation of the learned grid)."""
        if grid == self.grid:
            return self.pos
        d = self.pos.shape[-1]
        g = self.pos.reshape(1, *self.grid, d).permute(0, 4, 1, 2, 3)
        g = F.interpolate(g, size=grid, mode="trilinear", align_corners=False)
        return g.permute(0, 2, 3, 4, 1).reshape(1, math.prod(grid), d)

    def tokens(self, f4: torch.Tensor) -> torch.Tensor:
        """Z_0 = E_pat + E_pos (Eq. 2): (B, N, d) with N = the voxels of the bottleneck grid."""
        z = self.proj(f4)
        grid = (z.shape[2], z.shape[3], z.shape[4])
        return z.flatten(2).transpose(1, 2) + self.position_embedding(grid)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_volume(x, self.in_channels, 2**self.depth)
        x = self.stem(x)
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        z = self.tokens(x)
        for layer in self.transformer:
            z = layer(z)
        b, (gd, gh, gw) = x.shape[0], x.shape[2:]
        f5 = self.norm(z).transpose(1, 2).reshape(b, -1, gd, gh, gw)
        return feats + [f5]

    def decode(self, features: list[torch.Tensor]) -> JointOutput:
        feats = list(features)
        f4, f5 = feats[-2], self.bottleneck_drop(feats[-1])
        pooled = torch.cat([gap3(f4), gmp3(f4), gap3(f5), gmp3(f5)], 1)  # Eq. 10-11
        cls_logits = self.classifier(pooled)  # Eq. 12 before the softmax
        x = self.reduce(f5)
        for j in range(self.depth):
            x = self.ups[j](x)
            x = self.fuse[j](torch.cat([x, feats[self.depth - j - 1]], 1))
            x = self.dec_drops[j](self.res[j](x))
        return JointOutput(cls_logits=cls_logits, seg_logits=self.seg_head(x), aux={}, embedding=gap3(f5))


@MODELS.register("mttu3d")
def build_mttu3d(**options: Any) -> MTTUNet3D:
    return MTTUNet3D(**options)
