"""Uncertainty measures from MC samples and/or Dirichlet parameters (pure torch functions).

Conventions: MC samples have the passes on dim 0 and the classes on dim 1 of each sample,
i.e. (T, B, K) per image or (T, B, Q, H, W) per pixel; means drop dim 0. Logarithms are
natural. ``std`` is the population std over passes (ddof = 0) of the probability of the
class predicted by the mean (the mu of Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 19). Mutual information is BALD:
``H[mean_t p_t] - mean_t H[p_t]`` (clamped at 0 against round-off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medloop.trainers.heads import vacuity  # noqa: F401  (evidential vacuity K / S, Ren, Zou et al., UML, MICCAI 2023, Eq. 1-2)

_EPS = 1e-12


def mean_probs(samples: torch.Tensor) -> torch.Tensor:
    """Mean over passes (dim 0)."""
    return samples.mean(dim=0)


def confidence(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Max probability along the class dim."""
    return probs.max(dim=dim).values


def predicted_class(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Argmax along the class dim."""
    return probs.argmax(dim=dim)


def entropy(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Shannon entropy ``-sum_k p_k log p_k`` along ``dim`` (0 log 0 = 0)."""
    return -(probs * torch.log(probs.clamp_min(_EPS))).sum(dim=dim)


def predictive_entropy(samples: torch.Tensor) -> torch.Tensor:
    """Entropy of the mean prediction; samples (T, B, K, ...)."""
    return entropy(mean_probs(samples), dim=1)


def expected_entropy(samples: torch.Tensor) -> torch.Tensor:
    """Mean over passes of each pass's entropy (aleatoric part)."""
    return entropy(samples, dim=2).mean(dim=0)


def mutual_information(samples: torch.Tensor) -> torch.Tensor:
    """BALD mutual information ``H[E p] - E H[p]`` (epistemic part), >= 0."""
    return (predictive_entropy(samples) - expected_entropy(samples)).clamp_min(0.0)


def predicted_class_std(samples: torch.Tensor) -> torch.Tensor:
    """Std over passes (ddof 0) of the probability of the mean-predicted class
    (the mu of Cheng et al., MTTU-Net, IEEE TMI 2022)."""
    pred = predicted_class(mean_probs(samples), dim=1)  # (B, ...)
    index = pred.unsqueeze(0).unsqueeze(2).expand(samples.shape[0], -1, 1, *pred.shape[1:])
    chosen = samples.gather(2, index).squeeze(2)  # (T, B, ...)
    return chosen.std(dim=0, unbiased=False)


def margin(probs: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Top-1 minus top-2 probability (small margin = uncertain)."""
    top = probs.topk(2, dim=dim).values
    return top.select(dim, 0) - top.select(dim, 1)


def dilate(mask: torch.Tensor, band: int) -> torch.Tensor:
    """Binary dilation of (B, H, W) masks by a (2 band + 1) square, or of (B, D, H, W) volumes by a
    cube (Chebyshev distance <= band)."""
    if band <= 0:
        return mask.bool()
    m = mask.float().unsqueeze(1)
    pool = F.max_pool3d if mask.dim() == 4 else F.max_pool2d
    return pool(m, kernel_size=2 * band + 1, stride=1, padding=band).squeeze(1) > 0.5


def lesion_region(pred_mask: torch.Tensor, boundary_band: int) -> torch.Tensor:
    """Predicted lesion (pred_mask > 0) plus a band of ``boundary_band`` pixels around it."""
    return dilate(pred_mask > 0, boundary_band)


def region_mean(pixel_map: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Mean of (B, H, W) ``pixel_map`` over ``region`` per image; NaN where the region is empty."""
    region = region.to(pixel_map.dtype)
    count = region.flatten(1).sum(1)
    total = (pixel_map * region).flatten(1).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def image_mean(pixel_map: torch.Tensor) -> torch.Tensor:
    """Mean of (B, H, W) ``pixel_map`` over the whole image."""
    return pixel_map.flatten(1).mean(1)


def possible_lesion(pred_mask: torch.Tensor, fg_prob: torch.Tensor | None, possible: float) -> torch.Tensor:
    """Pixels that are, or may be, lesion: the predicted lesion plus every pixel whose mean foreground
    probability reaches ``possible`` (a lesion the model may have missed)."""
    region = pred_mask > 0
    if fg_prob is not None:
        region = region | (fg_prob >= possible)
    return region


def lesion_uncertainty(
    pixel_map: torch.Tensor,
    pred_mask: torch.Tensor,
    boundary_band: int,
    fg_prob: torch.Tensor | None = None,
    possible: float = 0.1,
) -> torch.Tensor:
    """Mean pixel uncertainty over the possible lesion (:func:`possible_lesion`) + its boundary band.

    Not diluted by image size: background the model is sure of does not count. A case whose
    prediction is empty but where some pixels may be lesion (foreground probability >= ``possible``)
    is measured on those pixels, so a possibly missed lesion ranks high. When no pixel may be lesion
    the model is certain there is none: 0. Without ``fg_prob`` (older callers) an empty prediction
    falls back to the whole-image mean.
    """
    region = dilate(possible_lesion(pred_mask, fg_prob, possible), boundary_band)
    inside = region_mean(pixel_map, region)
    fallback = torch.zeros_like(inside) if fg_prob is not None else image_mean(pixel_map)
    return torch.where(torch.isnan(inside), fallback, inside)


def class_consistent_mask(pred_mask: torch.Tensor, pred_class: torch.Tensor, no_lesion: int | None) -> torch.Tensor:
    """The joint prediction made consistent: a case whose predicted class is the no-lesion class
    (e.g. BUSI "normal") gets an empty mask. ``no_lesion`` None: masks unchanged."""
    if no_lesion is None:
        return pred_mask
    keep = (pred_class != no_lesion).view(-1, *([1] * (pred_mask.dim() - 1)))
    return pred_mask * keep.to(pred_mask.dtype)


def lesion_fraction(pred_mask: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels predicted as lesion (any foreground class)."""
    return (pred_mask > 0).flatten(1).float().mean(1)
