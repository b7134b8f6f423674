"""MTTU-Net in 2D (Cheng et al., MTTU-Net, IEEE TMI 2022, Sec. III-A).

* CNN encoder: 3x3 stem to ``width`` channels, then ``depth`` stride-2 3x3 convs doubling the
  channels, each level followed by pre-activation residual blocks (BN, LeakyReLU, conv) x 2
  (Eq. 1-2; default 1, 2, 2, 4 blocks as in TransBTS). F_1..F_4 at H .. H/8 by default.
* Transformer at the bottleneck (Eq. 3-8): 3x3 conv projection to d = 32*width (512 at the
  default size), learnable position embedding E_pos (N x d) sized for ``image_size`` and
  bilinearly interpolated when the token grid differs, L = 4 pre-norm layers -> F_5.
* Decoder (Eq. 9): from F_5, each level = 1x1 conv + stride-2 transposed conv, concat with the
  skip F_i, 1x1 conv, residual block; final 1x1 conv.
* Classifier (Eq. 10-12): Concat(GAP, GMP) of F_4 and F_5 -> FC 512 - 32 - K
  (32*width, 2*width, K).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS
from .base import JointModel, JointOutput
from .blocks import DropoutPlan, PreActResBlock, TransformerLayer, check_input, gap, gmp


class MTTUNet(JointModel):
    """Hybrid CNN-Transformer multi-task U-Net (Cheng et al., MTTU-Net, IEEE TMI 2022)."""

    default_loss = "mttu"

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 3, width: int = 16, depth: int = 3,
        dropout: float = 0.2, dropout_placement: str | Iterable[str] | None = ("decoder", "classifier"),
        seg_classes: int = 2, dropout_levels: Sequence[int] | None = None, image_size: int = 256,
        transformer_dim: int | None = None, transformer_layers: int = 4, heads: int = 8,
        mlp_ratio: float = 4.0, res_blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.depth = in_channels, depth
        chs = [width * 2**i for i in range(depth + 1)]
        d = transformer_dim or 32 * width
        if d % heads:
            raise ValueError(f"transformer_dim {d} must be divisible by heads {heads}")
        blocks = list(res_blocks) if res_blocks is not None else ([1, 2, 2, 4] + [4] * depth)[: depth + 1]
        plan = DropoutPlan(dropout, dropout_placement, dropout_levels)
        self.stem = nn.Conv2d(in_channels, chs[0], 3, padding=1)
        levels: list[nn.Module] = []
        for i in range(depth + 1):
            down: list[nn.Module] = [] if i == 0 else [nn.Conv2d(chs[i - 1], chs[i], 3, stride=2, padding=1)]
            levels.append(nn.Sequential(*down, *[PreActResBlock(chs[i], chs[i]) for _ in range(blocks[i])]))
        self.levels = nn.ModuleList(levels)
        self.proj = nn.Conv2d(chs[-1], d, 3, padding=1)
        self.grid = max(image_size // 2**depth, 1)
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.transformer = nn.ModuleList(TransformerLayer(d, heads, mlp_ratio) for _ in range(transformer_layers))
        self.norm = nn.LayerNorm(d)
        self.bottleneck_drop = plan.bottleneck()
        self.reduce = nn.Conv2d(d, chs[-1], 1)
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(chs[depth - j], chs[depth - j - 1], 1),
                          nn.ConvTranspose2d(chs[depth - j - 1], chs[depth - j - 1], 2, stride=2))
            for j in range(depth)
        )
        self.fuse = nn.ModuleList(nn.Conv2d(2 * chs[depth - j - 1], chs[depth - j - 1], 1) for j in range(depth))
        self.res = nn.ModuleList(PreActResBlock(chs[depth - j - 1], chs[depth - j - 1]) for j in range(depth))
        self.dec_drops = plan.decoders(depth)
        self.seg_head = nn.Conv2d(chs[0], seg_classes, 1)
        self.classifier = nn.Sequential(
            plan.classifier(), nn.Linear(2 * chs[-1] + 2 * d, 32 * width), nn.ReLU(inplace=True),
            plan.classifier(), nn.Linear(32 * width, 2 * width), nn.ReLU(inplace=True),
            nn.Linear(2 * width, num_classes),
        )

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """E_pos for an h x w token grid (bilinear interpolation of the learned grid)."""
        if (h, w) == (self.grid, self.grid):
            return self.pos
        d = self.pos.shape[-1]
        grid = self.pos.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, d)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.in_channels, 2**self.depth)
        x = self.stem(x)
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        z = self.proj(x)
        b, d, h, w = z.shape
        tokens = z.flatten(2).transpose(1, 2) + self.position_embedding(h, w)  # Eq. 3: Z_0
        for layer in self.transformer:
            tokens = layer(tokens)
        f5 = self.norm(tokens).transpose(1, 2).reshape(b, d, h, w)
        return feats + [f5]

    def decode(self, features: list[torch.Tensor]) -> JointOutput:
        feats = list(features)
        f4, f5 = feats[-2], self.bottleneck_drop(feats[-1])
        pooled = torch.cat([gap(f4), gmp(f4), gap(f5), gmp(f5)], 1)  # Eq. 10-11
        cls_logits = self.classifier(pooled)
        x = self.reduce(f5)
        for j in range(self.depth):
            x = self.ups[j](x)
            x = self.fuse[j](torch.cat([x, feats[self.depth - j - 1]], 1))
            x = self.dec_drops[j](self.res[j](x))
        return JointOutput(cls_logits=cls_logits, seg_logits=self.seg_head(x), aux={}, embedding=gap(f5))


@MODELS.register("mttu")
def build_mttu(**options: Any) -> MTTUNet:
    return MTTUNet(**options)
