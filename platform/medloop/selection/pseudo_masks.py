"""Segmentation pseudo-labels: pixel-wise UPS for masks plus an image-level quality gate.

* :func:`pseudo_mask` -- keep the predicted mask, mark pixels that are not both certain
  (uncertainty <= ``pixel_tau_u``) and confident (``max(p, 1 - p) >= tau_c``) as *ignore* (no loss
  there): Eq. 19 applied per pixel.
* :func:`mask_gate` -- image-level decision: the pseudo-mask is used at all only when the mean pixel
  uncertainty over its possible lesion and boundary band (``seg_uncertainty``) is strictly below
  ``gate``.
* :func:`training_target` -- ``(mask, ignore)`` -> the training target of the batch contract
  (``docs/contracts.md``): values {0, 1}, **255 at ignored pixels**.

The class pseudo-label and the mask pseudo-label are decided separately (see ``decide.py``).
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def pseudo_mask(
    pred_mask: np.ndarray,
    pixel_uncertainty: np.ndarray,
    pixel_tau_u: float,
    fg_prob: np.ndarray | None = None,
    tau_c: float | None = None,
    region_prob: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(mask uint8, ignore bool)``: a pixel is kept only when it is certain AND confident.

    The UPS rule (Rizve et al., ICLR 2021; Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 19) per pixel:
    kept iff ``pixel_uncertainty <= pixel_tau_u`` and, when ``fg_prob`` (mean lesion probability)
    and ``tau_c`` are given, ``max(fg_prob, 1 - fg_prob) >= tau_c``; a multi-region mask (label map) gives
    ``region_prob``, the mean probability of each pixel's predicted class, and the rule is
    ``region_prob >= tau_c`` (the same rule: for two classes it equals ``max(fg_prob, 1 - fg_prob)``).
    Every other pixel (NaN included) is ignored. Works on one image ``(H, W)`` or a batch ``(B, H, W)``;
    the mask keeps the predicted values everywhere -- use :func:`training_target` to write 255 at ignored pixels.
    """
    mask = np.asarray(pred_mask)
    unc = np.asarray(pixel_uncertainty)
    if mask.shape != unc.shape:
        raise ValueError(f"pred_mask shape {mask.shape} != pixel_uncertainty shape {unc.shape}")
    keep = unc <= pixel_tau_u  # NaN -> not kept
    if region_prob is not None and tau_c is not None:
        conf = np.asarray(region_prob, dtype=np.float32)
        if conf.shape != mask.shape:
            raise ValueError(f"pred_mask shape {mask.shape} != region_prob shape {conf.shape}")
        keep &= conf >= tau_c
    elif fg_prob is not None and tau_c is not None:
        prob = np.asarray(fg_prob, dtype=np.float32)
        if prob.shape != mask.shape:
            raise ValueError(f"pred_mask shape {mask.shape} != fg_prob shape {prob.shape}")
        keep &= np.maximum(prob, 1.0 - prob) >= tau_c
    return mask.astype(np.uint8, copy=True), ~keep


def mean_pixel_uncertainty(pixel_uncertainty: np.ndarray) -> np.ndarray | float:
    """Mean over the last two (spatial) axes: a float for ``(H, W)``, an array ``(B,)`` for ``(B, H, W)``."""
    unc = np.asarray(pixel_uncertainty, dtype=np.float64)
    if unc.ndim < 2:
        raise ValueError("pixel_uncertainty must have at least two (spatial) axes")
    m = unc.mean(axis=(-2, -1))
    return float(m) if np.ndim(m) == 0 else m


def mask_gate(mean_pixel_unc: float | np.ndarray, gate: float) -> bool | np.ndarray:
    """Use the pseudo-mask only when its mean pixel uncertainty is ``< gate`` (NaN -> False).

    A scalar gives a bool, an array ``(N,)`` gives a bool array.
    """
    m = np.asarray(mean_pixel_unc, dtype=np.float64)
    ok = m < gate
    return bool(ok) if ok.ndim == 0 else ok


def training_target(mask: np.ndarray, ignore: np.ndarray, *, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Training target: ``mask`` (uint8) with ``ignore_index`` (255) at ignored pixels."""
    m = np.asarray(mask)
    ign = np.asarray(ignore, dtype=bool)
    if m.shape != ign.shape:
        raise ValueError(f"mask shape {m.shape} != ignore shape {ign.shape}")
    out = m.astype(np.uint8, copy=True)
    out[ign] = ignore_index
    return out
