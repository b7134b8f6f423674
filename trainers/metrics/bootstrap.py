"""Percentile bootstrap confidence intervals over cases (Efron & Tibshirani, An Introduction to the
Bootstrap, 1993, ch. 13: the percentile interval).

Draw ``n_boot`` resamples of the ``n`` cases with replacement (seeded), compute the statistic on each,
and take the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the values. A statistic that is
undefined on a resample (None / NaN, e.g. Dice on a resample without a lesion case) is left out of the
percentiles. A statistic that is the same on every resample gives a zero-width interval.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) case indices drawn with replacement (``numpy.random.default_rng(seed)``)."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"bootstrap needs n >= 1 and n_boot >= 1 (got n={n}, n_boot={n_boot})")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """The percentile interval of bootstrap values (NaN left out); None when no value is finite."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    lo, hi = np.percentile(v, [100.0 * (1.0 - level) / 2.0, 100.0 * (1.0 + level) / 2.0])
    return float(lo), float(hi)


def _float(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None], n: int, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile interval of ``statistic(indices)`` over ``n_boot`` resamples of ``n`` cases."""
    idx = bootstrap_indices(n, n_boot, seed)
    return percentile_interval(np.array([_float(statistic(row)) for row in idx]), level)


def bootstrap_cis(
    statistics: Callable[[np.ndarray], Mapping[str, float | None]], n: int, *, n_boot: int = 1000,
    level: float = 0.95, seed: int = 0,
) -> dict[str, tuple[float, float] | None]:
    """Intervals of several statistics computed on the same resamples: ``statistics(indices)`` returns
    {name: value}; the result maps each name to its percentile interval (None when never defined)."""
    values: dict[str, list[float]] = {}
    for row in bootstrap_indices(n, n_boot, seed):
        for name, v in statistics(row).items():
            values.setdefault(name, []).append(_float(v))
    return {name: percentile_interval(np.asarray(v), level) for name, v in values.items()}
