"""Joint reverse learning U-Net (Al-masni, Al-Shamiri et al., JRL, Bioengineering 2024, Sec. 3.4).

nnU-Net-like U-Net: channels 32, 64, 128, 256, 320, 320 at the default size (2*width * 2**i,
capped at 20*width), each encoder block = 3x3 conv stride 2 then 3x3 conv stride 1 (BN, ReLU),
transposed-convolution upsampling. Joint learning:

* seg -> cls attention: the foreground probability of the first segmentation pass multiplies
  the features of the last two decoder levels before they enter the classifier (MTL1);
* CBAM on the last two encoder levels feeds the classifier (MTL3, Fig. 4);
* reverse connection (Eq. 2): X_L = Phi(W_L * [X_{L-1} . FC_cls^k] + b_L). The last two decoder
  levels are computed a second time with their upsampled input multiplied channel-wise by
  FC_cls^k = sigmoid(W1[:, block_L]^T h), the first FC layer's weights for that level's k
  channels applied to the hidden classification activations h. The second pass gives the
  final mask; the first pass is ``aux["initial_seg_logits"]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS
from .base import JointModel, JointOutput
from .blocks import CBAM, DoubleConv, DropoutPlan, check_input, gap


class JRLUNet(JointModel):
    """U-Net with seg->cls attention, cls->seg reverse connection and CBAM
    (Al-masni, Al-Shamiri et al., JRL, Bioengineering 2024)."""

    default_loss = "jrl"

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 3, width: int = 16, depth: int = 5,
        dropout: float = 0.2, dropout_placement: str | Iterable[str] | None = ("decoder", "classifier"),
        seg_classes: int = 2, dropout_levels: Sequence[int] | None = None, cls_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError("jrl needs depth >= 2 (the reverse connection recomputes two decoder levels)")
        self.in_channels, self.depth = in_channels, depth
        chs = [min(2 * width * 2**i, 20 * width) for i in range(depth + 1)]
        self.channels = chs
        plan = DropoutPlan(dropout, dropout_placement, dropout_levels)
        self.stages = nn.ModuleList(
            DoubleConv(in_channels if i == 0 else chs[i - 1], chs[i], stride=1 if i == 0 else 2)
            for i in range(depth + 1)
        )
        self.cbam = nn.ModuleList([CBAM(chs[-2]), CBAM(chs[-1])])
        self.bottleneck_drop = plan.bottleneck()
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(chs[depth - j], chs[depth - j - 1], 2, stride=2) for j in range(depth)
        )
        self.blocks = nn.ModuleList(DoubleConv(2 * chs[depth - j - 1], chs[depth - j - 1]) for j in range(depth))
        self.dec_drops = plan.decoders(depth)
        self.seg_head = nn.Conv2d(chs[0], seg_classes, 1)
        # classifier input: GAP(CBAM(f_{D-1})), GAP(CBAM(f_D)), GAP(dec_{D-2} * m), GAP(dec_{D-1} * m)
        self.rev_channels = (chs[1], chs[0])  # channels of the last two decoder levels
        self.feat_dim = chs[-2] + chs[-1] + chs[1] + chs[0]
        hidden = cls_hidden or 8 * width
        self.cls_drop1, self.cls_drop2 = plan.classifier(), plan.classifier()
        self.fc1 = nn.Linear(self.feat_dim, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.in_channels, 2**self.depth)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def _level(self, j: int, x: torch.Tensor, skip: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        up = self.ups[j](x)
        if scale is not None:  # Eq. 2: X_{L-1} . FC_cls^k
            up = up * scale[:, :, None, None]
        return self.dec_drops[j](self.blocks[j](torch.cat([up, skip], 1)))

    def decode(self, features: list[torch.Tensor]) -> JointOutput:
        feats = list(features)
        d = self.depth
        x = self.bottleneck_drop(feats[-1])
        emb = gap(x)
        inputs, levels = [], []  # inputs[j] = what decoder level j upsamples
        for j in range(d):
            inputs.append(x)
            x = self._level(j, x, feats[d - j - 1])
            levels.append(x)
        seg0 = self.seg_head(x)
        fg = 1.0 - torch.softmax(seg0, 1)[:, :1]  # lesion probability: seg -> cls attention
        fg_half = F.avg_pool2d(fg, 2)
        parts = [
            gap(self.cbam[0](feats[-2])), gap(self.cbam[1](feats[-1])),
            gap(levels[-2] * fg_half), gap(levels[-1] * fg),
        ]
        h = F.relu(self.fc1(self.cls_drop1(torch.cat(parts, 1))))
        cls_logits = self.fc2(self.cls_drop2(h))
        # reverse connection: FC weights of each decoder level's feature block, weighted by h
        c_a, c_b = self.rev_channels
        start = self.feat_dim - c_a - c_b
        w_a = self.fc1.weight[:, start:start + c_a]
        w_b = self.fc1.weight[:, start + c_a:]
        scale_a, scale_b = torch.sigmoid(h @ w_a), torch.sigmoid(h @ w_b)
        x2 = self._level(d - 2, inputs[d - 2], feats[1], scale_a)
        x2 = self._level(d - 1, x2, feats[0], scale_b)
        seg = self.seg_head(x2)
        return JointOutput(cls_logits=cls_logits, seg_logits=seg, aux={"initial_seg_logits": seg0}, embedding=emb)


@MODELS.register("jrl")
def build_jrl(**options: Any) -> JRLUNet:
    return JRLUNet(**options)
