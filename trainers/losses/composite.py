"""Composite joint losses, one per paper's model, registered in ``LOSSES`` by model name.

Each is an ``nn.Module`` with ``forward(output: JointOutput, batch, step=0) -> (total, parts)``.
Options common to all: ``cls_head`` / ``seg_head`` ("softmax" | "evidential"; evidential
swaps the CE-type terms for the evidential losses and computes region terms on alpha / S),
``class_weights`` (per-class CE weights), ``anneal_steps`` (KL annealing, global steps),
``evidential_form`` ("digamma" | "log" | "mse"). ``parts`` holds detached scalars.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medloop.trainers.heads import check_head, dirichlet_alpha, probs_from_logits
from medloop.trainers.losses._common import IGNORE, NO_LABEL
from medloop.trainers.losses.classification import cross_entropy, focal_cross_entropy
from medloop.trainers.losses.evidential import evidential_classification_loss, evidential_segmentation_loss
from medloop.trainers.losses.segmentation import (
    boundary_loss,
    focal_tversky_loss,
    pixel_cross_entropy,
    soft_dice_loss,
    texture_loss,
)
from medloop.trainers.losses.weighting import FixedWeighting, KendallWeighting


class JointLoss(nn.Module):
    """Shared machinery: heads, class weights, presence of each task in a batch."""

    class_weights: torch.Tensor | None  # buffer (not saved with the state dict)

    def __init__(
        self,
        cls_head: str = "softmax",
        seg_head: str = "softmax",
        class_weights: Sequence[float] | torch.Tensor | None = None,
        anneal_steps: int = 1000,
        evidential_form: str = "digamma",
    ) -> None:
        super().__init__()
        self.cls_head = check_head(cls_head)
        self.seg_head = check_head(seg_head)
        self.anneal_steps = int(anneal_steps)
        self.evidential_form = evidential_form
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", w, persistent=False)

    # -- terms -----------------------------------------------------------------
    def cls_loss(self, logits: torch.Tensor, labels: torch.Tensor, step: int, focal_gamma: float | None = None):
        """CE (class-weighted when weights are set), focal CE, or the evidential loss."""
        if self.cls_head == "evidential":
            return evidential_classification_loss(
                dirichlet_alpha(logits), labels, step, self.anneal_steps, self.evidential_form
            )
        if focal_gamma is not None:
            return focal_cross_entropy(logits, labels, focal_gamma, self.class_weights)
        return cross_entropy(logits, labels, self.class_weights)

    def seg_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax, or alpha / S for the evidential head."""
        return probs_from_logits(logits, self.seg_head)

    def seg_pixel_loss(self, logits: torch.Tensor, mask: torch.Tensor, step: int) -> torch.Tensor:
        """Per-pixel CE, or the per-pixel evidential loss (without its Dice part)."""
        if self.seg_head == "evidential":
            return evidential_segmentation_loss(
                dirichlet_alpha(logits), mask, step, self.anneal_steps, self.evidential_form, dice_weight=0.0
            )
        return pixel_cross_entropy(logits, mask)

    @staticmethod
    def to_mask_size(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Deep-supervision logits (B, Q, h, w) upsampled bilinearly to the mask's (H, W)."""
        if logits.shape[-2:] == mask.shape[-2:]:
            return logits
        return F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)

    @staticmethod
    def present(batch: dict) -> tuple[bool, bool]:
        """(has any class label, has any valid mask pixel)."""
        return bool((batch["label"] != NO_LABEL).any()), bool((batch["mask"] != IGNORE).any())

    def forward(self, output: Any, batch: dict, step: int = 0):  # pragma: no cover - abstract
        raise NotImplementedError


def _parts(**terms: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in terms.items()}


class MTUNetLoss(JointLoss):
    """The multi-task U-Net with VGG16 / MobileNetV2 encoders (MT-U-Net):
    ``seg_weight * (Dice + CE_pix) + cls_weight * CE`` with seg : cls = 5 : 1."""

    def __init__(self, seg_weight: float = 5.0, cls_weight: float = 1.0, **options: Any) -> None:
        super().__init__(**options)
        self.weighting = FixedWeighting([seg_weight, cls_weight])

    def forward(self, output, batch, step: int = 0):
        mask, labels = batch["mask"], batch["label"]
        dice = soft_dice_loss(self.seg_probs(output.seg_logits), mask)
        pix = self.seg_pixel_loss(output.seg_logits, mask, step)
        seg = dice + pix
        cls = self.cls_loss(output.cls_logits, labels, step)
        total = self.weighting([seg, cls])
        return total, _parts(total=total, seg=seg, cls=cls, dice=dice, pixel=pix)


