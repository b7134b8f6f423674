"""UML composite loss (Ren, Zou et al., UML, MICCAI 2023, Eq. 6-9), registered as "uml" in ``LOSSES``.

* L_mut = L_ice(M, GT) + lambda1 KL(M) + lambda2 Dice(M, GT) (Eq. 6): TBraTS per-pixel
  evidential loss on the preliminary mask M = alpha (``aux["prelim_seg_logits"]``), KL on the
  misleading evidence annealed by the global step (lambda1 = min(1, step / anneal_steps)),
  soft Dice on alpha / S with weight lambda2 (``mut_dice_weight``, default 1).
* L_cls = L_ace(alpha^c, y) + lambda^c KL(alpha^c) (Eq. 7), evidential (digamma form).
* L_seg = sum_i Dice(v^{i-1}(s_i), GT) (Eq. 8) over ``aux["deep_supervision"]`` (upsampled
  bilinearly to the mask size), plus Dice of the final mask ``seg_logits`` (the UN output).
* L_UML = w_m L_mut + w_c L_cls + w_s L_seg with w = 0.1, 0.5, 0.4 (Eq. 9).

Ignore pixels (255) and missing class labels (-1) contribute nothing. The evidential terms
come from :mod:`medloop.trainers.losses.evidential`.
"""

from __future__ import annotations

from typing import Any

import torch

from medloop.trainers.heads import dirichlet_alpha
from medloop.trainers.losses import LOSSES
from medloop.trainers.losses.composite import JointLoss
from medloop.trainers.losses.evidential import evidential_segmentation_loss
from medloop.trainers.losses.segmentation import soft_dice_loss


@LOSSES.register("uml")
class UMLLoss(JointLoss):
    """``w_mut * L_mut + w_cls * L_cls + w_seg * L_seg`` (Ren, Zou et al., UML, MICCAI 2023, Eq. 9)."""

    def __init__(
        self,
        w_mut: float = 0.1,
        w_cls: float = 0.5,
        w_seg: float = 0.4,
        mut_dice_weight: float = 1.0,
        cls_head: str = "evidential",
        seg_head: str = "evidential",
        **options: Any,
    ) -> None:
        super().__init__(cls_head=cls_head, seg_head=seg_head, **options)
        self.w_mut, self.w_cls, self.w_seg = w_mut, w_cls, w_seg
        self.mut_dice_weight = mut_dice_weight

    def _dice(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Soft Dice of one (possibly lower-resolution) segmentation output, Eq. 8."""
        return soft_dice_loss(self.seg_probs(self.to_mask_size(logits, mask)), mask)

    def forward(self, output: Any, batch: dict, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask, labels = batch["mask"], batch["label"]
        aux = output.aux or {}
        prelim = aux.get("prelim_seg_logits")
        if prelim is None:
            raise KeyError("the uml loss needs output.aux['prelim_seg_logits'] (the preliminary mask M)")
        mut = evidential_segmentation_loss(
            dirichlet_alpha(prelim), mask, step, self.anneal_steps, self.evidential_form,
            dice_weight=self.mut_dice_weight,
        )  # Eq. 6
        cls = self.cls_loss(output.cls_logits, labels, step)  # Eq. 7
        seg_maps = [output.seg_logits] + list(aux.get("deep_supervision") or [])
        seg = torch.stack([self._dice(m, mask) for m in seg_maps]).sum()  # Eq. 8
        total = self.w_mut * mut + self.w_cls * cls + self.w_seg * seg  # Eq. 9
        parts = {"total": total, "mutual": mut, "cls": cls, "seg": seg}
        return total, {k: v.detach() for k, v in parts.items()}
