"""Per-region Dice and HD95 (in millimetres) for 2D and 3D label maps with K regions.

A label map holds one integer class per pixel / voxel (0 = background, 255 = ignored, e.g. the
unannotated slices of a partially labelled volume). A *region* is a set of classes: by default
each class 1..K-1 on its own; nested regions such as BraTS's whole tumour {1, 2, 4}, tumour core
{1, 4} and enhancing tumour {4} (the regions of Cheng et al., MTTU-Net, IEEE TMI 2022, Tables
II-VI) are given as a mapping ``name -> classes``.

Distances use the voxel spacing (``spacing`` per axis, in mm, same axis order as the arrays):
``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``. Surfaces and HD95 follow MedPy
(``medpy.metric.binary``, connectivity 1) as :mod:`.segmentation` does in 2D: the surface is the
mask minus its erosion by the face-connected cross (outside the array counts as background);
HD95 = the 95th percentile of both directed surface-distance sets pooled.

Empty-region conventions (after dropping ignored voxels):
* region absent in both: Dice = 1, HD95 = 0 (a correct "not there");
* absent in exactly one (e.g. an empty prediction of a present region): Dice = 0 and HD95 = the
  array's diagonal in mm, ``sqrt(sum((n_i * spacing_i)^2))``, the largest distance possible, so
  averages stay finite and penalise the miss; ``empty_distance="nan"`` gives NaN instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

IGNORE = 255

Regions = Mapping[str, Sequence[int]]


def default_regions(num_classes: int) -> dict[str, list[int]]:
    """One region per foreground class: ``{"1": [1], ..., "K-1": [K-1]}`` (``num_classes`` counts the background)."""
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too: >= 2, got {num_classes}")
    return {str(k): [k] for k in range(1, num_classes)}


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    s = tuple(float(v) for v in spacing)
    if len(s) != ndim or any(not v > 0 for v in s):
        raise ValueError(f"spacing must give {ndim} positive values (one per array axis), got {tuple(spacing)}")
    return s


def _valid(target: np.ndarray, ignore_index: int | None) -> np.ndarray:
    return np.ones(target.shape, bool) if ignore_index is None else target != ignore_index


def region_mask(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """bool mask of the voxels whose class is in ``classes``."""
    return np.isin(labels, np.asarray(list(classes)))


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a 2D or 3D mask: the mask minus its erosion by the face-connected cross."""
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def directed_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distance (in ``spacing`` units) from every surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    dt = ndimage.distance_transform_edt(~surface(b), sampling=spacing)
    return np.asarray(dt[surface(a)], dtype=np.float64)


def diagonal(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The array's diagonal in mm: ``sqrt(sum((n_i * s_i)^2))``."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def binary_dice(p: np.ndarray, g: np.ndarray) -> float:
    """``2 |P n G| / (|P| + |G|)``; 1 when both are empty."""
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, g).sum() / denom)


def binary_hd95(p: np.ndarray, g: np.ndarray, spacing: Sequence[float], empty_distance: str = "diagonal") -> float:
    """95th-percentile symmetric surface distance of two bool masks (MedPy ``hd95``), conventions above."""
    if empty_distance not in ("diagonal", "nan"):
        raise ValueError(f"empty_distance must be 'diagonal' or 'nan', got {empty_distance!r}")
    sp = _spacing(spacing, p.ndim)
    if not p.any() and not g.any():
        return 0.0
    if not (p.any() and g.any()):
        return float("nan") if empty_distance == "nan" else diagonal(p.shape, sp)
    pooled = np.concatenate((directed_distances(p, g, sp), directed_distances(g, p, sp)))
    return float(np.percentile(pooled, 95))


def _check(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred), np.asarray(target)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} label maps differ in shape")
    if p.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D label map, got {p.ndim} dimensions {p.shape}")
    return p, t


def region_metrics(
    pred: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float] | None = None,
    regions: Regions | None = None,
    num_classes: int | None = None,
    ignore_index: int | None = IGNORE,
    empty_distance: str = "diagonal",
) -> dict[str, dict[str, float]]:
    """``{region: {"dice": .., "hd95": .. (mm)}}`` for one 2D (H, W) or 3D (D, H, W) label map pair.

    ``regions``: name -> classes (nested regions allowed); else one region per class
    1..``num_classes``-1 (``num_classes`` defaults to the largest class present + 1).
    ``spacing``: mm per array axis (default 1). Voxels where ``target == ignore_index`` are
    left out of both masks.
    """
    p, t = _check(pred, target)
    sp = _spacing(spacing, p.ndim)
    valid = _valid(t, ignore_index)
    if regions is None:
        if num_classes is None:
            present = np.concatenate([p[valid].ravel(), t[valid].ravel()])
            num_classes = max(int(present.max()) + 1 if present.size else 2, 2)
        regions = default_regions(num_classes)
    out: dict[str, dict[str, float]] = {}
    for name, classes in regions.items():
        pm = region_mask(p, classes) & valid
        gm = region_mask(t, classes) & valid
        out[str(name)] = {"dice": binary_dice(pm, gm), "hd95": binary_hd95(pm, gm, sp, empty_distance)}
    return out


