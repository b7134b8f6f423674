"""Acquisition functions (which unlabeled cases go to annotators first) and the annotation queue.

Every acquisition function is registered in ``ACQUISITIONS`` with one signature::

    fn(scores: Mapping[str, np.ndarray], **options) -> np.ndarray float64 (N,), higher = queue first

``scores`` holds per-image arrays named like the ``Prediction`` columns (``docs/contracts.md``):
``probs`` (N, K), ``confidence``, ``entropy``, ``mutual_info``, ``vacuity``, ``margin``,
``seg_uncertainty``, ... Functions read only the keys they need.

=================  ===========================================================================
name               score
=================  ===========================================================================
entropy            predictive entropy ``scores["entropy"]``, or ``-sum p log p`` of ``probs``
bald               mutual information (BALD) ``scores["mutual_info"]``
margin             ``1 - (p_top1 - p_top2)``: smaller margin = more informative
                   (``scores["margin"]``, or computed from ``probs``)
vacuity            evidential vacuity ``K / S`` ``scores["vacuity"]`` (Ren, Zou et al., UML, MICCAI 2023, Eq. 1)
seg_uncertainty    lesion + boundary-band pixel uncertainty ``scores["seg_uncertainty"]``
hybrid             ``w * minmax(class term) + (1 - w) * minmax(seg term)``; options ``weight``
                   (0.5), ``class_measure`` ("entropy"), ``seg_measure`` ("seg_uncertainty");
                   min-max over the arrays given (pass the pool only)
random             uniform in [0, 1) from ``numpy.random.default_rng(seed)``; option ``seed``
=================  ===========================================================================

Non-finite scores (e.g. a missing measure stored as NaN) are never queued by :func:`build_queue`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medloop.selection import ACQUISITIONS
from medloop.selection.diversity import k_center_greedy


def _col(scores: Mapping[str, np.ndarray], key: str) -> np.ndarray:
    if key not in scores:
        raise KeyError(f"acquisition needs scores[{key!r}]; have {sorted(scores)}")
    return np.asarray(scores[key], dtype=np.float64).reshape(-1)


def _n(scores: Mapping[str, np.ndarray]) -> int:
    for v in scores.values():
        arr = np.asarray(v)
        if arr.ndim >= 1:
            return int(arr.shape[0])
    raise ValueError("scores holds no arrays")


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """``H = -sum_k p_k log p_k`` (nats) per row of ``probs`` (N, K)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def probability_margin(probs: np.ndarray) -> np.ndarray:
    """``p_top1 - p_top2`` per row of ``probs`` (N, K), K >= 2."""
    p = np.asarray(probs, dtype=np.float64)
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def minmax(x: np.ndarray) -> np.ndarray:
    """Scale finite values to [0, 1] (constant -> 0); NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        return np.full_like(x, np.nan)
    lo, hi = x[finite].min(), x[finite].max()
    if hi <= lo:
        return np.where(finite, 0.0, np.nan)
    return (x - lo) / (hi - lo)


@ACQUISITIONS.register("entropy")
def entropy(scores: Mapping[str, np.ndarray], **_: Any) -> np.ndarray:
    """Predictive entropy (higher = more uncertain)."""
    if "entropy" in scores:
        return _col(scores, "entropy")
    return predictive_entropy(scores["probs"])


@ACQUISITIONS.register("bald")
def bald(scores: Mapping[str, np.ndarray], **_: Any) -> np.ndarray:
    """BALD: mutual information between prediction and weights (MC dropout)."""
    return _col(scores, "mutual_info")


@ACQUISITIONS.register("margin")
def margin(scores: Mapping[str, np.ndarray], **_: Any) -> np.ndarray:
    """``1 - margin``: the smaller the top-1 / top-2 gap, the higher the score."""
    m = _col(scores, "margin") if "margin" in scores else probability_margin(scores["probs"])
    return 1.0 - m


@ACQUISITIONS.register("vacuity")
def vacuity(scores: Mapping[str, np.ndarray], **_: Any) -> np.ndarray:
    """Evidential vacuity ``K / S`` (lack of evidence)."""
    return _col(scores, "vacuity")


@ACQUISITIONS.register("seg_uncertainty")
def seg_uncertainty(scores: Mapping[str, np.ndarray], **_: Any) -> np.ndarray:
    """Mean pixel uncertainty over the predicted lesion and its boundary band."""
    return _col(scores, "seg_uncertainty")


@ACQUISITIONS.register("hybrid")
def hybrid(
    scores: Mapping[str, np.ndarray],
    *,
    weight: float = 0.5,
    class_measure: str = "entropy",
    seg_measure: str = "seg_uncertainty",
    **_: Any,
) -> np.ndarray:
    """``w * minmax(class term) + (1 - w) * minmax(seg term)``; class term via its acquisition."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError("hybrid weight must be in [0, 1]")
    cls_term = ACQUISITIONS.get(class_measure)(scores) if class_measure in ACQUISITIONS else _col(scores, class_measure)
    seg_term = _col(scores, seg_measure)
    return weight * minmax(cls_term) + (1.0 - weight) * minmax(seg_term)


