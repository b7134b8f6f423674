"""k-center greedy (Sener & Savarese, core-set active learning) on model embeddings.

Used by :func:`medloop.selection.build_queue` so that near-duplicates are not all queued: each next
pick is the candidate farthest (Euclidean) from everything picked so far (and from optional
already-labelled ``centers``). Vectorised: one ``(m, d)`` distance update per pick, O(k m d).
"""

from __future__ import annotations

import numpy as np


def k_center_greedy(
    embeddings: np.ndarray,
    k: int,
    *,
    first: int | None = 0,
    centers: np.ndarray | None = None,
) -> np.ndarray:
    """Indices (rows of ``embeddings``, pick order) of ``min(k, m)`` greedy k-center picks.

    ``first``: row picked first (default 0: callers sort candidates best-first); ``None`` starts
    from the row farthest from ``centers`` (requires ``centers``). ``centers`` ``(c, d)``: points
    already covered (e.g. labelled cases). Ties go to the lower row, so the result is deterministic.
    Once every remaining row duplicates a picked one (distance 0), rows are taken in order.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (m, d), got shape {x.shape}")
    m = x.shape[0]
    k = int(min(max(k, 0), m))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    min_d = np.full(m, np.inf, dtype=np.float64)
    if centers is not None:
        c = np.asarray(centers, dtype=np.float32).reshape(-1, x.shape[1])
        for row in c:  # usually few; each is one vectorised update
            np.minimum(min_d, _sq_dist(x, row), out=min_d)
    if first is None:
        if centers is None:
            raise ValueError("first=None needs centers")
        first = int(np.argmax(min_d))
    picks = np.empty(k, dtype=np.int64)
    picked = np.zeros(m, dtype=bool)
    j = int(first)
    for t in range(k):
        picks[t] = j
        picked[j] = True
        np.minimum(min_d, _sq_dist(x, x[j]), out=min_d)
        if t + 1 < k:
            d = np.where(picked, -1.0, min_d)
            j = int(np.argmax(d))
    return picks


def _sq_dist(x: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every row of ``x`` to ``row`` (exactly 0 for identical rows)."""
    diff = x - row
    return np.einsum("ij,ij->i", diff, diff).astype(np.float64)
