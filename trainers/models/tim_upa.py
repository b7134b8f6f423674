"""Multi-level bidirectional decoder interaction with Uncertainty-Proxy Attention (Al Shafi, Zunayed et al., TIM/UPA).

* Encoder: ``depth + 1`` conv stages (max-pool between), each augmented by HMSF (Eq. 9-10):
  dilated separable 3x3 convs r = 1, 2, 4, softmax scale attention from GAP, 1x1 fusion
  (added residually to the stage output).
* Decoder: transposed-conv up, attention-gated skip, two convs, at ``depth`` levels.
* TIM at every decoder level (Eq. 1-5, tau = 0.7) and UPA (Eq. 6-8). Classification features
  f_clf^l (16*width = 256 at the default size) are GAP + MLP of the encoder stage at the same
  resolution; the classifier takes GAP(bottleneck) and all f_clf^{l,final}.
* Deep supervision: 1x1 heads on the coarser decoder levels -> ``aux["deep_supervision"]``.

UPA normalises u by a running mean (u / (mean u + eps), Eq. 7) kept like BatchNorm statistics:
batch mean in training, running mean in eval, so a sample's output never depends on the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import MODELS
from .base import JointModel, JointOutput
from .blocks import DoubleConv, DropoutPlan, SepConv, UpBlock, check_input, gap


class HMSF(nn.Module):
    """Hierarchical multi-scale fusion (Eq. 9-10): softmax attention over dilations 1, 2, 4."""

    def __init__(self, c: int, rates: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(SepConv(c, r) for r in rates)
        self.squeeze = nn.Linear(c, max(c // 8, 4))
        self.scale = nn.Linear(max(c // 8, 4), len(rates))
        self.out = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([b(x) for b in self.branches], 1)  # (B, R, C, H, W)
        alpha = torch.softmax(self.scale(F.relu(self.squeeze(gap(x)))), 1)  # Eq. 9-10
        return x + self.out((alpha[:, :, None, None, None] * feats).sum(1))


class TIM(nn.Module):
    """Task Interaction Module (Eq. 1-5)."""

    def __init__(self, c: int, f: int, tau: float = 0.7) -> None:
        super().__init__()
        self.tau = tau
        self.alpha = nn.Conv2d(c, c, 1)
        self.phi = nn.Sequential(nn.Linear(c, f), nn.BatchNorm1d(f))
        self.g_clf = nn.Sequential(nn.Linear(f, max(f // 4, 4)), nn.ReLU(inplace=True), nn.Linear(max(f // 4, 4), f))
        self.psi = nn.Linear(f, c)
        self.g_seg = nn.Sequential(nn.Linear(c, max(c // 4, 4)), nn.ReLU(inplace=True), nn.Linear(max(c // 4, 4), c))

    def forward(self, d: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = self.phi(gap(F.relu(self.alpha(d))))  # Eq. 1
        f_enh = f + torch.sigmoid(self.g_clf(ctx)) * ctx  # Eq. 2
        proj = torch.sigmoid(self.psi(f))  # Eq. 3
        mu = 1 + self.tau * torch.sigmoid(self.g_seg(gap(d))) * proj  # Eq. 4
        return d * mu[:, :, None, None], f_enh  # Eq. 5


class UPA(nn.Module):
    """Uncertainty-Proxy Attention (Eq. 6-8)."""

    u_mean: torch.Tensor  # buffer: running mean of the proxies

    def __init__(self, hidden: int = 32, momentum: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))
        self.momentum, self.eps = momentum, eps
        self.register_buffer("u_mean", torch.ones(2))

    def forward(
        self, d: torch.Tensor, d_enh: torch.Tensor, f: torch.Tensor, f_enh: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.stack([d_enh.var(dim=(2, 3), unbiased=False).mean(1), f_enh.var(dim=1, unbiased=False)], 1)  # Eq. 6
        if self.training:
            mean = u.detach().mean(0)
            with torch.no_grad():
                self.u_mean.lerp_(mean, self.momentum)
        else:
            mean = self.u_mean
        w = torch.softmax(self.mlp(u / (mean + self.eps)), 1)  # Eq. 7
        d_final = d + w[:, 0, None, None, None] * (d_enh - d)  # Eq. 8
        f_final = f + w[:, 1, None] * (f_enh - f)
        return d_final, f_final


class TIMUPANet(JointModel):
    """HMSF encoder + attention-gated decoder with TIM and UPA at every level (Al Shafi, Zunayed et al., TIM/UPA)."""

    default_loss = "tim_upa"

    def __init__(
        self, *, in_channels: int = 1, num_classes: int = 3, width: int = 16, depth: int = 4,
        dropout: float = 0.2, dropout_placement: str | Iterable[str] | None = ("decoder", "classifier"),
        seg_classes: int = 2, dropout_levels: Sequence[int] | None = None, cls_dim: int | None = None,
        tau: float = 0.7,
    ) -> None:
        super().__init__()
        self.in_channels, self.depth = in_channels, depth
        chs = [width * 2**i for i in range(depth + 1)]
        fdim = cls_dim or 16 * width
        plan = DropoutPlan(dropout, dropout_placement, dropout_levels)
        self.stages = nn.ModuleList(
            DoubleConv(in_channels, chs[0])
            if i == 0
            else nn.Sequential(nn.MaxPool2d(2), DoubleConv(chs[i - 1], chs[i]))
            for i in range(depth + 1)
        )
        self.hmsf = nn.ModuleList(HMSF(c) for c in chs)
        self.bottleneck_drop = plan.bottleneck()
        dec = [chs[depth - j - 1] for j in range(depth)]  # decoder level j channels (0 = deepest)
        self.ups = nn.ModuleList(UpBlock(chs[depth - j], dec[j], dec[j], gate=True) for j in range(depth))
        self.clf_init = nn.ModuleList(nn.Sequential(nn.Linear(c, fdim), nn.ReLU(inplace=True)) for c in dec)
        self.tims = nn.ModuleList(TIM(c, fdim, tau) for c in dec)
        self.upas = nn.ModuleList(UPA() for _ in dec)
        self.dec_drops = plan.decoders(depth)
        self.ds_heads = nn.ModuleList(nn.Conv2d(c, seg_classes, 1) for c in dec[:-1])
        self.seg_head = nn.Conv2d(chs[0], seg_classes, 1)
        self.classifier = nn.Sequential(
            plan.classifier(), nn.Linear(chs[-1] + depth * fdim, fdim), nn.ReLU(inplace=True),
            plan.classifier(), nn.Linear(fdim, num_classes),
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.in_channels, 2**self.depth)
        feats = []
        for stage, fuse in zip(self.stages, self.hmsf):
            x = stage(x)
            feats.append(fuse(x))
        return feats

    def decode(self, features: list[torch.Tensor]) -> JointOutput:
        feats = list(features)
        x = self.bottleneck_drop(feats[-1])
        emb = gap(x)
        clf_streams, deep = [], []
        for j in range(self.depth):
            skip = feats[self.depth - j - 1]
            d = self.ups[j](x, skip)
            f = self.clf_init[j](gap(skip))
            d_enh, f_enh = self.tims[j](d, f)
            d, f = self.upas[j](d, d_enh, f, f_enh)
            x = self.dec_drops[j](d)
            clf_streams.append(f)
            if j < self.depth - 1:
                deep.append(self.ds_heads[j](x))
        cls_logits = self.classifier(torch.cat([emb] + clf_streams, 1))
        return JointOutput(
            cls_logits=cls_logits, seg_logits=self.seg_head(x), aux={"deep_supervision": deep}, embedding=emb
        )


@MODELS.register("tim_upa")
def build_tim_upa(**options: Any) -> TIMUPANet:
    return TIMUPANet(**options)
