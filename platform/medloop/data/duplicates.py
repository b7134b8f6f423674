"""Near-duplicate images: the same picture (or the same lesion imaged twice) found by thumbnail correlation.

Two images are near-duplicates when the Pearson correlation of their grey thumbnails (``size`` x
``size``, PIL bilinear, which averages over the source pixels when shrinking) is at least
``threshold``; a group is a connected component of that relation. Identical thumbnails always match
(so two blank images are one group), a constant image matches nothing else. Pure: numpy, scipy, PIL.

Search: up to ``_DENSE_MAX`` images the whole correlation matrix is computed (in row blocks). Above,
every pair cannot be compared (100,000 images: 5e9 pairs), so candidates are found first and then
checked exactly: the thumbnails, centred and scaled to unit vectors ``u``, have correlation
``u_i . u_j = 1 - |u_i - u_j|^2 / 2``, so a pair at or above the threshold lies within
``r = sqrt(2 (1 - threshold))`` of each other, and so does its projection on any orthonormal basis
(a projection never lengthens a vector). A k-d tree (``scipy.spatial.cKDTree``) on the projection on
the ``_TREE_DIMS`` lowest-frequency 2-D DCT basis images (orthonormal, ``scipy.fft.dct``; the mean is
already removed) lists every pair within ``r``: none is missed, and on real images (whose thumbnails
vary mostly at low spatial frequencies) few unrelated pairs come along (BUSI with 16 directions: 149
candidates for 96 pairs at 0.99, among 194,376 pairs). The candidates are checked on ``_CHECK_DIMS``
directions, then by their full correlation. 100,000 smooth random 64x48 images: about 600,000
candidates, 4 s on the 2-core test machine (ball queries on both cores; 16 directions in the tree: 41 s,
tree walks slow down).
When an estimate says the candidates would be too many (images without such structure, or a low
threshold), the whole matrix is computed as for small sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy.fft import dct
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .cpus import usable_cpus

_EPS = 1e-9  # float rounding: an exact copy correlates at 1 - 1e-16, and must pass threshold 1.0
_BLOCK = 512  # rows of the correlation matrix computed at once (memory: BLOCK x N float64)
_DENSE_MAX = 4096  # up to this many images: the whole correlation matrix
_TREE_DIMS = 8  # lowest-frequency DCT directions the k-d tree searches in (more: slower tree walks)
_CHECK_DIMS = 16  # directions its candidates are checked in before the full correlation
_MAX_CANDIDATES_PER_IMAGE = 64  # above this (estimated), the tree would list too many pairs: dense
THUMB_SIZE = 32  # thumbnail side ingest compares images at


def thumbnails(images: Sequence[np.ndarray], size: int = 32) -> np.ndarray:
    """Grey ``size`` x ``size`` float32 thumbnails (PIL's "F" values as they are), one row per image
    (N, size * size); the search computes with them in float64.

    Images may differ in shape and dtype; (H, W), (H, W, 1), (H, W, 3) and (H, W, 4) (alpha dropped)
    are accepted, colour is averaged over the channels.
    """
    out = np.empty((len(images), size * size), np.float32)
    for i, image in enumerate(images):
        a = np.asarray(image, dtype=np.float32)
        if a.ndim == 3:
            a = a[..., :3].mean(axis=2) if a.shape[2] >= 3 else a[..., 0]
        if a.ndim != 2:
            raise ValueError(f"image {i}: expected (H, W) or (H, W, C), got shape {np.shape(image)}")
        thumb = Image.fromarray(np.ascontiguousarray(a))  # float32 -> mode "F"
        thumb = thumb.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(thumb).ravel()
    return out


def _zscore(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows centred and scaled so that ``z @ z.T / d`` is the correlation; constant rows become 0
    (and are flagged in the second array). In blocks of :data:`_BLOCK` rows, written into the result (no
    temporaries of the whole array: 100,000 thumbnails of 32 x 32 measured 3.8 s at once, 0.4 s in blocks)."""
    n, d = rows.shape
    z = np.empty((n, d), np.float64)
    flat = np.empty(n, bool)
    for start in range(0, n, _BLOCK):
        block, zb = rows[start : start + _BLOCK].astype(np.float64), z[start : start + _BLOCK]
        np.subtract(block, block.mean(axis=1, keepdims=True), out=zb)
        std = np.sqrt(np.einsum("ij,ij->i", zb, zb) / d)  # one pass (zb.std would centre it again)
        constant = std <= 1e-12 * (1.0 + np.abs(block).max(axis=1))
        std[constant] = 1.0
        zb /= std[:, None]
        zb[constant] = 0.0
        flat[start : start + _BLOCK] = constant
    return z, flat


def dct_basis(size: int, k: int) -> np.ndarray:
    """The ``k`` lowest-frequency 2-D DCT-II basis images of ``size`` x ``size`` (constant one left out),
    flattened as orthonormal columns (size * size, k), ordered by p^2 + q^2 then (p, q)."""
    c = dct(np.eye(size), norm="ortho", axis=0)  # row p: the 1-D basis vector of frequency p
    freqs = sorted(((p, q) for p in range(size) for q in range(size) if (p, q) != (0, 0)),
                   key=lambda t: (t[0] ** 2 + t[1] ** 2, t))[: min(k, size * size - 1)]
    return np.ascontiguousarray(np.stack([np.outer(c[p], c[q]).ravel() for p, q in freqs], axis=1))


def _dense_pairs(z: np.ndarray, flat: np.ndarray, threshold: float) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, with correlation >= ``threshold``: the whole matrix, in row blocks."""
    n, d = z.shape
    found: list[np.ndarray] = [np.zeros((0, 2), np.int64)]
    for start in range(0, n, _BLOCK):
        corr = z[start : start + _BLOCK] @ z.T / d
        corr[:, flat] = -np.inf  # a constant image has no correlation: it matches nothing
        corr[flat[start : start + _BLOCK]] = -np.inf
        i, j = np.nonzero(corr >= threshold - _EPS)
        i = i + start
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(found)


def _tree_pairs(z: np.ndarray, flat: np.ndarray, threshold: float) -> np.ndarray | None:
    """The pairs of :func:`_dense_pairs` found through a k-d tree on low-frequency DCT projections
    (see the module docstring), or None when the candidates would be too many (then use the matrix)."""
    n, d = z.shape
    keep = np.flatnonzero(~flat)
    if len(keep) < 2:
        return np.zeros((0, 2), np.int64)
    # the unit rows u = z / sqrt(d) (||u_i - u_j||^2 = 2 - 2 corr), projected (no copy of z is made)
    proj = np.ascontiguousarray((z @ dct_basis(int(round(np.sqrt(d))), _CHECK_DIMS))[keep] / np.sqrt(d))
    radius = float(np.sqrt(max(0.0, 2.0 * (1.0 - threshold + _EPS)))) * (1.0 + 1e-6) + 1e-9
    lead = np.ascontiguousarray(proj[:, :_TREE_DIMS])
    tree = cKDTree(lead, leafsize=32)
    probe = lead[np.linspace(0, len(keep) - 1, min(len(keep), 256)).astype(np.int64)]
    expected = float(np.mean(tree.query_ball_point(probe, radius, return_length=True)))  # includes itself
    if expected > _MAX_CANDIDATES_PER_IMAGE:
        return None
    cand = _ball_pairs(tree, lead, radius)
    found: list[np.ndarray] = [np.zeros((0, 2), np.int64)]
    for start in range(0, len(cand), 1 << 18):
        a, b = cand[start : start + (1 << 18), 0], cand[start : start + (1 << 18), 1]
        near = ((proj[a] - proj[b]) ** 2).sum(axis=1) <= radius * radius  # more directions, still a bound
        a, b = a[near], b[near]
        corr = np.einsum("ij,ij->i", z[keep[a]], z[keep[b]]) / d
        ok = corr >= threshold - _EPS
        i, j = keep[a[ok]], keep[b[ok]]
        found.append(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1))
    return np.concatenate(found)


def _ball_pairs(tree: cKDTree, points: np.ndarray, radius: float, chunk: int = 1 << 15) -> np.ndarray:
    """Every pair ``(i, j)``, ``i < j``, of ``points`` (the tree's) within ``radius`` of each other: the pairs of
    ``cKDTree.query_pairs``, found by ball queries on every CPU this process may use (``query_pairs`` walks
    the tree in one thread: 100,000 smooth random images, 600,000 candidates, 7.8 s there, 3.6 s on two
    cores), ``chunk`` query points at a time (their neighbour lists are Python lists)."""
    found: list[np.ndarray] = [np.zeros((0, 2), np.int64)]
    for start in range(0, len(points), chunk):
        near = tree.query_ball_point(points[start : start + chunk], radius, workers=usable_cpus(), return_sorted=False)
        sizes = np.fromiter((len(x) for x in near), np.int64, len(near))
        j = np.fromiter((k for x in near for k in x), np.int64, int(sizes.sum()))
        i = np.repeat(np.arange(start, start + len(near), dtype=np.int64), sizes)
        found.append(np.stack([i[i < j], j[i < j]], axis=1))
    return np.concatenate(found)


def near_duplicate_pairs(
    images: Sequence[np.ndarray] | None = None, threshold: float = 0.99, size: int = THUMB_SIZE,
    method: str = "auto", *, thumbs: np.ndarray | None = None,
) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, of near-duplicate images, as an int64 array (P, 2), sorted.

    ``images``, or their :func:`thumbnails` when already made (``thumbs``, (N, size * size)).
    ``method``: ``dense`` (the whole correlation matrix), ``tree`` (candidates from a k-d tree, then
    checked; the matrix when the estimate says too many candidates) or ``auto`` (dense up to
    ``_DENSE_MAX`` images, else tree). Both find the same pairs (see the module docstring)."""
    if method not in ("auto", "dense", "tree"):
        raise ValueError(f"method: expected auto, dense or tree (got {method!r})")
    if (images is None) == (thumbs is None):
        raise ValueError("give images or thumbs")
    thumbs = thumbnails(images, size) if images is not None else np.asarray(thumbs)
    if thumbs.dtype not in (np.float32, np.float64):
        thumbs = thumbs.astype(np.float64)
    n = len(thumbs)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    z, flat = _zscore(thumbs)
    pairs = None
    if method == "tree" or (method == "auto" and n > _DENSE_MAX):
        pairs = _tree_pairs(z, flat, threshold)
    found = [_dense_pairs(z, flat, threshold) if pairs is None else pairs]
    found.append(_identical_pairs(thumbs))  # copies whatever their variance (this joins constant images)
    return np.unique(np.concatenate(found).astype(np.int64).reshape(-1, 2), axis=0)


def _identical_pairs(thumbs: np.ndarray) -> np.ndarray:
    """Pairs of rows with identical values: each group of equal rows as a chain (i1, i2), (i2, i3), ...
    in index order. Rows are grouped by a fingerprint of their bits (a weighted sum, modulo 2^64, of the
    words of their float32 or float64 values; equal rows have equal fingerprints), then compared exactly (a
    collision splits the group)."""
    rows = np.ascontiguousarray(thumbs if thumbs.dtype in (np.float32, np.float64) else thumbs.astype(np.float64))
    n = len(rows)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    words = rows.reshape(n, -1).view(np.uint32 if rows.dtype == np.float32 else np.uint64)
    weights = np.random.default_rng(0).integers(1, 2**63, words.shape[1], dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    prints = np.concatenate([(words[i:i + 4096].astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)  # mod 2^64
                             for i in range(0, n, 4096)])
    order = np.argsort(prints, kind="stable")  # equal fingerprints together, each run in index order
    sorted_prints = prints[order]
    starts = np.flatnonzero(np.r_[True, sorted_prints[1:] != sorted_prints[:-1]])
    ends = np.r_[starts[1:], n]
    shared = ends - starts > 1  # fingerprints of two rows or more
    pairs = []
    for a, b in zip(starts[shared], ends[shared]):
        members = [int(i) for i in order[a:b]]
        while len(members) > 1:
            first = rows[members[0]]
            same = [members[0]] + [i for i in members[1:] if np.array_equal(rows[i], first)]  # NaN: alone
            pairs += list(zip(same[:-1], same[1:]))
            taken = set(same)
            members = [i for i in members if i not in taken]
    return np.asarray(pairs, np.int64).reshape(-1, 2)


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


def near_duplicate_groups(images: Sequence[np.ndarray] | None = None, threshold: float = 0.99,
                          size: int = THUMB_SIZE, *, thumbs: np.ndarray | None = None) -> np.ndarray:
    """An int64 group id per image (0..G-1, numbered by first member); near-duplicates share an id.
    ``thumbs``: the images' :func:`thumbnails` instead of the images."""
    n = len(images) if images is not None else len(thumbs) if thumbs is not None else 0
    return groups_from_pairs(n, near_duplicate_pairs(images, threshold, size, thumbs=thumbs))


def count_pairs(images: Sequence[np.ndarray], threshold: float = 0.99, size: int = 32) -> int:
    """Number of near-duplicate pairs (each unordered pair once)."""
    return int(len(near_duplicate_pairs(images, threshold, size)))


def group_stats(groups: Sequence[int] | np.ndarray) -> tuple[int, int]:
    """``(groups with two or more members, images in those groups)``."""
    sizes = np.bincount(np.asarray(groups, np.int64)) if len(groups) else np.zeros(0, np.int64)
    multi = sizes[sizes >= 2]
    return int(len(multi)), int(multi.sum())
