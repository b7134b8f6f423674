"""Classification metrics on numpy arrays (labels (N,), predictions (N,), probs (N, K)).

All computed from the confusion matrix ``C[i, j]`` = #(true i, predicted j) (sklearn
convention). Per-class quantities are one-vs-rest; a class with an empty denominator
gets 0 (sklearn's ``zero_division=0``). Macro = unweighted mean over the ``num_classes``
classes; weighted = mean weighted by class support.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(K, K) int64 counts; rows true, columns predicted."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    k = num_classes if num_classes is not None else int(max(labels.max(initial=-1), preds.max(initial=-1)) + 1)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of correct predictions."""
    return float(np.mean(np.asarray(labels) == np.asarray(preds)))


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class(cm: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest TP, FP, FN, TN, sensitivity (recall), specificity, precision, F1, support."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    tn = cm.sum() - tp - fp - fn
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "sensitivity": recall,
        "specificity": _div(tn, tn + fp),
        "precision": precision,
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "support": tp + fn,
    }


def f1_score(labels: np.ndarray, preds: np.ndarray, num_classes: int | None = None, average: str = "macro") -> float:
    """Macro or support-weighted F1."""
    pc = per_class(confusion_matrix(labels, preds, num_classes))
    if average == "macro":
        return float(pc["f1"].mean())
    if average == "weighted":
        return float(np.sum(pc["f1"] * pc["support"]) / max(pc["support"].sum(), 1))
    raise ValueError(f"unknown average {average!r}")


def sensitivity(labels, preds, num_classes: int | None = None) -> np.ndarray:
    """Per-class recall TP / (TP + FN)."""
    return per_class(confusion_matrix(labels, preds, num_classes))["sensitivity"]


def specificity(labels, preds, num_classes: int | None = None) -> np.ndarray:
    """Per-class TN / (TN + FP)."""
    return per_class(confusion_matrix(labels, preds, num_classes))["specificity"]


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney U statistic (ties count 1/2); NaN if one class is absent."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_ovr(labels: np.ndarray, probs: np.ndarray, average: str = "macro") -> float:
    """One-vs-rest AUC, macro (unweighted) or prevalence-weighted over classes present and absent
    in ``labels`` (classes without positives are skipped)."""
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    aucs, weights = [], []
    for k in range(probs.shape[1]):
        a = binary_auc(probs[:, k], labels == k)
        if not np.isnan(a):
            aucs.append(a)
            weights.append((labels == k).sum())
    if not aucs:
        return float("nan")
    if average == "weighted":
        return float(np.average(aucs, weights=weights))
    return float(np.mean(aucs))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, macro / weighted F1, OvR AUC, macro sensitivity and specificity."""
    probs = np.asarray(probs)
    preds = probs.argmax(1)
    k = probs.shape[1]
    pc = per_class(confusion_matrix(labels, preds, k))
    return {
        "accuracy": accuracy(labels, preds),
        "f1_macro": f1_score(labels, preds, k, "macro"),
        "f1_weighted": f1_score(labels, preds, k, "weighted"),
        "auc_ovr": auc_ovr(labels, probs),
        "sensitivity_macro": float(pc["sensitivity"].mean()),
        "specificity_macro": float(pc["specificity"].mean()),
    }