class JRLLoss(JointLoss):
    """Al-masni, Al-Shamiri et al., JRL, Bioengineering 2024, Eq. 3:
    ``lambda1 * L_Dice (seg) + lambda2 * L_CE (cls)``, lambda = 0.5, 0.5.

    With an evidential seg head the per-pixel evidential term is added to the Dice term.
    """

    def __init__(self, lambda1: float = 0.5, lambda2: float = 0.5, **options: Any) -> None:
        super().__init__(**options)
        self.weighting = FixedWeighting([lambda1, lambda2])

    def forward(self, output, batch, step: int = 0):
        mask, labels = batch["mask"], batch["label"]
        dice = soft_dice_loss(self.seg_probs(output.seg_logits), mask)
        seg = dice + self.seg_pixel_loss(output.seg_logits, mask, step) if self.seg_head == "evidential" else dice
        cls = self.cls_loss(output.cls_logits, labels, step)
        total = self.weighting([seg, cls])
        return total, _parts(total=total, seg=seg, cls=cls, dice=dice)


class MTTULoss(JointLoss):
    """Cheng et al., MTTU-Net, IEEE TMI 2022: Dice (Eq. 13) and class-weighted CE (Eq. 14) combined by learnable
    Kendall weights (Eq. 15). The module has parameters: give ``loss.parameters()`` to the
    optimiser too."""

    #: the training loops fill ``class_weights`` from the training labels (Eq. 14) unless given
    frequency_weighted_ce = True

    def __init__(self, init_log_var: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        self.weighting = KendallWeighting(2, init_log_var)

    def forward(self, output, batch, step: int = 0):
        mask, labels = batch["mask"], batch["label"]
        has_cls, has_seg = self.present(batch)
        dice = soft_dice_loss(self.seg_probs(output.seg_logits), mask)
        seg = dice + self.seg_pixel_loss(output.seg_logits, mask, step) if self.seg_head == "evidential" else dice
        cls = self.cls_loss(output.cls_logits, labels, step)
        total = self.weighting([seg, cls], present=[has_seg, has_cls])
        sig = self.weighting.sigmas()
        return total, _parts(total=total, seg=seg, cls=cls, sigma_seg=sig[0], sigma_cls=sig[1])


class TIMUPALoss(JointLoss):
    """Al Shafi, Zunayed et al., TIM/UPA: ``0.8 L_seg + 0.2 L_cls``; ``L_seg = FT + 0.25 boundary + 0.15 texture``
    (Eq. 11-12), focal CE for the class. Deep supervision: when
    ``output.aux["deep_supervision"]`` holds (B, Q, h, w) logits, each is upsampled
    (bilinear) to the mask size and ``ds_weight * mean_i L_seg(aux_i)`` is added to L_seg.
    """

    def __init__(
        self,
        seg_weight: float = 0.8,
        cls_weight: float = 0.2,
        boundary_weight: float = 0.25,
        texture_weight: float = 0.15,
        focal_gamma: float = 2.0,
        ds_weight: float = 0.5,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.weighting = FixedWeighting([seg_weight, cls_weight])
        self.boundary_weight, self.texture_weight = boundary_weight, texture_weight
        self.focal_gamma, self.ds_weight = focal_gamma, ds_weight

    def seg_terms(self, logits: torch.Tensor, mask: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        probs = self.seg_probs(logits)
        terms = {
            "focal_tversky": focal_tversky_loss(probs, mask),
            "boundary": boundary_loss(probs, mask),
            "texture": texture_loss(probs, mask),
        }
        seg = terms["focal_tversky"] + self.boundary_weight * terms["boundary"] + self.texture_weight * terms["texture"]
        if self.seg_head == "evidential":
            terms["pixel"] = self.seg_pixel_loss(logits, mask, step)
            seg = seg + terms["pixel"]
        terms["seg"] = seg
        return terms

    def forward(self, output, batch, step: int = 0):
        mask, labels = batch["mask"], batch["label"]
        terms = self.seg_terms(output.seg_logits, mask, step)
        seg = terms["seg"]
        ds_maps = (output.aux or {}).get("deep_supervision") or []
        if ds_maps:
            ds = torch.stack([self.seg_terms(self.to_mask_size(m, mask), mask, step)["seg"] for m in ds_maps]).mean()
            terms["deep_supervision"] = ds
            seg = seg + self.ds_weight * ds
        cls = self.cls_loss(output.cls_logits, labels, step, focal_gamma=self.focal_gamma)
        total = self.weighting([seg, cls])
        terms.update(seg=seg, cls=cls, total=total)
        return total, _parts(**terms)
