"""MTTU-Net (Cheng et al., MTTU-Net, IEEE TMI 2022, Sec. III-A), one implementation for images (``mttu``)
and volumes (``mttu3d``, :mod:`.mttu3d`, as published): the layers below in 2D or 3D (``spatial_dims``).

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

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS
from .base import JointModel, JointOutput
from .blocks import DropoutPlan, PreActResBlock, TransformerLayer, check_input, gap, gmp
from .blocks3d import DropoutPlan3d, PreActResBlock3d, check_volume, gap3, gmp3


@dataclass(frozen=True)
class _Layers:
    """The 2D or 3D layers MTTU-Net is built from."""

    conv: type[nn.Module]
    conv_t: type[nn.Module]
    block: type[nn.Module]
    plan: type[DropoutPlan]
    check: Callable[[torch.Tensor, int, int], None]
    gap: Callable[[torch.Tensor], torch.Tensor]
    gmp: Callable[[torch.Tensor], torch.Tensor]
    interpolation: str


LAYERS = {
    2: _Layers(nn.Conv2d, nn.ConvTranspose2d, PreActResBlock, DropoutPlan, check_input, gap, gmp, "bilinear"),
    3: _Layers(nn.Conv3d, nn.ConvTranspose3d, PreActResBlock3d, DropoutPlan3d, check_volume, gap3, gmp3, "trilinear"),
}


def grid_size(size: int | Sequence[int], dims: int) -> tuple[int, ...]:
    """``image_size`` as one side per spatial axis (an int is a square / cube)."""
    if isinstance(size, int):
        return (size,) * dims
    t = tuple(int(s) for s in size)
    if len(t) != dims:
        raise ValueError(f"image_size must be an int or {dims} sides, got {size!r}")
    return t


class MTTUNet(JointModel):
    """Hybrid CNN-Transformer multi-task U-Net (Cheng et al., MTTU-Net, IEEE TMI 2022), 2D; the 3D model
    (:class:`.mttu3d.MTTUNet3D`) is this class with ``spatial_dims = 3``."""

    default_loss = "mttu"
    spatial_dims = 2

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 3, width: int = 16, depth: int = 3,
        dropout: float = 0.2, dropout_placement: str | Iterable[str] | None = ("decoder", "classifier"),
        seg_classes: int = 2, dropout_levels: Sequence[int] | None = None, image_size: int | Sequence[int] = 256,
        transformer_dim: int | None = None, transformer_layers: int = 4, heads: int = 8,
        mlp_ratio: float = 4.0, res_blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if seg_classes < 2:
            raise ValueError(f"seg_classes counts the background too: >= 2, got {seg_classes}")
        layers = LAYERS[self.spatial_dims]
        self._check, self._gap, self._gmp, self._interpolation = layers.check, layers.gap, layers.gmp, \
            layers.interpolation
        self.in_channels, self.depth = in_channels, depth
        chs = [width * 2**i for i in range(depth + 1)]
        d = transformer_dim or 32 * width
        if d % heads:
            raise ValueError(f"transformer_dim {d} must be divisible by heads {heads}")
        blocks = list(res_blocks) if res_blocks is not None else ([1, 2, 2, 4] + [4] * depth)[: depth + 1]
        plan = layers.plan(dropout, dropout_placement, dropout_levels)
        conv, block = layers.conv, layers.block
        self.stem = conv(in_channels, chs[0], 3, padding=1)
        levels: list[nn.Module] = []
        for i in range(depth + 1):
            down: list[nn.Module] = [] if i == 0 else [conv(chs[i - 1], chs[i], 3, stride=2, padding=1)]
            levels.append(nn.Sequential(*down, *[block(chs[i], chs[i]) for _ in range(blocks[i])]))
        self.levels = nn.ModuleList(levels)
        self.proj = conv(chs[-1], d, 3, padding=1)
        self.grid = tuple(max(s // 2**depth, 1) for s in grid_size(image_size, self.spatial_dims))
        self.pos = nn.Parameter(torch.zeros(1, math.prod(self.grid), d))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.transformer = nn.ModuleList(TransformerLayer(d, heads, mlp_ratio) for _ in range(transformer_layers))
        self.norm = nn.LayerNorm(d)
        self.bottleneck_drop = plan.bottleneck()
        self.reduce = conv(d, chs[-1], 1)
        self.ups = nn.ModuleList(
            nn.Sequential(conv(chs[depth - j], chs[depth - j - 1], 1),
                          layers.conv_t(chs[depth - j - 1], chs[depth - j - 1], 2, stride=2))
            for j in range(depth)
        )
        self.fuse = nn.ModuleList(conv(2 * chs[depth - j - 1], chs[depth - j - 1], 1) for j in range(depth))
        self.res = nn.ModuleList(block(chs[depth - j - 1], chs[depth - j - 1]) for j in range(depth))
        self.dec_drops = plan.decoders(depth)
        self.seg_head = conv(chs[0], seg_classes, 1)
        self.classifier = nn.Sequential(
            plan.classifier(), nn.Linear(2 * chs[-1] + 2 * d, 32 * width), nn.ReLU(inplace=True),
            plan.classifier(), nn.Linear(32 * width, 2 * width), nn.ReLU(inplace=True),
            nn.Linear(2 * width, num_classes),
        )

    def position_embedding(self, grid: tuple[int, ...]) -> torch.Tensor:
        """E_pos (1, N, d) for a token grid (bilinear / trilinear interpolation of the learned grid)."""
        if tuple(grid) == self.grid:
            return self.pos
        d = self.pos.shape[-1]
        g = self.pos.reshape(1, *self.grid, d).movedim(-1, 1)
        g = F.interpolate(g, size=tuple(grid), mode=self._interpolation, align_corners=False)
        return g.movedim(1, -1).reshape(1, math.prod(grid), d)

    def tokens(self, f4: torch.Tensor) -> torch.Tensor:
        """Z_0 = E_pat + E_pos (Eq. 2-3): (B, N, d) with N = the positions of the bottleneck grid."""
        z = self.proj(f4)
        return z.flatten(2).transpose(1, 2) + self.position_embedding(tuple(z.shape[2:]))

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check(x, self.in_channels, 2**self.depth)
        x = self.stem(x)
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        z = self.tokens(x)
        for layer in self.transformer:
            z = layer(z)
        f5 = self.norm(z).transpose(1, 2).reshape(x.shape[0], -1, *x.shape[2:])
        return feats + [f5]

    def decode(self, features: list[torch.Tensor]) -> JointOutput:
        feats = list(features)
        f4, f5 = feats[-2], self.bottleneck_drop(feats[-1])
        pooled = torch.cat([self._gap(f4), self._gmp(f4), self._gap(f5), self._gmp(f5)], 1)  # Eq. 10-11
        cls_logits = self.classifier(pooled)  # Eq. 12 before the softmax
        x = self.reduce(f5)
        for j in range(self.depth):
            x = self.ups[j](x)
            x = self.fuse[j](torch.cat([x, feats[self.depth - j - 1]], 1))
            x = self.dec_drops[j](self.res[j](x))
        return JointOutput(cls_logits=cls_logits, seg_logits=self.seg_head(x), aux={}, embedding=self._gap(f5))


@MODELS.register("mttu")
def build_mttu(**options: Any) -> MTTUNet:
    return MTTUNet(**options)
