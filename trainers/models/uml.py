"""Uncertainty-informed Mutual Learning, UML (Ren, Zou et al., UML, MICCAI 2023, Sec. 2).

* Dual backbone: a VGG-style classification backbone and a residual (Res2Net stand-in)
  segmentation backbone, ``depth + 1`` stages each (f_1..f_4 at H..H/8 by default).
* Feature mixer, pairwise channel-map interaction (PCMI): per stage, channel affinities
  A = softmax(f^c f^s^T / sqrt(N)) exchange channels both ways; a 1x1 conv of the two mixed maps
  gives the mutual feature f^m. The last mutual feature is added to both original features.
* Mutual feature decoder: a U-Net over f^m -> preliminary evidential mask logits
  (``aux["prelim_seg_logits"]``), alpha = softplus + 1 = M, pixel uncertainty U^s = Q / S (Eq. 2,
  ``aux["seg_uncertainty"]``, (B, 1, H, W)).
* Uncertainty Navigator (Eq. 3-4): a U-Net over f^s whose bottom feature is multiplied by
  exp(-U^s) (downsampled); per-level maps s_i (``aux["deep_supervision"]``, s_1 first);
  M^r = (s_1 + M) * exp(-U^s); r^s = Cat(Conv(M^r), Cat(f_1^s, f_2^b)); final mask from r^s.
* Uncertainty Instructor (Eq. 5): r^c = f_4^c + Conv(d^3(r^s)) * f_4^c; GAP; FC -> evidential
  class logits (the evidential head applies softplus outside the model).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import dirichlet_alpha, vacuity
from . import MODELS
from .base import JointModel, JointOutput
from .blocks import BasicBlock, DoubleConv, DropoutPlan, UpBlock, VGGBlock, check_input, conv_bn_act, gap


class PCMI(nn.Module):
    """Pairwise channel-map interaction: mix classification and segmentation features."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.fuse = conv_bn_act(2 * c, c, k=1)

    def forward(self, fc: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
        b, c, h, w = fc.shape
        qc, qs = fc.flatten(2), fs.flatten(2)  # (B, C, N)
        scale = 1.0 / math.sqrt(h * w)
        a_cs = torch.softmax(qc @ qs.transpose(1, 2) * scale, -1)  # cls channels attend seg channels
        a_sc = torch.softmax(qs @ qc.transpose(1, 2) * scale, -1)
        mc = fc + (a_cs @ qs).reshape(b, c, h, w)
        ms = fs + (a_sc @ qc).reshape(b, c, h, w)
        return self.fuse(torch.cat([mc, ms], 1))


class UMLNet(JointModel):
    """Dual backbone + mutual feature decoder + Uncertainty Navigator + Instructor
    (Ren, Zou et al., UML, MICCAI 2023)."""

    default_loss = "uml"
    #: UML is evidential by design: subjective-logic opinions for the class and every pixel
    #: (Ren, Zou et al., UML, MICCAI 2023, Eq. 1-2), trained with its evidential loss (Eq. 6-9)
    default_heads = ("evidential", "evidential")

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 3, width: int = 16, depth: int = 3,
        dropout: float = 0.2, dropout_placement: str | Iterable[str] | None = ("decoder", "classifier"),
        seg_classes: int = 2, dropout_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.in_channels, self.depth = in_channels, depth
        chs = [width * 2**i for i in range(depth + 1)]
        plan = DropoutPlan(dropout, dropout_placement, dropout_levels)
        self.cls_stages = nn.ModuleList(
            VGGBlock(in_channels, chs[0], 2)
            if i == 0
            else nn.Sequential(nn.MaxPool2d(2), VGGBlock(chs[i - 1], chs[i], 2 if i < 2 else 3))
            for i in range(depth + 1)
        )
        self.seg_stages = nn.ModuleList(
            nn.Sequential(conv_bn_act(in_channels, chs[0]), BasicBlock(chs[0], chs[0])) if i == 0
            else nn.Sequential(BasicBlock(chs[i - 1], chs[i], 2), BasicBlock(chs[i], chs[i]))
            for i in range(depth + 1)
        )
        self.mixers = nn.ModuleList(PCMI(c) for c in chs)
        self.bottleneck_drop = plan.bottleneck()
        # mutual feature decoder (deterministic apart from the bottleneck dropout)
        self.mut_ups = nn.ModuleList(
            UpBlock(chs[depth - j], chs[depth - j - 1], chs[depth - j - 1]) for j in range(depth)
        )
        self.mut_head = nn.Conv2d(chs[0], seg_classes, 1)
        # Uncertainty Navigator
        self.un_bottom = DoubleConv(chs[-1], chs[-1])
        self.un_ups = nn.ModuleList(
            UpBlock(chs[depth - j], chs[depth - j - 1], chs[depth - j - 1]) for j in range(depth)
        )
        self.dec_drops = plan.decoders(depth)
        self.s_heads = nn.ModuleList(nn.Conv2d(c, seg_classes, 1) for c in chs)  # s_i at level i
        self.mr_conv = conv_bn_act(seg_classes, chs[0])
        self.refine = DoubleConv(3 * chs[0], chs[0])
        self.seg_head = nn.Conv2d(chs[0], seg_classes, 1)
        # Uncertainty Instructor + evidential classifier
        self.ui_conv = nn.Conv2d(3 * chs[0], chs[-1], 3, padding=1)
        self.classifier = nn.Sequential(plan.classifier(), nn.Linear(chs[-1], num_classes))

    def encode(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        check_input(x, self.in_channels, 2**self.depth)
        fc, fs, fm = [], [], []
        xc = xs = x
        for cls_stage, seg_stage, mix in zip(self.cls_stages, self.seg_stages, self.mixers):
            xc, xs = cls_stage(xc), seg_stage(xs)
            fc.append(xc)
            fs.append(xs)
            fm.append(mix(xc, xs))
        fc[-1] = fc[-1] + fm[-1]  # combine the last mutual feature with the original features
        fs[-1] = fs[-1] + fm[-1]
        return {"cls": fc, "seg": fs, "mutual": fm}

    def decode(self, features: dict[str, list[torch.Tensor]]) -> JointOutput:
        fc, fs, fm = list(features["cls"]), list(features["seg"]), list(features["mutual"])
        d = self.depth
        fc[-1], fs[-1], fm[-1] = (self.bottleneck_drop(t) for t in (fc[-1], fs[-1], fm[-1]))
        # step 1: mutual feature decoder -> M (alpha) and U^s (Eq. 2)
        m = fm[-1]
        for j, mut_up in enumerate(self.mut_ups):
            m = mut_up(m, fm[d - j - 1])
        prelim = self.mut_head(m)
        alpha = dirichlet_alpha(prelim)
        u = vacuity(alpha).unsqueeze(1)
        reliab = torch.exp(-u)
        # step 2: Uncertainty Navigator
        x = self.un_bottom(fs[-1] * F.avg_pool2d(reliab, 2**d))  # U^s guides the bottom feature
        maps = {d: self.s_heads[d](x)}
        for j in range(d):
            level = d - j - 1
            up_block = cast(UpBlock, self.un_ups[j])
            up = up_block.up(x)
            x = self.dec_drops[j](up_block.conv(torch.cat([up, fs[level]], 1)))
            maps[level] = self.s_heads[level](x)
        m_r = (maps[0] + alpha) * reliab  # Eq. 3
        r_s = torch.cat([self.mr_conv(m_r), fs[0], up], 1)  # Eq. 4 (up = f_2^b)
        seg_logits = self.seg_head(self.refine(r_s))
        # step 3: Uncertainty Instructor (Eq. 5)
        r_c = fc[-1] + self.ui_conv(F.avg_pool2d(r_s, 2**d)) * fc[-1]
        emb = gap(r_c)
        aux = {
            "prelim_seg_logits": prelim,
            "seg_uncertainty": u,
            "deep_supervision": [maps[i] for i in range(d + 1)],
        }
        return JointOutput(cls_logits=self.classifier(emb), seg_logits=seg_logits, aux=aux, embedding=emb)


@MODELS.register("uml")
def build_uml(**options: Any) -> UMLNet:
    return UMLNet(**options)
