"""Calibration of class probabilities (N, K) against labels (N,).

* ECE (Guo et al. 2017; Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 16): ``sum_l |B_l|/N |acc(B_l) - conf(B_l)|`` with
  ``n_bins`` equal-width bins of the confidence max_k p_k; bin l = (l/L, (l+1)/L], the
  first bin also holds confidence 0.
* adaptive ECE: the same sum over ``n_bins`` equal-mass bins (sorted confidences split
  into near-equal counts with ``np.array_split``).
* Brier (multiclass): ``1/N sum_i sum_k (p_ik - y_ik)^2`` (for K = 2 this is twice
  sklearn's binary ``brier_score_loss``).
* NLL: ``-1/N sum_i log p_{i, y_i}`` (probabilities clipped at 1e-12).
* risk-coverage: sort by decreasing confidence; at coverage k/N the risk is the error
  rate of the k most confident; AURC = mean risk over k = 1..N.
* segmentation: :func:`pixel_predictions` turns (N, Q, H, W) maps into per-pixel rows, so the
  same functions give pixel-wise ECE / reliability bins.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def _conf_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    return probs.max(1), (probs.argmax(1) == np.asarray(labels)).astype(np.float64)


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: (l/L, (l+1)/L] -> l (0 goes to bin 0)."""
    return np.clip(np.ceil(np.asarray(confidence) * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per equal-width bin: lower, upper, mean confidence, accuracy, count (NaN where empty)."""
    conf, correct = _conf_correct(probs, labels)
    idx = bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, np.nan)
        acc = np.where(count > 0, acc_sum / count, np.nan)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"lower": edges[:-1], "upper": edges[1:], "confidence": mean_conf, "accuracy": acc, "count": count}


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins."""
    b = reliability_bins(probs, labels, n_bins)
    n = b["count"].sum()
    filled = b["count"] > 0
    return float(np.sum(b["count"][filled] / n * np.abs(b["accuracy"][filled] - b["confidence"][filled])))


def adaptive_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-mass bins."""
    conf, correct = _conf_correct(probs, labels)
    order = np.argsort(conf, kind="stable")
    n = len(conf)
    total = 0.0
    for chunk in np.array_split(order, min(n_bins, n)):
        if len(chunk):
            total += len(chunk) / n * abs(correct[chunk].mean() - conf[chunk].mean())
    return float(total)


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(labels)]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class."""
    probs = np.asarray(probs, dtype=np.float64)
    p = probs[np.arange(len(probs)), np.asarray(labels)]
    return float(-np.mean(np.log(np.clip(p, _EPS, 1.0))))


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coverage k/N, risk of the k most confident) for k = 1..N."""
    order = np.argsort(-np.asarray(confidence, dtype=np.float64), kind="stable")
    errors = 1.0 - np.asarray(correct, dtype=np.float64)[order]
    k = np.arange(1, len(order) + 1)
    return k / len(order), np.cumsum(errors) / k


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve (mean risk over coverages k/N)."""
    return float(np.mean(risk_coverage(confidence, correct)[1]))


def calibration_metrics(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """ECE, adaptive ECE, Brier, NLL and AURC in one dict."""
    conf, correct = _conf_correct(probs, labels)
    return {
        "ece": ece(probs, labels, n_bins),
        "adaptive_ece": adaptive_ece(probs, labels, n_bins),
        "brier": brier_score(probs, labels),
        "nll": nll(probs, labels),
        "aurc": aurc(conf, correct),
    }


def pixel_predictions(
    seg_probs: np.ndarray, masks: np.ndarray, *, ignore: int = 255, max_pixels: int | None = 1_000_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-level calibration input: seg probabilities (N, Q, H, W) and masks (N, H, W) -- or volumes
    (N, Q, D, H, W) and (N, D, H, W) -> (P, Q) probabilities and (P,) labels of the pixels (voxels) whose
    mask is not ``ignore``.

    Every pixel counts as one prediction (the usual pixel-wise ECE of segmentation calibration).
    When more than ``max_pixels`` remain, a seeded uniform subsample keeps the cost bounded.
    """
    probs = np.asarray(seg_probs)
    masks = np.asarray(masks)
    if probs.ndim not in (4, 5) or masks.shape != (probs.shape[0], *probs.shape[2:]):
        raise ValueError(f"seg_probs (N, Q, [D,] H, W) and masks (N, [D,] H, W) expected; got {probs.shape} and "
                         f"{masks.shape}")
    flat = np.moveaxis(probs, 1, -1).reshape(-1, probs.shape[1])
    labels = masks.reshape(-1)
    keep = np.flatnonzero(labels != ignore)
    if max_pixels is not None and keep.size > max_pixels:
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=max_pixels, replace=False))
    return flat[keep].astype(np.float64), labels[keep].astype(np.int64)
