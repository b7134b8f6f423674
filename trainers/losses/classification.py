"""Image-level classification losses. Labels are (B,) long with -1 = no class label:
such samples are skipped; the loss is the mean over the samples that have a label
(as Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 14: divided by the sample count m), zero if none."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medloop.trainers.losses._common import NO_LABEL, zero_like


def _present(labels: torch.Tensor) -> torch.Tensor:
    return labels != NO_LABEL


def frequency_class_weights(labels: np.ndarray | Sequence[int], num_classes: int) -> np.ndarray:
    """Class weights of Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 14, ``w_c = (N - N_c) / ((K - 1) N)``.

    For K = 2 this is exactly the paper's ``w_1 = N_2 / (N_1 + N_2)``, ``w_2 = N_1 / (N_1 + N_2)``
    (the rarer class weighs more); for K > 2 the weights still sum to 1. Labels < 0 (no class)
    are ignored; with no labelled sample every class gets ``1 / K``.
    """
    y: np.ndarray = np.asarray(labels, dtype=np.int64).ravel()
    y = y[(y >= 0) & (y < num_classes)]
    if num_classes < 2 or y.size == 0:
        return np.full(max(num_classes, 1), 1.0 / max(num_classes, 1))
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    n = counts.sum()
    return (n - counts) / ((num_classes - 1) * n)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(Class-weighted) CE, ``-1/m sum_i w_{y_i} log p_{i, y_i}`` (Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 14) over
    labelled samples."""
    present = _present(labels)
    if not bool(present.any()):
        return zero_like(logits)
    logp = F.log_softmax(logits[present], dim=1)
    y = labels[present]
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    if weight is not None:
        nll = nll * weight.to(nll)[y]
    return nll.mean()


def focal_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Focal CE (Lin et al. 2017): ``-1/m sum_i w_{y_i} (1 - p_{i,y_i})^gamma log p_{i,y_i}``."""
    present = _present(labels)
    if not bool(present.any()):
        return zero_like(logits)
    logp = F.log_softmax(logits[present], dim=1)
    y = labels[present]
    logpy = logp.gather(1, y[:, None]).squeeze(1)
    loss = -((1.0 - logpy.exp()) ** gamma) * logpy
    if weight is not None:
        loss = loss * weight.to(loss)[y]
    return loss.mean()
