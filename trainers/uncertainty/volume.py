"""Score one volume that need not fit the model in one piece: MC-dropout passes of sliding-window
inference (MONAI's ``sliding_window_inference``, Gaussian-weighted overlapping patches), per-voxel
uncertainty, and volume- and slice-level scores for the annotation queue.

Every patch is sampled T times with dropout on (eval mode otherwise: Gal & Ghahramani 2016, as
MTTU-Net's UPS uses with T = 10, Cheng, Liu, Kuang, Wang, IEEE TMI 2022, Alg. 1), all T passes in
one call (the cached sampler: the encoder once per patch); MONAI blends the T x Q probability maps
of the patches with Gaussian weights. The class probabilities of a pass are the mean over its patches
(each patch's classifier sees part of the volume). Statistics over passes:

* ``voxel_std``: per-voxel std over passes of the predicted class's probability
  (:func:`medloop.trainers.uncertainty.measures.predicted_class_std`);
* ``volume_uncertainty``: mean ``voxel_std`` over the possible lesion + a boundary band
  (:func:`~medloop.trainers.uncertainty.measures.lesion_uncertainty`, in 3D): not diluted by the volume's size;
* ``slice_uncertainty``: the same per axial slice (index 0 of the volume), NaN-free (0 where a slice
  holds no possible lesion): the slices an annotator should see first rank highest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medloop.trainers.heads import check_head
from medloop.trainers.uncertainty import measures as M


@dataclass
class VolumeScores:
    """One volume's prediction. Maps are (D, H, W) unless said otherwise."""

    probs: np.ndarray  # (K,) class probabilities, mean over passes
    class_std: np.ndarray  # (K,) std over passes of the class probabilities
    seg_probs: np.ndarray  # (Q, D, H, W) mean segmentation probabilities
    pred_mask: np.ndarray  # uint8 region ids (argmax of seg_probs)
    voxel_std: np.ndarray  # float32
    volume_uncertainty: float
    slice_uncertainty: np.ndarray  # (D,) float32

    @property
    def pred_class(self) -> int:
        return int(np.argmax(self.probs))


@torch.no_grad()
def score_volume(
    model: nn.Module,
    volume: torch.Tensor,
    *,
    roi_size: tuple[int, int, int],
    passes: int = 10,
    overlap: float = 0.25,
    sw_batch_size: int = 4,
    cls_head: str = "softmax",
    seg_head: str = "softmax",
    boundary_band: int = 2,
    seed: int | None = 0,
    cached: bool = True,
) -> VolumeScores:
    """MC-dropout sliding-window prediction of ``volume`` (C, D, H, W); see the module docstring.

    ``roi_size`` is the patch the model takes (each side a multiple of its down-sampling factor);
    a volume smaller than the patch is padded by MONAI. ``passes = 1`` runs one deterministic pass
    (dropout off, ``voxel_std`` 0). ``seed`` fixes the dropout masks (None: torch's current state).
    ``cached``: each patch's T passes through the cached sampler (encoder once; needs a
    ``JointModel``'s ``encode`` / ``decode``), else T full passes of the patch. The window is
    :meth:`medloop.trainers.windowed.SlidingWindow.sample` (the rounds' scoring of a patch campaign)."""
    from medloop.trainers.windowed import SlidingWindow

    check_head(cls_head)
    check_head(seg_head)
    if volume.dim() != 4:
        raise ValueError(f"volume: expected (C, D, H, W), got shape {tuple(volume.shape)}")
    if passes < 1:
        raise ValueError("passes must be >= 1")
    window = SlidingWindow(model, roi_size, overlap=overlap, sw_batch_size=sw_batch_size)
    generator_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        s = window.sample(volume.unsqueeze(0).float(), passes, cached=cached if passes > 1 else False,
                          cls_head=cls_head, seg_head=seg_head, stochastic=passes > 1)
    finally:
        if seed is not None:
            torch.random.set_rng_state(generator_state)
    seg_t = s.seg_probs[:, 0]  # (T, Q, D, H, W)
    cls_t = s.cls_probs[:, 0]  # (T, K): each pass's mean over its patches
    seg_mean = seg_t.mean(0)
    pred = seg_mean.argmax(0)
    std = M.predicted_class_std(seg_t.unsqueeze(1))[0] if passes > 1 else torch.zeros_like(seg_mean[0])
    fg = 1.0 - seg_mean[0]
    volume_u = M.lesion_uncertainty(std[None], pred[None], boundary_band, fg_prob=fg[None])[0]
    slices = M.lesion_uncertainty(std, pred, boundary_band, fg_prob=fg)  # each axial slice as a 2D image
    return VolumeScores(
        probs=cls_t.mean(0).numpy().astype(np.float32),
        class_std=cls_t.std(0, unbiased=False).numpy().astype(np.float32),
        seg_probs=seg_mean.numpy().astype(np.float32),
        pred_mask=pred.numpy().astype(np.uint8),
        voxel_std=std.numpy().astype(np.float32),
        volume_uncertainty=float(volume_u),
        slice_uncertainty=slices.numpy().astype(np.float32),
    )
