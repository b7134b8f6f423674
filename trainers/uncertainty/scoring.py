"""Score a batch of unlabeled images: class probabilities, confidence and uncertainties.

Methods:
* ``mc_dropout``: T MC-dropout passes (:func:`mc_sample`); std / entropy / BALD from the
  samples; pixel uncertainty = per-pixel std over passes of the predicted class's
  probability (for Q = 2 this is exactly the std of the foreground probability).
* ``evidential``: one deterministic pass (model in eval mode); probabilities alpha / S;
  vacuity K / S; pixel uncertainty = per-pixel vacuity Q / S (needs ``seg_head="evidential"``,
  else the normalised per-pixel entropy H / log Q is used); std and mutual_info are NaN.
* ``deterministic``: one pass in eval mode (dropout off) through whatever heads the model has:
  softmax heads give entropy-based uncertainties, evidential heads vacuity as above (what
  ``medloop predict --passes 1`` runs).
* ``both``: MC-dropout passes through the evidential head(s): MC statistics as above,
  vacuity averaged over passes; pixel uncertainty = mean per-pixel vacuity when the seg
  head is evidential, else the MC std.
Fields a method cannot give are NaN arrays (vacuity without an evidential cls head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
from torch import nn

from medloop.trainers.heads import check_head
from medloop.trainers.uncertainty import measures as M
from medloop.trainers.uncertainty.mc import mc_sample

METHODS = ("mc_dropout", "evidential", "both", "deterministic")
#: methods that sample T MC-dropout passes; the others run one deterministic pass
MC_METHODS = ("mc_dropout", "both")


@dataclass
class BatchScores:
    """Per-image numpy arrays (names as the ledger's ``Prediction`` columns) + per-pixel maps."""

    probs: np.ndarray  # (B, K) float32
    pred_class: np.ndarray  # (B,) int64
    confidence: np.ndarray
    std: np.ndarray
    entropy: np.ndarray
    mutual_info: np.ndarray
    vacuity: np.ndarray
    margin: np.ndarray
    seg_uncertainty: np.ndarray
    seg_uncertainty_image: np.ndarray
    lesion_fraction: np.ndarray
    embedding: np.ndarray | None  # (B, D) float32
    pred_mask: np.ndarray  # (B, H, W) uint8
    pixel_uncertainty: np.ndarray  # (B, H, W) float32
    fg_prob: np.ndarray  # (B, H, W) float32: mean probability of lesion (any foreground class)
    # multi-region segmentation (more than two classes): the mean probability of each pixel's predicted class
    region_prob: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def row(self, i: int) -> dict:
        """The i-th image's scores as a dict (arrays for probs / embedding / maps)."""
        return {f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[i]) for f in fields(self)}


def _np(t: torch.Tensor, dtype=np.float32) -> np.ndarray:
    return t.detach().cpu().numpy().astype(dtype)


@torch.no_grad()
def score_batch(
    model: nn.Module,
    images: torch.Tensor,
    *,
    method: str = "mc_dropout",
    passes: int = 10,
    cls_head: str = "softmax",
    seg_head: str = "softmax",
    boundary_band: int = 3,
    cached: bool | Literal["auto"] = True,
    max_batch: int | None = None,
    no_lesion_class: int | None = None,
) -> BatchScores:
    """Score ``images`` (B, C, H, W); see the module docstring for what each method gives."""
    if method not in METHODS:
        raise ValueError(f"unknown scoring method {method!r}; known: {', '.join(METHODS)}")
    check_head(cls_head)
    check_head(seg_head)
    mc = method in MC_METHODS
    if mc:
        s = mc_sample(model, images, passes, cached=cached, cls_head=cls_head, seg_head=seg_head, max_batch=max_batch)
    else:
        s = mc_sample(model, images, 1, cached=False, cls_head=cls_head, seg_head=seg_head, stochastic=False)
    b = images.shape[0]
    nan = torch.full((b,), float("nan"))

    probs = M.mean_probs(s.cls_probs)
    seg_mean = M.mean_probs(s.seg_probs)
    pred_mask = M.class_consistent_mask(M.predicted_class(seg_mean, dim=1), M.predicted_class(probs), no_lesion_class)
    q = seg_mean.shape[1]
    fg_prob = 1.0 - seg_mean[:, 0]

    if s.seg_alpha is not None and method != "mc_dropout":
        pixel = M.vacuity(s.seg_alpha, dim=2).mean(0)
    elif mc:
        pixel = M.predicted_class_std(s.seg_probs)
    else:
        pixel = M.entropy(seg_mean, dim=1) / math.log(q)

    vac = M.vacuity(s.cls_alpha, dim=2).mean(0) if s.cls_alpha is not None else nan
    return BatchScores(
        probs=_np(probs),
        pred_class=_np(M.predicted_class(probs), np.int64),
        confidence=_np(M.confidence(probs)),
        std=_np(M.predicted_class_std(s.cls_probs) if mc else nan),
        entropy=_np(M.entropy(probs)),
        mutual_info=_np(M.mutual_information(s.cls_probs) if mc else nan),
        vacuity=_np(vac),
        margin=_np(M.margin(probs)),
        seg_uncertainty=_np(M.lesion_uncertainty(pixel, pred_mask, boundary_band, fg_prob=fg_prob)),
        seg_uncertainty_image=_np(M.image_mean(pixel)),
        lesion_fraction=_np(M.lesion_fraction(pred_mask)),
        embedding=None if s.embedding is None else _np(s.embedding),
        pred_mask=_np(pred_mask, np.uint8),
        pixel_uncertainty=_np(pixel),
        fg_prob=_np(fg_prob),
        region_prob=_np(seg_mean.max(1).values) if q > 2 else None,
    )
