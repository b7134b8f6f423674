"""Output heads: raw logits -> probabilities (softmax) or Dirichlet parameters (evidential).

Evidential head (subjective logic, as in Ren, Zou et al., UML, MICCAI 2023): evidence ``e = softplus(logits)``,
``alpha = e + 1``, ``S = sum_k alpha_k``, belief ``b_k = e_k / S`` and uncertainty mass
(vacuity) ``u = K / S`` -- Eq. 1 per image (class dim of (B, K)) and Eq. 2 per pixel
(class dim of (B, Q, H, W)). The expected probability is ``alpha / S``; note
``sum_k b_k + u = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

HEADS: tuple[str, ...] = ("softmax", "evidential")


def check_head(head: str) -> str:
    """Return ``head`` if it is a known head name, else raise ``ValueError``."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; known: {', '.join(HEADS)}")
    return head


def dirichlet_alpha(logits: torch.Tensor) -> torch.Tensor:
    """Dirichlet parameters ``alpha = softplus(logits) + 1`` (Ren, Zou et al., UML, MICCAI 2023, Eq. 1-2)."""
    return F.softplus(logits) + 1.0


def dirichlet_mean(alpha: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Expected probability ``alpha / S`` of a Dirichlet along ``dim``."""
    return alpha / alpha.sum(dim=dim, keepdim=True)


def vacuity(alpha: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Uncertainty mass ``u = K / S`` (Ren, Zou et al., UML, MICCAI 2023, Eq. 1 per image, Eq. 2 per pixel);
    ``dim`` removed."""
    return alpha.shape[dim] / alpha.sum(dim=dim)


@dataclass
class EvidentialQuantities:
    """Subjective-logic quantities of a Dirichlet ``alpha`` along the class dim.

    belief, probs: same shape as alpha; vacuity, strength: alpha's shape without the class dim.
    """

    belief: torch.Tensor
    vacuity: torch.Tensor
    probs: torch.Tensor
    strength: torch.Tensor


def evidential_quantities(alpha: torch.Tensor, dim: int = 1) -> EvidentialQuantities:
    """Belief ``b = (alpha - 1) / S``, vacuity ``u = K / S``, probs ``alpha / S``
    (Ren, Zou et al., UML, MICCAI 2023, Eq. 1-2)."""
    strength = alpha.sum(dim=dim, keepdim=True)
    return EvidentialQuantities(
        belief=(alpha - 1.0) / strength,
        vacuity=vacuity(alpha, dim),
        probs=dirichlet_mean(alpha, dim),
        strength=strength.squeeze(dim),
    )


def probs_from_logits(logits: torch.Tensor, head: str = "softmax", dim: int = 1) -> torch.Tensor:
    """Class probabilities: ``softmax(logits)`` or the Dirichlet mean ``alpha / S``."""
    check_head(head)
    if head == "softmax":
        return torch.softmax(logits, dim=dim)
    return dirichlet_mean(dirichlet_alpha(logits), dim)
