"""Helpers shared by the losses: ignore masks and safe means."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255
NO_LABEL = -1


def zero_like(t: torch.Tensor) -> torch.Tensor:
    """A zero that keeps ``t`` in the autograd graph (so backward works on empty batches)."""
    return t.sum() * 0.0


def valid_pixels(mask: torch.Tensor, ignore_index: int = IGNORE) -> torch.Tensor:
    """(B, H, W) bool: pixels with a trustworthy label."""
    return mask != ignore_index


def one_hot_mask(mask: torch.Tensor, num_classes: int, ignore_index: int = IGNORE) -> torch.Tensor:
    """(B, *spatial) long -> (B, Q, *spatial) float one-hot (2D images or 3D volumes); ignored pixels
    are all zero."""
    valid = valid_pixels(mask, ignore_index)
    safe = torch.where(valid, mask, torch.zeros_like(mask)).clamp(0, num_classes - 1)
    oh = F.one_hot(safe, num_classes).movedim(-1, 1).to(torch.float32)
    return oh * valid.unsqueeze(1)


def masked_sample_mean(per_sample: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_sample`` over the samples where ``present``; 0 (in-graph) if none."""
    if not bool(present.any()):
        return zero_like(per_sample)
    return per_sample[present].mean()


def foreground_prob(probs: torch.Tensor) -> torch.Tensor:
    """(B, Q, H, W) -> (B, H, W) lesion probability ``1 - p_background``."""
    return 1.0 - probs[:, 0]
