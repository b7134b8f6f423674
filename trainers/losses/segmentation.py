"""Segmentation losses on probabilities (B, Q, H, W) and masks (B, H, W) with 255 = ignore (the region
losses and the pixel cross-entropy also take volumes: (B, Q, D, H, W) and (B, D, H, W)).

Region losses (Dice, focal Tversky) are computed per sample over its valid pixels, for the
foreground classes 1..Q-1 (``include_background=False``), with a smoothing term ``smooth``
in numerator and denominator (so a perfectly predicted empty mask has loss 0), then
averaged over the samples that have at least one valid pixel. Samples without a mask
(all 255) contribute nothing; a batch with no valid pixel gives 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medloop.trainers.losses._common import (
    IGNORE,
    foreground_prob,
    masked_sample_mean,
    one_hot_mask,
    valid_pixels,
    zero_like,
)


def _region_stats(probs: torch.Tensor, mask: torch.Tensor, include_background: bool, ignore_index: int):
    valid = valid_pixels(mask, ignore_index)
    target = one_hot_mask(mask, probs.shape[1], ignore_index)
    p = probs * valid.unsqueeze(1)
    if not include_background:
        p, target = p[:, 1:], target[:, 1:]
    spatial = tuple(range(2, probs.dim()))  # (H, W) or (D, H, W)
    tp = (p * target).sum(spatial)
    fp = (p * (1 - target) * valid.unsqueeze(1)).sum(spatial)
    fn = ((1 - p) * target).sum(spatial)
    return tp, fp, fn, valid.flatten(1).any(1)


def soft_dice_loss(
    probs: torch.Tensor,
    mask: torch.Tensor,
    smooth: float = 1.0,
    include_background: bool = False,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """``1 - mean_k (2 TP_k + s) / (2 TP_k + FP_k + FN_k + s)`` (Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 13, soft).

    For evidential outputs pass ``alpha / S`` as ``probs``.
    """
    tp, fp, fn, present = _region_stats(probs, mask, include_background, ignore_index)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    return masked_sample_mean(1.0 - dice.mean(1), present)


def focal_tversky_loss(
    probs: torch.Tensor,
    mask: torch.Tensor,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 0.75,
    smooth: float = 1.0,
    include_background: bool = False,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """Focal Tversky (Abraham & Khan, ISBI 2019), as used by Al Shafi, Zunayed et al., "Multi-Level
    Bidirectional Decoder Interaction for Uncertainty-Aware Breast Ultrasound Analysis" (TIM/UPA):
    alpha 0.3, beta 0.7, gamma 0.75.

    ``TI_k = (TP + s) / (TP + alpha FP + beta FN + s)``, loss ``mean_k (1 - TI_k)^gamma``: alpha
    weighs false positives, beta false negatives, so beta > alpha (the defaults) favours recall
    (a missed lesion pixel costs more than a spurious one), the point of the loss on small lesions.
    """
    tp, fp, fn, present = _region_stats(probs, mask, include_background, ignore_index)
    ti = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    per_sample = (1.0 - ti).clamp_min(0).pow(gamma).mean(1)
    return masked_sample_mean(per_sample, present)


def pixel_cross_entropy(
    logits: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None, ignore_index: int = IGNORE
) -> torch.Tensor:
    """Per-pixel CE averaged over the valid pixels of the batch (0 if none)."""
    if not bool(valid_pixels(mask, ignore_index).any()):
        return zero_like(logits)
    w = None if weight is None else weight.to(logits)
    return F.cross_entropy(logits, mask, weight=w, ignore_index=ignore_index)


def curvature_kernel(sigma: float = 1.0, radius: int = 3) -> torch.Tensor:
    """``K_curv(x, y) = (x^2 - y^2) exp(-r^2 / 2 sigma^2)`` on a (2 radius + 1)^2 grid
    (Al Shafi, Zunayed et al., TIM/UPA)."""
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    y, x = torch.meshgrid(r, r, indexing="ij")
    return (x**2 - y**2) * torch.exp(-(x**2 + y**2) / (2 * sigma**2))


SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _filled(probs: torch.Tensor, mask: torch.Tensor, ignore_index: int):
    """Lesion probability and binary target with ignored pixels set to 0 in both."""
    valid = valid_pixels(mask, ignore_index)
    pred = foreground_prob(probs) * valid
    target = ((mask > 0) & valid).to(probs.dtype)
    return pred, target, valid


def _conv(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    k = kernel.to(img)[None, None]
    return F.conv2d(img.unsqueeze(1), k, padding=kernel.shape[-1] // 2).squeeze(1)


def boundary_loss(
    probs: torch.Tensor, mask: torch.Tensor, sigma: float = 1.0, radius: int = 3, ignore_index: int = IGNORE
) -> torch.Tensor:
    """Al Shafi, Zunayed et al., TIM/UPA, Eq. 11: ``E |K_curv * M - K_curv * M_hat|`` over valid pixels.

    ``M_hat`` is the soft lesion probability (not binarised, so the term has a gradient);
    ignored pixels are set to 0 in both maps before filtering, so their predictions
    cannot change the loss.
    """
    pred, target, valid = _filled(probs, mask, ignore_index)
    k = curvature_kernel(sigma, radius)
    diff = (_conv(target, k) - _conv(pred, k)).abs() * valid
    count = valid.flatten(1).sum(1)
    per_sample = diff.flatten(1).sum(1) / count.clamp_min(1)
    return masked_sample_mean(per_sample, count > 0)


def _masked_std(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    v = valid.to(x.dtype)
    n = v.flatten(1).sum(1).clamp_min(1)
    mean = (x * v).flatten(1).sum(1) / n
    var = (((x - mean[:, None, None]) ** 2) * v).flatten(1).sum(1) / n
    return torch.sqrt(var + 1e-12)


def texture_loss(probs: torch.Tensor, mask: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """Al Shafi, Zunayed et al., TIM/UPA, Eq. 12: ``E |std(S_x * M) - std(S_x * M_hat)|`` (std over each image's
    valid pixels)."""
    pred, target, valid = _filled(probs, mask, ignore_index)
    per_sample = (_masked_std(_conv(target, SOBEL_X), valid) - _masked_std(_conv(pred, SOBEL_X), valid)).abs()
    return masked_sample_mean(per_sample, valid.flatten(1).any(1))