def region_dice(pred: np.ndarray, target: np.ndarray, regions: Regions | None = None,
                num_classes: int | None = None, ignore_index: int | None = IGNORE) -> dict[str, float]:
    """Per-region Dice (no distances computed)."""
    p, t = _check(pred, target)
    valid = _valid(t, ignore_index)
    if regions is None:
        regions = default_regions(num_classes if num_classes is not None
                                  else max(int(max(p[valid].max(initial=0), t[valid].max(initial=0))) + 1, 2))
    return {str(n): binary_dice(region_mask(p, c) & valid, region_mask(t, c) & valid) for n, c in regions.items()}


def mean_region_metrics(
    preds: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    spacings: Sequence[Sequence[float] | None],
    regions: Regions | None = None,
    num_classes: int | None = None,
    **kwargs: object,
) -> dict[str, dict[str, float]]:
    """Mean over cases of :func:`region_metrics` (cases may differ in shape and spacing; NaN ignored)."""
    if not (len(preds) == len(targets) == len(spacings)):
        raise ValueError(f"{len(preds)} predictions, {len(targets)} targets, {len(spacings)} spacings")
    if regions is None:
        if num_classes is None:
            raise ValueError("give regions or num_classes so every case has the same regions")
        regions = default_regions(num_classes)
    per_case = [region_metrics(p, t, s, regions=regions, **kwargs)  # type: ignore[arg-type]
                for p, t, s in zip(preds, targets, spacings)]
    out: dict[str, dict[str, float]] = {}
    for name in regions:
        out[str(name)] = {}
        for metric in ("dice", "hd95"):
            vals = np.asarray([c[str(name)][metric] for c in per_case], dtype=np.float64)
            out[str(name)][metric] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return out


def per_case_regions(
    preds: Sequence[np.ndarray] | np.ndarray,
    targets: Sequence[np.ndarray] | np.ndarray,
    regions: Regions,
    spacings: Sequence[Sequence[float] | None] | None = None,
    distances: bool = True,
    ignore_index: int | None = IGNORE,
) -> dict[str, dict[str, np.ndarray]]:
    """Per region, one value per case: ``holds`` (bool: the case's target holds the region), ``dice`` and, with
    ``distances``, ``hd95`` (mm with ``spacings``); NaN where the target does not hold the region."""
    n = len(targets)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, classes in regions.items():
        holds = np.array([region_mask(np.asarray(t), classes).any() for t in targets], bool)
        dice, hd = np.full(n, np.nan), np.full(n, np.nan)
        for i in np.flatnonzero(holds):
            if distances:
                m = region_metrics(preds[i], targets[i], None if spacings is None else spacings[i],
                                   regions={name: classes}, ignore_index=ignore_index)[str(name)]
                dice[i], hd[i] = m["dice"], m["hd95"]
            else:
                dice[i] = region_dice(preds[i], targets[i], {name: classes}, ignore_index=ignore_index)[str(name)]
        out[str(name)] = {"holds": holds, "dice": dice, "hd95": hd}
    return out


def mean_of_holding(per_case: dict[str, np.ndarray], index: np.ndarray | None = None) -> dict[str, float]:
    """``n``, mean ``dice`` and mean finite ``hd95`` over the cases (of ``index``, a bootstrap resample: repeats
    count) that hold the region; NaN where none does."""
    idx = np.arange(len(per_case["holds"])) if index is None else np.asarray(index)
    keep = idx[per_case["holds"][idx]]
    dice = per_case["dice"][keep]
    hd = per_case["hd95"][keep]
    hd = hd[np.isfinite(hd)]
    return {"n": float(len(keep)), "dice": float(dice.mean()) if len(keep) else math.nan,
            "hd95": float(hd.mean()) if hd.size else math.nan}


def mean_over_holding_cases(
    preds: Sequence[np.ndarray] | np.ndarray,
    targets: Sequence[np.ndarray] | np.ndarray,
    regions: Regions,
    spacings: Sequence[Sequence[float] | None] | None = None,
    distances: bool = True,
    ignore_index: int | None = IGNORE,
) -> dict[str, dict[str, float]]:
    """Per region: ``n`` (the cases whose target holds it), their mean ``dice`` and, with ``distances``, mean
    ``hd95`` (mm with ``spacings``); NaN where no case holds the region (or HD95 is not asked). The mean over
    the cases holding a region is how the papers report per-region Dice (an absent region would otherwise
    add a trivial 1). Validation (every epoch: ``distances=False``), round reports and evaluation use it."""
    per = per_case_regions(preds, targets, regions, spacings, distances, ignore_index)
    return {name: mean_of_holding(values) for name, values in per.items()}
