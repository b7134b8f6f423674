"""Combining task losses: fixed weights, or Kendall et al.'s learnable uncertainty weights.

Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 15: ``L = sum_i 1 / (2 sigma_i^2) L_i + log sigma_i``. Parametrised by
``s_i = log sigma_i^2`` (initialised to 0, i.e. sigma = 1 as in the paper), the term is
``0.5 exp(-s_i) L_i + 0.5 s_i``. A task absent from the batch (no label at all) adds
nothing -- not even its ``log sigma`` term, which would otherwise drive sigma to 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FixedWeighting(nn.Module):
    """``sum_i w_i L_i``."""

    def __init__(self, weights: Sequence[float]) -> None:
        super().__init__()
        self.weights = tuple(float(w) for w in weights)

    def forward(self, losses: Sequence[torch.Tensor], present: Sequence[bool] | None = None) -> torch.Tensor:
        return sum(w * loss for w, loss in zip(self.weights, losses))  # type: ignore[return-value]


class KendallWeighting(nn.Module):
    """Learnable homoscedastic-uncertainty weights (Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 15), one ``log sigma^2``
    per task."""

    def __init__(self, n_tasks: int, init_log_var: float = 0.0) -> None:
        super().__init__()
        self.log_var = nn.Parameter(torch.full((n_tasks,), float(init_log_var)))

    def forward(self, losses: Sequence[torch.Tensor], present: Sequence[bool] | None = None) -> torch.Tensor:
        present = [True] * len(losses) if present is None else list(present)
        total = self.log_var.sum() * 0.0
        for i, (loss, here) in enumerate(zip(losses, present)):
            if here:
                total = total + 0.5 * torch.exp(-self.log_var[i]) * loss + 0.5 * self.log_var[i]
        return total

    def sigmas(self) -> torch.Tensor:
        """Current sigma_i = exp(s_i / 2)."""
        return torch.exp(0.5 * self.log_var.detach())
