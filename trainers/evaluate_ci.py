"""Evaluation on a labeled dataset outside the campaign: masks compared at each image's own size, every
metric with a percentile bootstrap 95 % confidence interval over cases (:mod:`medloop.trainers.metrics.bootstrap`).

Definitions are :func:`medloop.trainers.evaluate.evaluation_metrics`'s (the campaign's test metrics):
Dice / IoU / HD95 are means per case over the cases with a lesion (an empty prediction on a lesion: Dice
0, HD95 the image diagonal), ``empty_rate`` is the share of the no-lesion cases predicted empty, and the
classification metrics (accuracy, macro-F1, one-vs-rest macro AUC, 15-bin ECE, Brier) come from
:func:`medloop.trainers.evaluate.classification_summary` on the cases with a class label. Since images
differ in size, the per-case segmentation values are computed once per case (:func:`case_segmentation`)
and averaged; on images of one size this equals ``evaluation_metrics``.

Per class: ``recall``, ``precision``, one-vs-rest ``auc``, and Dice / IoU / HD95 / ``empty_rate`` over the
cases whose true class it is. A case without a mask (``None``) counts for classification only; a case
without a class label (-1) for segmentation only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medloop.trainers.evaluate import classification_summary
from medloop.trainers.metrics.bootstrap import bootstrap_cis

IGNORE = 255
#: headline metrics, in report order
OVERALL = ("dice", "iou", "hd95", "empty_rate", "accuracy", "f1", "auc", "ece", "brier")
PER_CLASS = ("recall", "precision", "auc", "dice", "iou", "hd95", "empty_rate")


def case_segmentation(pred_masks: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                      spacings: Sequence[Sequence[float] | None] | None = None) -> dict[str, np.ndarray]:
    """Per case, each at its own size (2D or 3D): ``lesion`` / ``no_lesion`` (bool; a case without a mask,
    or with ignored pixels for no_lesion, is neither), ``dice``, ``iou``, ``hd95`` (NaN off lesion cases; in
    pixels, or in mm with the case's ``spacings`` per axis) and ``empty`` (the prediction has no lesion
    pixel)."""
    from medloop.trainers import metrics as M

    n = len(pred_masks)
    if len(masks) != n:
        raise ValueError(f"{n} predicted masks for {len(masks)} masks")
    if spacings is not None and len(spacings) != n:
        raise ValueError(f"{n} predicted masks for {len(spacings)} spacings")
    out = {k: np.zeros(n, bool) for k in ("lesion", "no_lesion", "empty")}
    out.update({k: np.full(n, np.nan) for k in ("dice", "iou", "hd95")})
    for i, (p, m) in enumerate(zip(pred_masks, masks)):
        p = np.asarray(p)
        out["empty"][i] = not (p > 0).any()
        if m is None:
            continue
        m = np.asarray(m)
        if p.shape != m.shape:
            raise ValueError(f"case {i}: predicted mask {p.shape} and mask {m.shape} differ in size")
        lesion = bool(((m > 0) & (m != IGNORE)).any())
        out["lesion"][i] = lesion
        out["no_lesion"][i] = not lesion and not (m == IGNORE).any()
        if lesion:
            out["dice"][i] = M.dice(p, m, IGNORE)
            out["iou"][i] = M.iou(p, m, IGNORE)
            out["hd95"][i] = M.hd95(p, m, None if spacings is None else spacings[i], ignore_index=IGNORE)
    return out


def _mean(values: np.ndarray, where: np.ndarray) -> float | None:
    return float(values[where].mean()) if where.any() else None


def summary(probs: np.ndarray, labels: np.ndarray, seg: dict[str, np.ndarray], class_names: Sequence[str],
            index: np.ndarray | None = None) -> dict[str, float | None]:
    """Every metric of the module docstring on the cases ``index`` (all when None, repeats allowed), as a
    flat dict (``dice``, ..., ``<class>/recall``, ...); None where undefined on those cases."""
    from medloop.trainers.metrics.classification import binary_auc

    idx = np.arange(len(labels)) if index is None else np.asarray(index)
    y, p = np.asarray(labels)[idx], np.asarray(probs, np.float64)[idx]
    s = {k: v[idx] for k, v in seg.items()}
    cls = classification_summary(p, y, class_names)
    out: dict[str, float | None] = {k: cls[k] for k in ("accuracy", "f1", "auc", "ece", "brier")}
    out["dice"], out["iou"] = _mean(s["dice"], s["lesion"]), _mean(s["iou"], s["lesion"])
    out["hd95"] = _mean(s["hd95"], s["lesion"])
    out["empty_rate"] = _mean(s["empty"].astype(float), s["no_lesion"])
    has = y >= 0
    for k, name in enumerate(class_names):
        pc = cls["per_class"].get(name, {})
        out[f"{name}/recall"], out[f"{name}/precision"] = pc.get("recall"), pc.get("precision")
        auc = binary_auc(p[has, k], y[has] == k) if has.any() else float("nan")
        out[f"{name}/auc"] = auc if np.isfinite(auc) else None
        mine = y == k
        out[f"{name}/dice"] = _mean(s["dice"], s["lesion"] & mine)
        out[f"{name}/iou"] = _mean(s["iou"], s["lesion"] & mine)
        out[f"{name}/hd95"] = _mean(s["hd95"], s["lesion"] & mine)
        out[f"{name}/empty_rate"] = _mean(s["empty"].astype(float), s["no_lesion"] & mine)
    return out


def _entry(value: float | None, ci: tuple[float, float] | None) -> dict[str, float | None]:
    lo, hi = (None, None) if ci is None or value is None else ci
    return {"value": value, "lo": lo, "hi": hi}


def concat_segmentation(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join the :func:`case_segmentation` results of consecutive batches."""
    keys = ("lesion", "no_lesion", "empty", "dice", "iou", "hd95")
    if not parts:
        return {k: np.zeros(0, bool if k in keys[:3] else np.float64) for k in keys}
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def evaluate_with_ci(
    probs: np.ndarray,
    labels: np.ndarray,
    seg: dict[str, np.ndarray],
    class_names: Sequence[str],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics with bootstrap intervals from class probabilities (N, K), labels (N,) (-1 = none) and the
    :func:`case_segmentation` of the same cases: ``metrics`` {name: {value, lo, hi}}, ``per_class``
    {class: {n, n_lesion, n_no_lesion, metric: {value, lo, hi}}}, ``confusion`` (rows true), ``reliability``
    (15 equal-width bins of the cases with a class label), counts and the ``bootstrap`` settings."""
    from medloop.trainers.metrics import reliability_bins

    labels = np.asarray(labels, np.int64).reshape(-1)
    probs = np.asarray(probs, np.float64).reshape(len(labels), -1)
    n = len(labels)
    if n == 0:
        raise ValueError("no case to evaluate")
    if any(len(v) != n for v in seg.values()):
        raise ValueError(f"segmentation results for {len(seg['dice'])} cases, {n} labels")
    point = summary(probs, labels, seg, class_names)
    cis = bootstrap_cis(lambda i: summary(probs, labels, seg, class_names, i), n, n_boot=n_boot, level=level,
                        seed=seed)
    cls = classification_summary(probs, labels, class_names)
    out: dict[str, Any] = {
        "n": n, "n_class": cls["n_class"], "n_lesion": int(seg["lesion"].sum()),
        "n_no_lesion": int(seg["no_lesion"].sum()),
        "metrics": {k: _entry(point[k], cis.get(k)) for k in OVERALL},
        "per_class": {}, "confusion": cls["confusion"],
        "bootstrap": {"n_boot": n_boot, "level": level, "seed": seed, "method": "percentile, resampling cases"},
    }
    for k, name in enumerate(class_names):
        mine = labels == k
        entry: dict[str, Any] = {"n": int(mine.sum()), "n_lesion": int((seg["lesion"] & mine).sum()),
                                 "n_no_lesion": int((seg["no_lesion"] & mine).sum())}
        entry.update({m: _entry(point[f"{name}/{m}"], cis.get(f"{name}/{m}")) for m in PER_CLASS})
        out["per_class"][name] = entry
    has = labels >= 0
    if has.any():
        bins = reliability_bins(probs[has], labels[has])
        out["reliability"] = [
            {"lo": float(lo), "hi": float(hi), "count": int(c),
             "confidence": None if c == 0 else float(conf), "accuracy": None if c == 0 else float(acc)}
            for lo, hi, conf, acc, c in zip(bins["lower"], bins["upper"], bins["confidence"], bins["accuracy"],
                                            bins["count"])
        ]
    else:
        out["reliability"] = []
    return out
