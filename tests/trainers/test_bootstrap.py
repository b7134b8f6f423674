"""Percentile bootstrap intervals: against the binomial closed form, width behaviour, constant and
undefined statistics, seeding."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from medloop.trainers.metrics.bootstrap import bootstrap_ci, bootstrap_cis, bootstrap_indices, percentile_interval


def _mean_of(values: np.ndarray):
    return lambda idx: float(values[idx].mean())


def test_interval_of_a_proportion_matches_the_binomial_quantiles() -> None:
    """Resampling n cases of which k are 1 makes the resampled mean Binomial(n, k/n) / n exactly, so the
    percentile interval is its 2.5 % / 97.5 % quantiles (up to the Monte Carlo error of the resamples)."""
    n, k = 50, 20
    values = np.r_[np.ones(k), np.zeros(n - k)]
    lo, hi = bootstrap_ci(_mean_of(values), n, n_boot=20000, seed=1)
    assert lo == pytest.approx(binom.ppf(0.025, n, k / n) / n, abs=1.0 / n + 1e-9)
    assert hi == pytest.approx(binom.ppf(0.975, n, k / n) / n, abs=1.0 / n + 1e-9)
    assert lo <= k / n <= hi


def test_width_shrinks_with_the_square_root_of_n_and_grows_with_the_level() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=100), rng.normal(size=400)
    w_small = np.subtract(*bootstrap_ci(_mean_of(small), 100, n_boot=4000, seed=0)[::-1])
    w_large = np.subtract(*bootstrap_ci(_mean_of(large), 400, n_boot=4000, seed=0)[::-1])
    # width ~ 2 * 1.96 * sd / sqrt(n): 4x the cases, half the width
    assert w_large / w_small == pytest.approx(0.5, abs=0.12)
    assert w_small == pytest.approx(2 * 1.96 * small.std() / 10, rel=0.15)
    lo95, hi95 = bootstrap_ci(_mean_of(small), 100, n_boot=4000, seed=0)
    lo99, hi99 = bootstrap_ci(_mean_of(small), 100, n_boot=4000, level=0.99, seed=0)
    assert lo99 < lo95 < small.mean() < hi95 < hi99


def test_a_constant_statistic_has_a_point_interval() -> None:
    assert bootstrap_ci(lambda idx: 0.75, 30, n_boot=200) == (0.75, 0.75)
    ones = np.ones(30)
    assert bootstrap_ci(_mean_of(ones), 30, n_boot=200) == (1.0, 1.0)


def test_undefined_resamples_are_left_out_and_never_defined_is_none() -> None:
    values = np.array([1.0, 0.0, 0.0, 0.0])
    # defined only when case 0 is drawn: its mean over the drawn cases of kind "1" is always 1
    ci = bootstrap_ci(lambda idx: 1.0 if (idx == 0).any() else None, 4, n_boot=500, seed=2)
    assert ci == (1.0, 1.0)
    assert bootstrap_ci(lambda idx: None, 4, n_boot=50) is None
    assert percentile_interval(np.array([np.nan, np.nan])) is None
    out = bootstrap_cis(lambda idx: {"mean": float(values[idx].mean()), "never": None}, 4, n_boot=300, seed=3)
    assert out["never"] is None and 0.0 <= out["mean"][0] <= 0.25 <= out["mean"][1] <= 1.0


def test_seeded_and_checked() -> None:
    a, b = bootstrap_indices(10, 5, seed=7), bootstrap_indices(10, 5, seed=7)
    assert a.shape == (5, 10) and np.array_equal(a, b) and a.min() >= 0 and a.max() <= 9
    assert not np.array_equal(a, bootstrap_indices(10, 5, seed=8))
    with pytest.raises(ValueError):
        bootstrap_indices(0, 10)
    with pytest.raises(ValueError):
        percentile_interval(np.ones(3), level=1.0)
