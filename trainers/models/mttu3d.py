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

from collections.abc import Sequence
from typing import Any

from . import MODELS
from .mttu import MTTUNet


class MTTUNet3D(MTTUNet):
    """Hybrid 3D CNN-Transformer multi-task U-Net (Cheng et al., MTTU-Net, IEEE TMI 2022): :class:`.mttu.MTTUNet`
    built from 3D layers, its position embedding learned for the paper's 128^3 crop by default."""

    spatial_dims = 3

    def __init__(self, *, image_size: int | Sequence[int] = 128, **options: Any) -> None:
        super().__init__(image_size=image_size, **options)


@MODELS.register("mttu3d")
def build_mttu3d(**options: Any) -> MTTUNet3D:
    return MTTUNet3D(**options)
