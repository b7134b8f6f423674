"""Shared building blocks of the five papers' architectures.

Convolution / residual / MobileNetV2 / VGG blocks, CBAM (Woo et al. 2018, used by
Al-masni, Al-Shamiri et al., JRL, Bioengineering 2024), additive attention gates (Oktay et al.
2018, used by Al Shafi, Zunayed et al., TIM/UPA), a transposed-convolution U-Net up block, a small
pre-norm transformer layer (Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 5-8) and the dropout
placement helper that decides where MC-dropout layers sit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: where MC-dropout modules can sit (docs/models.md); "last_decoder" is the decoder's last level only, so
#: the cached MC sampler runs everything before it once and only that level's dropout, the segmentation
#: head and the classifier T times
PLACEMENTS = ("bottleneck", "decoder", "last_decoder", "classifier")


def conv_bn_act(
    cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1, groups: int = 1,
    act: str = "relu",
) -> nn.Sequential:
    """Conv -> BatchNorm -> activation ("relu", "relu6", "leaky" or "none")."""
    pad = dilation * (k // 2)
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif act == "relu6":
        layers.append(nn.ReLU6(inplace=True))
    elif act == "leaky":
        layers.append(nn.LeakyReLU(0.01, inplace=True))
    elif act != "none":
        raise ValueError(f"unknown activation {act!r}")
    return nn.Sequential(*layers)


class DoubleConv(nn.Module):
    """Two 3x3 conv-BN-ReLU; the first may be strided (nnU-Net style downsampling)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(cin, cout, stride=stride), conv_bn_act(cout, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class VGGBlock(nn.Sequential):
    """``n`` 3x3 conv-BN-ReLU layers (a VGG16 stage without its pooling)."""

    def __init__(self, cin: int, cout: int, n: int = 2) -> None:
        super().__init__(*[conv_bn_act(cin if i == 0 else cout, cout) for i in range(n)])


class BasicBlock(nn.Module):
    """ResNet basic block: conv-BN-ReLU-conv-BN + (projected) identity, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_act(cin, cout, stride=stride), conv_bn_act(cout, cout, act="none"))
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


class PreActResBlock(nn.Module):
    """Residual block of Cheng et al., MTTU-Net, IEEE TMI 2022: two (BN, LeakyReLU, 3x3 conv) units plus a skip
    (1x1 projection when the channels change); ``dims = 3``: the same with 3x3x3 convs on volumes."""

    def __init__(self, cin: int, cout: int, dims: int = 2) -> None:
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
        self.body = nn.Sequential(
            norm(cin), nn.LeakyReLU(0.01), conv(cin, cout, 3, padding=1, bias=False),
            norm(cout), nn.LeakyReLU(0.01), conv(cout, cout, 3, padding=1, bias=False),
        )
        self.short: nn.Module = nn.Identity() if cin == cout else conv(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.short(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise (strided), 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 6) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(cin, hidden, k=1, act="relu6"))
        layers += [conv_bn_act(hidden, hidden, stride=stride, groups=hidden, act="relu6"),
                   conv_bn_act(hidden, cout, k=1, act="none")]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class SepConv(nn.Sequential):
    """Dilated depthwise-separable 3x3 conv + BN + ReLU (Al Shafi, Zunayed et al., TIM/UPA, Eq. 9)."""

    def __init__(self, c: int, dilation: int) -> None:
        super().__init__(
            nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
        )


class ChannelAttention(nn.Module):
    """CBAM channel attention: sigmoid(MLP(avgpool) + MLP(maxpool))."""

    def __init__(self, c: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(c // reduction, 1)
        self.mlp = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(a)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(conv7x7([mean_c, max_c]))."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(s))


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel then spatial attention
    (Al-masni, Al-Shamiri et al., JRL, Bioengineering 2024, Fig. 4)."""

    def __init__(self, c: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel = ChannelAttention(c, reduction)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection: x * sigmoid(psi(relu(Wx x + Wg g)))."""

    def __init__(self, g_ch: int, x_ch: int, inter: int | None = None) -> None:
        super().__init__()
        inter = inter or max(x_ch // 2, 1)
        self.wg = nn.Sequential(nn.Conv2d(g_ch, inter, 1, bias=False), nn.BatchNorm2d(inter))
        self.wx = nn.Sequential(nn.Conv2d(x_ch, inter, 1, bias=False), nn.BatchNorm2d(inter))
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.psi(F.relu(self.wx(x) + self.wg(g)))


class UpBlock(nn.Module):
    """U-Net decoder level: 2x2 transposed conv up, (gated) skip concat, two 3x3 convs."""

    def __init__(self, cin: int, skip: int, cout: int, gate: bool = False) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.gate = AttentionGate(cout, skip) if gate else None
        self.conv = DoubleConv(cout + skip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.gate is not None:
            skip = self.gate(skip, x)
        return self.conv(torch.cat([x, skip], 1))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: z + MSA(LN z), then z + MLP(LN z) (Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 5-8).

    Written without dropout modules so the bottleneck transformer stays deterministic
    (it belongs to ``encode``).
    """

    def __init__(self, d: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        hidden = int(d * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.norm1(z)
        z = z + self.attn(h, h, h, need_weights=False)[0]
        return z + self.mlp(self.norm2(z))


def gap(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling (B, C, H, W) -> (B, C)."""
    return x.mean((2, 3))


def gmp(x: torch.Tensor) -> torch.Tensor:
    """Global max pooling (B, C, H, W) -> (B, C)."""
    return x.amax((2, 3))


class DropoutPlan:
    """Where MC-dropout layers go.

    ``placement``: any of "bottleneck" (one ``Dropout2d`` on the encoder output, first thing
    in ``decode``), "decoder" (a ``Dropout2d`` after each selected decoder level; level 0 is
    the deepest), "last_decoder" (a ``Dropout2d`` after the last, full-resolution decoder level
    only) and "classifier" (``nn.Dropout`` in the classification head). ``levels`` restricts
    the "decoder" levels (None = all). With ``p == 0`` no module is created.
    Models always put the whole encoder into ``encode``, so ``encode`` never holds dropout.
    """

    def __init__(self, p: float, placement: str | Iterable[str] | None, levels: Sequence[int] | None = None) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        if placement is None or placement == "none":
            places: tuple[str, ...] = ()
        elif isinstance(placement, str):
            places = (placement,)
        else:
            places = tuple(placement)
        bad = [pl for pl in places if pl not in PLACEMENTS]
        if bad:
            raise ValueError(f"unknown dropout placement {bad}; choose from {PLACEMENTS}")
        self.p = p
        self.places = frozenset(places)
        self.levels = None if levels is None else frozenset(int(i) for i in levels)

    def _make(self, where: str, two_d: bool) -> nn.Module:
        if self.p == 0 or where not in self.places:
            return nn.Identity()
        return nn.Dropout2d(self.p) if two_d else nn.Dropout(self.p)

    def bottleneck(self) -> nn.Module:
        return self._make("bottleneck", True)

    def classifier(self) -> nn.Module:
        return self._make("classifier", False)

    def decoder(self, level: int, n: int | None = None) -> nn.Module:
        """The module after decoder level ``level`` of ``n`` (``n`` needed for "last_decoder")."""
        if n is not None and level == n - 1 and "last_decoder" in self.places:
            return self._make("last_decoder", True)
        if self.levels is not None and level not in self.levels:
            return nn.Identity()
        return self._make("decoder", True)

    def decoders(self, n: int) -> nn.ModuleList:
        return nn.ModuleList(self.decoder(i, n) for i in range(n))


def check_input(x: torch.Tensor, in_channels: int, multiple: int) -> None:
    """Clear errors for a wrong channel count or a size not divisible by ``multiple``."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"expected input (B, {in_channels}, H, W), got {tuple(x.shape)}")
    if x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(f"H and W must be divisible by {multiple}, got {tuple(x.shape[2:])}")
