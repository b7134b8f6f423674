"""Class balancing of selected pseudo-labels (Cheng, Liu, Kuang, Wang, MTTU-Net, IEEE TMI 2022,
Sec. IV-G: the selected pseudo-labels are balanced to the class ratio of the human-labelled training
data, 1 : 1.6 there).

Given the accepted candidates per class ``n_k`` and a target ratio ``r_k`` (usually the human label
counts per class), the kept counts are the largest set that follows the ratio on the classes that
can take part, the *used* classes ``U = {k : r_k > 0 and n_k > 0}``::

    s   = min over k in U of  n_k / r_k
    c_k = floor(s * r_k)   for k in U      (so c_k <= n_k, and the binding class keeps all of its n_k)
    c_k = 0                otherwise

and in each class the ``c_k`` least uncertain candidates are kept (ties: lower index first).

Conventions: classes with ``r_k == 0`` (no human labels of that class) get no pseudo-labels. A
class with ``r_k > 0`` but no accepted candidate this round leaves the ratio: the others still
follow the human ratio among themselves (``n = [0, 91, 0]``, ``r = [15, 49, 23]`` keeps
``[0, 91, 0]``; a strict rule would keep nothing and starve self-training whenever one class has no
confident case). An all-zero ratio (no human class labels at all) means "nothing to follow": the
accepted mask is returned unchanged.

:func:`align_to_prior` is the other half of class balance, on the prediction side: with
``selection.distribution_alignment`` the pool's class probabilities are aligned to the human class ratio
before the policy decides (Berthelot et al., ReMixMatch, ICLR 2020, Eq. 1), so that a model drifting to
the majority class does not make every confident case a majority-class case.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-9


def balanced_counts(available: np.ndarray, target_ratio: np.ndarray) -> np.ndarray:
    """Per-class counts ``c_k = floor(s r_k)`` with ``s = min n_k / r_k`` over the classes with
    ``r_k > 0`` and ``n_k > 0``; 0 for the others (see module doc)."""
    n = np.asarray(available, dtype=np.int64)
    r = np.asarray(target_ratio, dtype=np.float64)
    if n.shape != r.shape or n.ndim != 1:
        raise ValueError(f"available {n.shape} and target_ratio {r.shape} must be 1-d of the same length")
    if np.any(r < 0) or not np.all(np.isfinite(r)):
        raise ValueError("target_ratio must be finite and >= 0")
    use = (r > 0) & (n > 0)
    if not use.any():
        return np.zeros_like(n)
    s = float(np.min(n[use] / r[use]))
    counts = np.floor(s * r + _EPS).astype(np.int64)
    counts[~use] = 0
    return np.minimum(counts, n)


def align_to_prior(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Distribution alignment (Berthelot et al., ReMixMatch, ICLR 2020, Eq. 1) over a scored pool:
    ``p~_ik = p_ik (pi_k / pbar_k) / sum_j p_ij (pi_j / pbar_j)`` with ``pi`` the target class ratio
    (e.g. human label counts, normalised) and ``pbar`` the mean of ``probs`` (N, K) over the rows that are
    finite. Rows holding a non-finite value are returned unchanged. A pool whose mean already equals the
    ratio is left as it is; otherwise every row is rescaled by the same per-class factor."""
    p = np.asarray(probs, dtype=np.float64)
    r = np.asarray(prior, dtype=np.float64)
    if p.ndim != 2 or r.shape != (p.shape[1],):
        raise ValueError(f"probs {p.shape} must be (N, K) and prior {r.shape} (K,)")
    if np.any(r < 0) or not np.all(np.isfinite(r)) or r.sum() <= 0:
        raise ValueError("prior must be finite, >= 0 and not all zero")
    finite = np.isfinite(p).all(axis=1)
    out = p.copy()
    if not finite.any():
        return out
    mean = p[finite].mean(axis=0)
    weight = np.maximum(r / r.sum(), 1e-6) / np.maximum(mean, 1e-6)
    scaled = p[finite] * weight
    out[finite] = scaled / np.maximum(scaled.sum(axis=1, keepdims=True), 1e-12)
    return out


def balance_to_ratio(
    pred_class: np.ndarray,
    uncertainty: np.ndarray,
    accepted: np.ndarray,
    target_ratio: np.ndarray,
) -> np.ndarray:
    """Subset of ``accepted`` following ``target_ratio`` (one weight per class), least uncertain first.

    ``pred_class`` int (N,), ``uncertainty`` float (N,) (lower = kept first; NaN last), ``accepted``
    bool (N,), ``target_ratio`` (K,) e.g. human label counts ``[10, 16]`` for 1 : 1.6.
    Returns a bool mask (N,) that is a subset of ``accepted``. Classes outside ``[0, K)`` are dropped.
    """
    cls = np.asarray(pred_class).astype(np.int64, copy=False)
    unc = np.asarray(uncertainty, dtype=np.float64)
    acc = np.asarray(accepted, dtype=bool)
    ratio = np.asarray(target_ratio, dtype=np.float64)
    if not (cls.shape == unc.shape == acc.shape) or cls.ndim != 1:
        raise ValueError("pred_class, uncertainty and accepted must be 1-d arrays of the same length")
    k = ratio.shape[0]
    if ratio.sum() <= 0:
        return acc.copy()
    idx = np.flatnonzero(acc & (cls >= 0) & (cls < k))
    c = cls[idx]
    available = np.bincount(c, minlength=k)
    keep_counts = balanced_counts(available, ratio)
    order = np.lexsort((idx, unc[idx], c))  # by class, then uncertainty, then index
    idx, c = idx[order], c[order]
    starts = np.concatenate(([0], np.cumsum(available)[:-1]))
    rank = np.arange(idx.shape[0]) - starts[c]
    out = np.zeros(acc.shape[0], dtype=bool)
    out[idx[rank < keep_counts[c]]] = True
    return out
