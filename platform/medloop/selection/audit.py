"""Pseudo-label audit: a random fraction of the accepted pseudo-labels is also sent to annotators
(flagged ``audit``), so the selector's precision is measured on human answers, per class and round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def audit_sample(accepted_idx: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted random subset of ``accepted_idx`` of size ``ceil(fraction * n)`` (without replacement).

    Deterministic for a given ``seed`` (pass e.g. ``campaign seed + round id`` to vary by round).
    ``ceil`` so that a small campaign with ``fraction > 0`` still audits at least one pseudo-label.
    """
    idx = np.asarray(accepted_idx, dtype=np.int64).reshape(-1)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError("fraction must be in [0, 1]")
    n = min(idx.shape[0], int(math.ceil(fraction * idx.shape[0] - 1e-9)))
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(idx, size=n, replace=False))


def audit_precision(
    pseudo_class: np.ndarray, human_class: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Precision of audited pseudo-labels against the human answers.

    ``pseudo_class`` / ``human_class`` int (n,), aligned per audited sample; ``human_class < 0``
    (no answer yet) is left out. Returns ``{"overall": p, "per_class": {name: p}, "counts": {name: n},
    "n": n_answered}`` where ``per_class[c]`` = fraction of answered audits pseudo-labelled ``c`` that the
    human also labelled ``c``; NaN when there is no answered audit for it.
    """
    pc: np.ndarray = np.asarray(pseudo_class, dtype=np.int64).reshape(-1)
    hc: np.ndarray = np.asarray(human_class, dtype=np.int64).reshape(-1)
    if pc.shape != hc.shape:
        raise ValueError("pseudo_class and human_class must have the same length")
    k = len(class_names)
    answered = (hc >= 0) & (pc >= 0) & (pc < k)
    pc, hc = pc[answered], hc[answered]
    correct = pc == hc
    n_k = np.bincount(pc, minlength=k)
    ok_k = np.bincount(pc, weights=correct, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec_k = np.where(n_k > 0, ok_k / np.maximum(n_k, 1), np.nan)
    overall = float(correct.mean()) if correct.size else float("nan")
    return {
        "overall": overall,
        "per_class": {name: float(prec_k[i]) for i, name in enumerate(class_names)},
        "counts": {name: int(n_k[i]) for i, name in enumerate(class_names)},
        "n": int(correct.size),
    }
