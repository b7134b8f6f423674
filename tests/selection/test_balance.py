"""Class balancing to the human class ratio (seed 002: 1 : 1.6)."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from medloop.selection import balance_to_ratio, balanced_counts


def test_balanced_counts_hand_cases():
    # 10 of class 0, 30 of class 1, ratio 1 : 1.6 -> class 0 binds: 10 and 16
    assert balanced_counts(np.array([10, 30]), np.array([1.0, 1.6])).tolist() == [10, 16]
    # 5 and 6 -> class 1 binds: s = 6 / 1.6 = 3.75 -> floor(3.75) = 3, floor(6.0) = 6
    assert balanced_counts(np.array([5, 6]), np.array([1.0, 1.6])).tolist() == [3, 6]
    # human counts used directly as the ratio (10 : 16 == 1 : 1.6)
    assert balanced_counts(np.array([10, 30]), np.array([10, 16])).tolist() == [10, 16]
    # a class without human labels gets nothing
    assert balanced_counts(np.array([4, 4, 9]), np.array([1, 0, 2])).tolist() == [4, 0, 8]
    # an empty class with ratio > 0 blocks everything unless skip_empty
    assert balanced_counts(np.array([0, 7]), np.array([1, 1])).tolist() == [0, 0]
    assert balanced_counts(np.array([0, 7]), np.array([1, 1]), skip_empty=True).tolist() == [0, 7]


def test_balance_keeps_least_uncertain_exact_indices():
    cls = np.array([0, 1, 1, 1, 0, 1, 1, 0, 2])
    unc = np.array([0.02, 0.04, 0.01, 0.03, 0.01, 0.05, 0.02, 0.5, 0.0])
    acc = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1], dtype=bool)  # 7 not accepted; 8 is class 2
    # accepted: class 0 -> {0, 4}; class 1 -> {1, 2, 3, 5, 6}; ratio 1 : 1.6 on 2 classes
    out = balance_to_ratio(cls, unc, acc, np.array([1.0, 1.6]))
    # s = min(2/1, 5/1.6) = 2 -> class 0 keeps 2, class 1 keeps floor(3.2) = 3 least uncertain: 2, 6, 3
    assert np.flatnonzero(out).tolist() == [0, 2, 3, 4, 6]


def test_balance_ties_go_to_lower_index_and_all_zero_ratio_is_noop():
    cls = np.array([0, 0, 0, 1])
    unc = np.array([0.1, 0.1, 0.1, 0.1])
    acc = np.ones(4, dtype=bool)
    assert np.flatnonzero(balance_to_ratio(cls, unc, acc, np.array([2, 1]))).tolist() == [0, 1, 3]
    np.testing.assert_array_equal(balance_to_ratio(cls, unc, acc, np.array([0, 0])), acc)


def test_balance_rejects_bad_shapes():
    with pytest.raises(ValueError):
        balance_to_ratio(np.zeros(3), np.zeros(2), np.ones(3, bool), np.array([1, 1]))


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 60),
    k=st.integers(1, 4),
    data=st.data(),
)
def test_balance_properties(n, k, data):
    cls = data.draw(arrays(np.int64, n, elements=st.integers(0, k - 1)))
    unc = data.draw(arrays(np.float64, n, elements=st.floats(0, 1), unique=True))
    acc = data.draw(arrays(bool, n))
    ratio = data.draw(arrays(np.float64, k, elements=st.floats(0.5, 5.0)))
    out = balance_to_ratio(cls, unc, acc, ratio)
    assert not np.any(out & ~acc)  # subset of accepted
    avail = np.bincount(cls[acc], minlength=k)
    kept = np.bincount(cls[out], minlength=k)
    s = np.min(avail / ratio)
    # respects the ratio: floor(s r_k) per class, and the binding class keeps all of its candidates
    np.testing.assert_array_equal(kept, np.minimum(np.floor(s * ratio + 1e-9).astype(int), avail))
    assert np.all(kept <= s * ratio + 1e-6)
    # least uncertain per class: every kept one is less uncertain than every dropped one of its class
    for c in range(k):
        kept_u = unc[out & (cls == c)]
        dropped_u = unc[acc & ~out & (cls == c)]
        if kept_u.size and dropped_u.size:
            assert kept_u.max() < dropped_u.min()
