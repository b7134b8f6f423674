"""Evidential losses (Sensoy et al. 2018; TBraTS per pixel; used by
Ren, Zou et al., UML, MICCAI 2023, Eq. 6-9).

For Dirichlet ``alpha`` and one-hot ``y`` along the class dim (S = sum alpha, p = alpha / S):
* ``digamma`` (Bayes risk of CE, Sensoy Eq. 4): ``sum_k y_k (psi(S) - psi(alpha_k))``
* ``log`` (type-II ML, Sensoy Eq. 3):             ``sum_k y_k (log S - log alpha_k)``
* ``mse`` (Sensoy Eq. 5):  ``sum_k (y_k - p_k)^2 + p_k (1 - p_k) / (S + 1)``
plus ``lambda_t KL[Dir(alpha~) || Dir(1)]`` with the misleading evidence
``alpha~ = (alpha - 1)(1 - y) + 1`` and ``lambda_t = min(1, step / anneal_steps)`` keyed to
the global optimisation step (across rounds), not to the epoch.
"""

from __future__ import annotations

import math

import torch

from medloop.trainers.heads import dirichlet_mean
from medloop.trainers.losses._common import IGNORE, NO_LABEL, masked_sample_mean, one_hot_mask, valid_pixels, zero_like
from medloop.trainers.losses.segmentation import soft_dice_loss

FORMS = ("digamma", "log", "mse")


def annealing_coefficient(step: int, anneal_steps: int) -> float:
    """``min(1, step / anneal_steps)``; 1 when ``anneal_steps <= 0``."""
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, max(0, step) / anneal_steps)


def kl_to_uniform_dirichlet(alpha: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Closed-form ``KL[Dir(alpha) || Dir(1, ..., 1)]`` along ``dim`` (class dim removed).

    ``lnG(S) - lnG(K) - sum lnG(alpha_k) + sum (alpha_k - 1)(psi(alpha_k) - psi(S))``.
    """
    k = alpha.shape[dim]
    s = alpha.sum(dim=dim, keepdim=True)
    return (
        torch.lgamma(s).squeeze(dim)
        - math.lgamma(k)
        - torch.lgamma(alpha).sum(dim=dim)
        + ((alpha - 1.0) * (torch.digamma(alpha) - torch.digamma(s))).sum(dim=dim)
    )


def evidential_terms(alpha: torch.Tensor, y: torch.Tensor, form: str = "digamma", dim: int = 1) -> torch.Tensor:
    """The data term of the chosen form, per element (class dim removed)."""
    s = alpha.sum(dim=dim, keepdim=True)
    if form == "digamma":
        return (y * (torch.digamma(s) - torch.digamma(alpha))).sum(dim=dim)
    if form == "log":
        return (y * (torch.log(s) - torch.log(alpha))).sum(dim=dim)
    if form == "mse":
        p = alpha / s
        return ((y - p) ** 2 + p * (1 - p) / (s + 1)).sum(dim=dim)
    raise ValueError(f"unknown evidential loss form {form!r}; known: {', '.join(FORMS)}")


def evidential_pointwise(
    alpha: torch.Tensor, y: torch.Tensor, step: int, anneal_steps: int, form: str = "digamma", dim: int = 1
) -> torch.Tensor:
    """Data term + annealed KL on ``alpha~ = (alpha - 1)(1 - y) + 1``, per element."""
    alpha_tilde = (alpha - 1.0) * (1.0 - y) + 1.0
    lam = annealing_coefficient(step, anneal_steps)
    return evidential_terms(alpha, y, form, dim) + lam * kl_to_uniform_dirichlet(alpha_tilde, dim)


def evidential_classification_loss(
    alpha: torch.Tensor, labels: torch.Tensor, step: int = 0, anneal_steps: int = 1000, form: str = "digamma"
) -> torch.Tensor:
    """Mean over labelled samples (labels != -1) of the evidential loss; alpha (B, K)."""
    present = labels != NO_LABEL
    if not bool(present.any()):
        return zero_like(alpha)
    a = alpha[present]
    y = torch.nn.functional.one_hot(labels[present], a.shape[1]).to(a.dtype)
    return evidential_pointwise(a, y, step, anneal_steps, form).mean()


def evidential_segmentation_loss(
    alpha: torch.Tensor,
    mask: torch.Tensor,
    step: int = 0,
    anneal_steps: int = 1000,
    form: str = "digamma",
    dice_weight: float = 1.0,
    ignore_index: int = IGNORE,
) -> torch.Tensor:
    """TBraTS-style: per-pixel evidential loss (mean over each sample's valid pixels, then
    over samples with a mask) + ``dice_weight`` * soft Dice on ``alpha / S``. alpha (B, Q, H, W)."""
    valid = valid_pixels(mask, ignore_index)
    y = one_hot_mask(mask, alpha.shape[1], ignore_index)
    per_pixel = evidential_pointwise(alpha, y, step, anneal_steps, form) * valid
    count = valid.flatten(1).sum(1)
    per_sample = per_pixel.flatten(1).sum(1) / count.clamp_min(1)
    pixel_term = masked_sample_mean(per_sample, count > 0)
    if dice_weight == 0:
        return pixel_term
    return pixel_term + dice_weight * soft_dice_loss(dirichlet_mean(alpha), mask, ignore_index=ignore_index)