@ACQUISITIONS.register("random")
def random_scores(scores: Mapping[str, np.ndarray], *, seed: int = 0, **_: Any) -> np.ndarray:
    """Seeded uniform scores (a baseline); same seed and N give the same order."""
    return np.random.default_rng(seed).random(_n(scores))


def acquisition_scores(name: str, scores: Mapping[str, np.ndarray], **options: Any) -> np.ndarray:
    """Score by registry name: ``ACQUISITIONS.get(name)(scores, **options)``."""
    return ACQUISITIONS.get(name)(scores, **options)


def _top(score: np.ndarray, cand: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` best of ``cand`` by score, best first, ties by lower index (O(N) + O(m log m))."""
    s = score[cand]
    if cand.shape[0] > m:
        part = np.argpartition(-s, m - 1)[:m]
        thr = s[part].min()
        above = cand[s > thr]
        tied = cand[s == thr][: m - above.shape[0]]
        cand = np.concatenate((above, tied))
        s = score[cand]
    order = np.lexsort((cand, -s))
    return cand[order]


def build_queue(
    scores: np.ndarray,
    eligible: np.ndarray,
    budget: int,
    *,
    diversity: bool = False,
    embeddings: np.ndarray | None = None,
    candidate_factor: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """Indices (int64, queue order) of at most ``budget`` eligible samples, highest score first.

    ``scores`` float (N,) from an acquisition function; ``eligible`` bool (N,) -- the caller
    excludes cases already queued, annotated or otherwise unavailable. Non-finite scores are skipped.
    With ``diversity=True`` (needs ``embeddings`` (N, d)), k-center greedy picks ``budget`` of the
    top ``candidate_factor * budget`` candidates, starting from the best-scoring one, so
    near-duplicates are not all queued. Ties are broken by lower index; ``seed`` is accepted for
    API stability and currently unused (the result is deterministic).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    elig = np.asarray(eligible, dtype=bool).reshape(-1)
    if s.shape != elig.shape:
        raise ValueError(f"scores {s.shape} and eligible {elig.shape} must have the same length")
    budget = int(budget)
    cand = np.flatnonzero(elig & np.isfinite(s))
    if budget <= 0 or cand.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if not diversity:
        return _top(s, cand, budget).astype(np.int64)
    if embeddings is None:
        raise ValueError("diversity=True needs embeddings (N, d)")
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] != s.shape[0]:
        raise ValueError(f"embeddings must be (N, d) with N = {s.shape[0]}, got {emb.shape}")
    top = _top(s, cand, max(budget, int(candidate_factor) * budget))
    picks = k_center_greedy(emb[top], budget, first=0)
    return top[picks].astype(np.int64)
