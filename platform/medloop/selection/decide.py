"""One round's pseudo-label decisions: policy (Eq. 19) + class balancing + mask gate, pure.

:func:`decide_pseudo_labels` is re-run every round on the new scores, so a pseudo-label accepted
last round can be dropped (the orchestrator retires what is no longer accepted). Human labels always
win: a sample with a human label is never accepted. Class and mask are decided separately.

Reason codes (``int8``; names in ``REASONS``, decode with :func:`reason_names`), first that applies:

====  ==================  ==========================================================
code  name                meaning
====  ==================  ==========================================================
0     accepted            pseudo-label accepted
1     human_label         the sample has a human label (human labels always win)
2     calibration_gate    the calibration gate closed pseudo-labelling this round
3     missing_score       a needed score is missing / not finite
4     low_confidence      confidence < tau_c (cpl, ups)
5     high_uncertainty    uncertainty > tau_u (ups)
6     class_balance       dropped to follow the human class ratio
7     mask_uncertain      mean pixel uncertainty >= mask_gate (mask only)
8     mask_inconsistent   the mask's emptiness contradicts the predicted class (mask only)
9     segmentation_gate   the segmentation gate closed pseudo-masks this round (mask only)
10    no_pseudo_labels    the campaign's policy is ``none``: no class or mask pseudo-label
====  ==================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from medloop.selection import POLICIES
from medloop.selection.balance import align_to_prior, balance_to_ratio
from medloop.selection.pseudo_masks import mask_gate as _mask_gate

REASONS: tuple[str, ...] = (
    "accepted",
    "human_label",
    "calibration_gate",
    "missing_score",
    "low_confidence",
    "high_uncertainty",
    "class_balance",
    "mask_uncertain",
    "mask_inconsistent",
    "segmentation_gate",
    "no_pseudo_labels",
)
(
    ACCEPTED, HUMAN_LABEL, CALIBRATION_GATE, MISSING_SCORE, LOW_CONFIDENCE, HIGH_UNCERTAINTY, CLASS_BALANCE,
    MASK_UNCERTAIN, MASK_INCONSISTENT, SEGMENTATION_GATE, NO_PSEUDO_LABELS,
) = range(len(REASONS))


@dataclass(frozen=True)
class PseudoLabelParams:
    """Thresholds of one round (field names match ``SelectionConfig`` where they exist).

    ``measure`` names the uncertainty array in ``scores`` used by UPS and to rank within a class when
    balancing; ``tau_u`` is in its units (per measure and head, see ``policies.py``).
    ``mask_measure`` names the per-image pixel uncertainty compared with ``mask_gate``: by default the
    mean over the possible lesion and its boundary band (``seg_uncertainty``), not the whole image.
    ``no_lesion_class`` (e.g. the index of "normal"): when set and ``scores`` has ``lesion_fraction``,
    a pseudo-mask is accepted only if it is empty exactly when the predicted class is the no-lesion
    class. A model that confidently predicts an empty mask on a lesion image has low pixel
    uncertainty, so the gate alone would accept that empty mask (seen on BUSI, bench/README.md).
    ``distribution_alignment``: when ``scores`` has ``probs`` (N, K) and human class counts are given, the
    class and its confidence are taken from the probabilities aligned to the human class ratio
    (:func:`~medloop.selection.balance.align_to_prior`) before the policy; the uncertainty measure stays
    the model's own (alignment rescales the mean prediction, not its spread over passes).
    """

    policy: str = "ups"
    measure: str = "std"
    tau_c: float = 0.9
    tau_u: float = 0.05
    class_balance: bool = True
    mask_gate: float = 0.05
    mask_measure: str = "seg_uncertainty"
    no_lesion_class: int | None = None
    distribution_alignment: bool = False

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> PseudoLabelParams:
        """From a ``SelectionConfig``-like object (attributes read when present) plus overrides."""
        values = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        values.update(overrides)
        return cls(**values)


def reason_names(codes: np.ndarray) -> np.ndarray:
    """Reason codes -> object array of names (for the ``Selection.reason`` column)."""
    return np.asarray(REASONS, dtype=object)[np.asarray(codes, dtype=np.int64)]


def _arr(scores: Mapping[str, np.ndarray], key: str, n: int) -> np.ndarray:
    if key not in scores:
        raise KeyError(f"decide_pseudo_labels needs scores[{key!r}]; have {sorted(scores)}")
    a = np.asarray(scores[key], dtype=np.float64).reshape(-1)
    if a.shape[0] != n:
        raise ValueError(f"scores[{key!r}] has length {a.shape[0]}, expected {n}")
    return a


def decide_pseudo_labels(
    scores: Mapping[str, np.ndarray],
    has_human: np.ndarray,
    human_class_counts: np.ndarray | None,
    params: PseudoLabelParams | None = None,
    *,
    allow_pseudo: bool = True,
    allow_masks: bool = True,
    has_human_mask: np.ndarray | None = None,
    **overrides: Any,
) -> dict[str, np.ndarray]:
    """Decide class and mask pseudo-labels for N scored samples.

    ``scores``: ``pred_class`` int (N,), ``confidence`` (N,), ``params.measure`` (N,) (needed by
    ``ups``; otherwise optional, used for balancing, falling back to ``1 - confidence``) and
    ``params.mask_measure`` (N,) (if absent, no mask is accepted). ``has_human`` bool (N,): the
    sample has a human label -> neither class nor mask accepted. ``has_human_mask`` optionally
    excludes more samples from mask pseudo-labels only. ``human_class_counts`` (K,): the target ratio
    for balancing (``None`` or ``class_balance=False``: no balancing). ``allow_pseudo``: the
    calibration gate's answer; ``allow_masks``: the segmentation gate's (masks only). ``overrides``
    replace fields of ``params``.

    Returns ``accept_class`` bool, ``accept_mask`` bool, ``pseudo_class`` int64 (-1 if not
    accepted), ``reason_class`` int8, ``reason_mask`` int8 (codes in ``REASONS``) and ``confidence``
    float and ``decided_class`` int64 (the confidence and class the policy judged: aligned when
    ``distribution_alignment`` applies; class -1 where a score is missing), all (N,).
    Pixel-level ignore maps are made per accepted image with :func:`pseudo_mask`.
    """
    p = replace(params or PseudoLabelParams(), **overrides)
    policy = POLICIES.get(p.policy)
    human = np.asarray(has_human, dtype=bool).reshape(-1)
    n = human.shape[0]
    pred = _arr(scores, "pred_class", n)
    conf = _arr(scores, "confidence", n)
    if p.distribution_alignment and human_class_counts is not None and "probs" in scores:
        pred, conf = _aligned_prediction(scores["probs"], human_class_counts, n, pred, conf)
    unc = _arr(scores, p.measure, n) if (p.measure in scores or p.policy == "ups") else None

    # ---- class ---------------------------------------------------------------------------
    valid = np.isfinite(conf) & np.isfinite(pred) & (pred >= 0)
    if p.policy == "ups" and unc is not None:
        valid &= np.isfinite(unc)
    passed = policy(conf, unc, tau_c=p.tau_c, tau_u=p.tau_u)
    candidates = passed & valid & ~human & bool(allow_pseudo)
    accept_class = candidates
    pred_int = np.where(valid, pred, -1).astype(np.int64)
    if p.class_balance and human_class_counts is not None:
        rank_key = unc if unc is not None else 1.0 - conf
        accept_class = balance_to_ratio(
            pred_int, rank_key, candidates, np.asarray(human_class_counts, dtype=np.float64)
        )
    reason_class = np.full(n, ACCEPTED, dtype=np.int8)
    reason_class[~accept_class & candidates] = CLASS_BALANCE
    reason_class[~passed & ~(conf >= p.tau_c)] = LOW_CONFIDENCE
    reason_class[~passed & (conf >= p.tau_c)] = HIGH_UNCERTAINTY
    reason_class[~valid] = MISSING_SCORE
    if not allow_pseudo:
        reason_class[:] = CALIBRATION_GATE
    reason_class[human] = HUMAN_LABEL
    pseudo_class = np.where(accept_class, pred_int, -1)

    # ---- mask (decided separately) -------------------------------------------------------
    human_m = human.copy()
    if has_human_mask is not None:
        human_m |= np.asarray(has_human_mask, dtype=bool).reshape(-1)
    reason_mask = np.full(n, ACCEPTED, dtype=np.int8)
    if p.mask_measure in scores:
        mu = _arr(scores, p.mask_measure, n)
        gate_ok = np.asarray(_mask_gate(mu, p.mask_gate), dtype=bool)
        reason_mask[~gate_ok] = MASK_UNCERTAIN
        if p.no_lesion_class is not None and "lesion_fraction" in scores:
            has_lesion = _arr(scores, "lesion_fraction", n) > 0
            consistent = has_lesion == (pred != p.no_lesion_class)
            reason_mask[gate_ok & ~consistent] = MASK_INCONSISTENT
            gate_ok = gate_ok & consistent
        reason_mask[~np.isfinite(mu)] = MISSING_SCORE
    else:
        gate_ok = np.zeros(n, dtype=bool)
        reason_mask[:] = MISSING_SCORE
    accept_mask = gate_ok & ~human_m & bool(allow_pseudo) & bool(allow_masks)
    if not allow_masks:
        reason_mask[:] = SEGMENTATION_GATE
    if not allow_pseudo:
        reason_mask[:] = CALIBRATION_GATE
    if p.policy == "none":  # active learning without pseudo-labels: masks closed too
        accept_mask = np.zeros(n, dtype=bool)
        reason_mask[:] = NO_PSEUDO_LABELS
        reason_class[:] = NO_PSEUDO_LABELS
        reason_class[human] = HUMAN_LABEL
    reason_mask[human_m] = HUMAN_LABEL

    return {
        "accept_class": accept_class,
        "accept_mask": accept_mask,
        "pseudo_class": pseudo_class,
        "reason_class": reason_class,
        "reason_mask": reason_mask,
        "confidence": conf,
        "decided_class": pred_int,
    }


def _aligned_prediction(
    probs: np.ndarray, counts: np.ndarray, n: int, pred: np.ndarray, conf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(class, confidence) from the pool's probabilities aligned to the human class ratio; unchanged where
    the ratio is empty (no human class label yet) or a row is not finite."""
    prior = np.asarray(counts, dtype=np.float64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (n, prior.shape[0]):
        raise ValueError(f"scores['probs'] has shape {p.shape}, expected ({n}, {prior.shape[0]})")
    if prior.sum() <= 0:
        return pred, conf
    aligned = align_to_prior(p, prior)  # a non-finite row comes back as it was
    finite = np.isfinite(aligned).all(axis=1)
    new_pred, new_conf = pred.copy(), conf.copy()
    new_pred[finite] = aligned[finite].argmax(axis=1)
    new_conf[finite] = aligned[finite].max(axis=1)
    return new_pred, new_conf
