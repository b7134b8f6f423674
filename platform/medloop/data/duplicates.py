"""Near-duplicate images: the same picture (or the same lesion imaged twice) found by thumbnail correlation.

Two images are near-duplicates when the Pearson correlation of their grey thumbnails (``size`` x
``size``, PIL bilinear, which averages over the source pixels when shrinking) is at least
``threshold``; a group is a connected component of that relation. Identical thumbnails always match
(so two blank images are one group), a constant image matches nothing else. Pure: numpy, scipy, PIL.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_EPS = 1e-9  # float rounding: an exact copy correlates at 1 - 1e-16, and must pass threshold 1.0
_BLOCK = 512  # rows of the correlation matrix computed at once (memory: BLOCK x N float64)


def thumbnails(images: Sequence[np.ndarray], size: int = 32) -> np.ndarray:
    """Grey ``size`` x ``size`` float64 thumbnails, one row per image (N, size * size).

    Images may differ in shape and dtype; (H, W), (H, W, 1), (H, W, 3) and (H, W, 4) (alpha dropped)
    are accepted, colour is averaged over the channels.
    """
    out = np.empty((len(images), size * size), np.float64)
    for i, image in enumerate(images):
        a = np.asarray(image, dtype=np.float32)
        if a.ndim == 3:
            a = a[..., :3].mean(axis=2) if a.shape[2] >= 3 else a[..., 0]
        if a.ndim != 2:
            raise ValueError(f"image {i}: expected (H, W) or (H, W, C), got shape {np.shape(image)}")
        thumb = Image.fromarray(np.ascontiguousarray(a))  # float32 -> mode "F"
        thumb = thumb.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(thumb, np.float64).ravel()
    return out


def _zscore(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows centred and scaled so that ``z @ z.T / d`` is the correlation; constant rows become 0
    (and are flagged in the second array)."""
    z = rows - rows.mean(axis=1, keepdims=True)
    std = z.std(axis=1, keepdims=True)
    flat = std[:, 0] <= 1e-12 * (1.0 + np.abs(rows).max(axis=1))
    std[flat] = 1.0
    z /= std
    z[flat] = 0.0
    return z, flat


def near_duplicate_pairs(images: Sequence[np.ndarray], threshold: float = 0.99, size: int = 32) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, of near-duplicate images, as an int64 array (P, 2), sorted."""
    thumbs = thumbnails(images, size)
    n = len(thumbs)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    z, flat = _zscore(thumbs)
    d = thumbs.shape[1]
    found: list[np.ndarray] = []
    for start in range(0, n, _BLOCK):
        corr = z[start : start + _BLOCK] @ z.T / d
        corr[:, flat] = -np.inf  # a constant image has no correlation: it matches nothing
        corr[flat[start : start + _BLOCK]] = -np.inf
        i, j = np.nonzero(corr >= threshold - _EPS)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    # identical thumbnails are copies whatever their variance (this joins constant images)
    _, inverse = np.unique(thumbs, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    same = inverse[order[1:]] == inverse[order[:-1]]
    a, b = order[:-1][same], order[1:][same]
    found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    pairs = np.unique(np.concatenate(found).astype(np.int64).reshape(-1, 2), axis=0)
    return pairs


def groups_from_pairs(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` nodes joined by ``pairs``: int64 ids 0..G-1 in order of first member."""
    if n == 0:
        return np.zeros(0, np.int64)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.ravel()]


def near_duplicate_groups(images: Sequence[np.ndarray], threshold: float = 0.99, size: int = 32) -> np.ndarray:
    """An int64 group id per image (0..G-1, numbered by first member); near-duplicates share an id."""
    return groups_from_pairs(len(images), near_duplicate_pairs(images, threshold, size))


def count_pairs(images: Sequence[np.ndarray], threshold: float = 0.99, size: int = 32) -> int:
    """Number of near-duplicate pairs (each unordered pair once)."""
    return int(len(near_duplicate_pairs(images, threshold, size)))


def group_stats(groups: Sequence[int] | np.ndarray) -> tuple[int, int]:
    """``(groups with two or more members, images in those groups)``."""
    sizes = np.bincount(np.asarray(groups, np.int64)) if len(groups) else np.zeros(0, np.int64)
    multi = sizes[sizes >= 2]
    return int(len(multi)), int(multi.sum())
