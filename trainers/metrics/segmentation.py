"""Binary segmentation metrics on numpy masks (H, W) or volumes (D, H, W): Dice, IoU, ASSD, HD95.

Empty-mask conventions (both masks are compared after dropping ignored pixels):
* both empty: Dice = IoU = 1, ASSD = HD95 = 0 (a correct "no lesion");
* one empty: Dice = IoU = 0 and ASSD = HD95 = the image diagonal (in ``spacing`` units),
  the largest distance possible in the image, so averages stay finite and penalise the
  miss; pass ``empty_distance="nan"`` to get NaN instead (then use nanmean).
Distances follow MedPy (``medpy.metric.binary``, connectivity 1): surfaces are the mask
pixels removed by one erosion with the 4-connected cross (6-connected in 3D; border counted as background);
ASSD = mean of the two mean directed surface distances; HD95 = the 95th percentile of both
directed distance sets pooled (``percentile(hstack((d_pg, d_gp)), 95)``), not the max of
the two directed percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

IGNORE = 255


def _binary(pred: np.ndarray, target: np.ndarray, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred)
    target = np.asarray(target)
    valid = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    return (pred > 0) & valid, (target > 0) & valid


def dice(pred: np.ndarray, target: np.ndarray, ignore_index: int | None = IGNORE) -> float:
    """``2 |P n G| / (|P| + |G|)`` over non-ignored pixels; 1 when both are empty."""
    p, g = _binary(pred, target, ignore_index)
    denom = p.sum() + g.sum()
    return 1.0 if denom == 0 else float(2.0 * (p & g).sum() / denom)


def iou(pred: np.ndarray, target: np.ndarray, ignore_index: int | None = IGNORE) -> float:
    """``|P n G| / |P u G|``; 1 when both are empty."""
    p, g = _binary(pred, target, ignore_index)
    union = (p | g).sum()
    return 1.0 if union == 0 else float((p & g).sum() / union)


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels (voxels): the mask minus its erosion by the face-connected cross, MedPy's default
    connectivity 1 (4-connected in 2D, 6-connected in 3D; outside the array is background)."""
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=cross, border_value=0)
    return mask & ~eroded


def directed_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance from every surface pixel of ``a`` to the nearest surface pixel of ``b`` (``spacing`` per axis,
    default 1)."""
    sb = surface(b)
    dt = ndimage.distance_transform_edt(~sb, sampling=_spacing(spacing, a.ndim))
    return dt[surface(a)]


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if len(spacing) != ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {ndim}D mask")
    return tuple(float(x) for x in spacing)


def _empty_case(p: np.ndarray, g: np.ndarray, spacing: Sequence[float] | None, empty_distance: str) -> float | None:
    if not p.any() and not g.any():
        return 0.0
    if p.any() and g.any():
        return None
    if empty_distance == "nan":
        return float("nan")
    return float(math.hypot(*(n * d for n, d in zip(p.shape, _spacing(spacing, p.ndim)))))


def assd(pred, target, spacing: Sequence[float] | None = None, ignore_index: int | None = IGNORE,
         empty_distance: str = "diagonal") -> float:
    """Average symmetric surface distance (MedPy ``assd``)."""
    p, g = _binary(pred, target, ignore_index)
    special = _empty_case(p, g, spacing, empty_distance)
    if special is not None:
        return special
    return float((directed_distances(p, g, spacing).mean() + directed_distances(g, p, spacing).mean()) / 2)


def hd95(pred, target, spacing: Sequence[float] | None = None, ignore_index: int | None = IGNORE,
         empty_distance: str = "diagonal") -> float:
    """95th-percentile Hausdorff distance (MedPy ``hd95``): percentile of both directed sets pooled."""
    p, g = _binary(pred, target, ignore_index)
    special = _empty_case(p, g, spacing, empty_distance)
    if special is not None:
        return special
    pooled = np.concatenate((directed_distances(p, g, spacing), directed_distances(g, p, spacing)))
    return float(np.percentile(pooled, 95))


def segmentation_metrics(pred: np.ndarray, target: np.ndarray, **kwargs) -> dict[str, np.ndarray]:
    """Per-image Dice / IoU / ASSD / HD95 for batches (B, H, W); images without any valid pixel are NaN."""
    ignore_index = kwargs.get("ignore_index", IGNORE)
    out: dict[str, list[float]] = {"dice": [], "iou": [], "assd": [], "hd95": []}
    for p, t in zip(np.asarray(pred), np.asarray(target)):
        if ignore_index is not None and (t == ignore_index).all():
            for v in out.values():
                v.append(float("nan"))
            continue
        out["dice"].append(dice(p, t, ignore_index))
        out["iou"].append(iou(p, t, ignore_index))
        out["assd"].append(assd(p, t, **kwargs))
        out["hd95"].append(hd95(p, t, **kwargs))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def lesion_cases(target: np.ndarray, ignore_index: int | None = IGNORE) -> np.ndarray:
    """bool (B,): the cases whose target mask has at least one (non-ignored) lesion pixel."""
    t = np.asarray(target)
    fg = t > 0
    if ignore_index is not None:
        fg &= t != ignore_index
    return np.asarray(fg.reshape(len(t), -1).any(1)) if len(t) else np.zeros(0, bool)


def no_lesion_cases(target: np.ndarray, ignore_index: int | None = IGNORE) -> np.ndarray:
    """bool (B,): fully annotated cases (no ignored pixel) without any lesion pixel."""
    t = np.asarray(target)
    if not len(t):
        return np.zeros(0, bool)
    flat = t.reshape(len(t), -1)
    annotated = np.ones(len(t), bool) if ignore_index is None else ~(flat == ignore_index).any(1)
    return annotated & ~lesion_cases(t, ignore_index)


def _mean_over_lesion_cases(metric, pred: np.ndarray, target: np.ndarray, ignore_index: int | None) -> float:
    p, t = np.asarray(pred), np.asarray(target)
    cases = np.flatnonzero(lesion_cases(t, ignore_index))
    if not cases.size:
        return float("nan")
    return float(np.mean([metric(p[i], t[i], ignore_index) for i in cases]))


def lesion_dice(pred: np.ndarray, target: np.ndarray, ignore_index: int | None = IGNORE) -> float:
    """Mean per-case Dice over the cases that have a lesion (as the papers report it: TIM/UPA, UML,
    MT-U-Net), the one definition of validation and test Dice in medloop; NaN when no case has one.
    Pixels are never pooled across images, so large lesions do not outweigh small ones."""
    return _mean_over_lesion_cases(dice, pred, target, ignore_index)


def lesion_iou(pred: np.ndarray, target: np.ndarray, ignore_index: int | None = IGNORE) -> float:
    """Mean per-case IoU over the cases that have a lesion (see :func:`lesion_dice`)."""
    return _mean_over_lesion_cases(iou, pred, target, ignore_index)


def empty_mask_rate(pred: np.ndarray, target: np.ndarray, ignore_index: int | None = IGNORE) -> float:
    """Fraction of the no-lesion cases (e.g. BUSI 'normal') whose predicted mask is empty; NaN if none."""
    p, t = np.asarray(pred), np.asarray(target)
    cases = np.flatnonzero(no_lesion_cases(t, ignore_index))
    if not cases.size:
        return float("nan")
    return float(np.mean([not (p[i] > 0).any() for i in cases]))
