"""Class balancing to the human class ratio (Cheng, Liu, Kuang, Wang, MTTU-Net, IEEE TMI 2022,
Sec. IV-G: 1 : 1.6), among the classes that have candidates."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medloop.selection import balance_to_ratio, balanced_counts
from medloop.selection.balance import align_to_prior


def test_balanced_counts_hand_cases():
    # 10 of class 0, 30 of class 1, ratio 1 : 1.6 -> class 0 binds: 10 and 16
    assert balanced_counts(np.array([10, 30]), np.array([1.0, 1.6])).tolist() == [10, 16]
    # 5 and 6 -> class 1 binds: s = 6 / 1.6 = 3.75 -> floor(3.75) = 3, floor(6.0) = 6
    assert balanced_counts(np.array([5, 6]), np.array([1.0, 1.6])).tolist() == [3, 6]
    # human counts used directly as the ratio (10 : 16 == 1 : 1.6)
    assert balanced_counts(np.array([10, 30]), np.array([10, 16])).tolist() == [10, 16]
    # a class without human labels gets nothing
    assert balanced_counts(np.array([4, 4, 9]), np.array([1, 0, 2])).tolist() == [4, 0, 8]
    # a class with ratio > 0 but no candidate leaves the ratio; the others still follow it
    assert balanced_counts(np.array([0, 7]), np.array([1, 1])).tolist() == [0, 7]
    # BUSI-like round: only benign candidates -> used = {1}, s = 91 / 49, c_1 = floor(91) = 91
    assert balanced_counts(np.array([0, 91, 0]), np.array([15, 49, 23])).tolist() == [0, 91, 0]
    # two used classes of three: used = {1, 2}, s = min(91/49, 10/23) = 10/23
    # -> c_1 = floor(49 * 10 / 23) = floor(21.30) = 21, c_2 = floor(10.0) = 10 (binding class keeps all)
    assert balanced_counts(np.array([0, 91, 10]), np.array([15, 49, 23])).tolist() == [0, 21, 10]
    # a class with candidates but no human label still gets none, and does not bind the others
    assert balanced_counts(np.array([50, 3, 0]), np.array([0, 1, 2])).tolist() == [0, 3, 0]
    # nothing usable: all zero
    assert balanced_counts(np.array([0, 0, 5]), np.array([1, 1, 0])).tolist() == [0, 0, 0]


def test_balance_to_ratio_with_a_class_without_candidates():
    # 3 classes, human ratio 15 : 49 : 23; candidates of classes 1 and 2 only
    cls = np.array([1, 1, 1, 1, 2, 2, 1])
    unc = np.array([0.05, 0.01, 0.04, 0.02, 0.03, 0.01, 0.03])
    acc = np.ones(7, dtype=bool)
    # used = {1, 2}: n = [0, 5, 2]; s = min(5/49, 2/23) = 2/23 -> c = [0, floor(98/23) = 4, 2]
    out = balance_to_ratio(cls, unc, acc, np.array([15, 49, 23]))
    # class 1 keeps its 4 least uncertain (1: .01, 3: .02, 6: .03, 2: .04), drops 0 (.05); class 2 keeps both
    assert np.flatnonzero(out).tolist() == [1, 2, 3, 4, 5, 6]


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
    used = avail > 0
    if used.any():
        s = np.min(avail[used] / ratio[used])
        # respects the ratio on the used classes: floor(s r_k), the binding class keeps all of its candidates
        expected = np.where(used, np.minimum(np.floor(s * ratio + 1e-9).astype(int), avail), 0)
        np.testing.assert_array_equal(kept, expected)
        assert np.all(kept[used] <= s * ratio[used] + 1e-6)
        assert np.any(kept[used] == avail[used])
    else:
        assert not kept.any()
    # least uncertain per class: every kept one is less uncertain than every dropped one of its class
    for c in range(k):
        kept_u = unc[out & (cls == c)]
        dropped_u = unc[acc & ~out & (cls == c)]
        if kept_u.size and dropped_u.size:
            assert kept_u.max() < dropped_u.min()


@settings(max_examples=300, deadline=None)
@given(k=st.integers(1, 5), data=st.data())
def test_balanced_counts_properties(k, data):
    n = data.draw(arrays(np.int64, k, elements=st.integers(0, 200)))
    r = data.draw(arrays(np.float64, k, elements=st.one_of(st.just(0.0), st.floats(0.1, 100.0))))
    c = balanced_counts(n, r)
    assert c.dtype == np.int64 and np.all(c >= 0)
    assert np.all(c <= n)  # never more than available
    used = (r > 0) & (n > 0)
    assert not c[~used].any()  # zero where n_k or r_k is 0
    if not used.any():
        return
    # proportional to r on the used classes, within 1: c_k = floor(s r_k) for one common s
    s = np.min(n[used] / r[used])
    np.testing.assert_array_less(np.abs(c[used] - s * r[used]), 1.0 + 1e-6)
    for i in np.flatnonzero(used):
        for j in np.flatnonzero(used):
            assert abs(c[i] * r[j] - c[j] * r[i]) < r[i] + r[j] + 1e-6  # c_i / r_i and c_j / r_j within 1 / r
    assert np.any(c[used] == n[used])  # the binding class keeps all of its candidates (largest such set)


def test_align_to_prior_hand_case():
    # pool mean (0.75, 0.25) against a 1 : 1 ratio: class 0 weighed by 0.5 / 0.75, class 1 by 0.5 / 0.25
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    out = align_to_prior(probs, np.array([10.0, 10.0]))
    w = np.array([0.5 / 0.75, 0.5 / 0.25])
    expected = probs * w / (probs * w).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected)
    np.testing.assert_allclose(out[1], [1 / 3, 2 / 3])  # (0.6 * 2/3, 0.4 * 2) = (0.4, 0.8), normalised
    assert out[1].argmax() == 1  # a 0.6 majority-class case becomes a minority-class case


def test_align_to_prior_keeps_non_finite_rows_and_rejects_bad_input():
    probs = np.array([[0.8, 0.2], [np.nan, np.nan], [0.4, 0.6]])
    out = align_to_prior(probs, np.array([1.0, 1.0]))
    assert np.isnan(out[1]).all()
    np.testing.assert_allclose(out[[0, 2]], align_to_prior(probs[[0, 2]], np.array([1.0, 1.0])))
    with pytest.raises(ValueError, match="prior"):
        align_to_prior(probs, np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        align_to_prior(probs, np.array([1.0, 1.0, 1.0]))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(2, 4), data=st.data())
def test_align_to_prior_properties(n, k, data):
    raw = data.draw(arrays(np.float64, (n, k), elements=st.floats(0.01, 1.0)))
    probs = raw / raw.sum(axis=1, keepdims=True)
    prior = data.draw(arrays(np.float64, k, elements=st.floats(0.5, 50.0)))
    out = align_to_prior(probs, prior)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert np.all(out >= 0)
    # one common per-class factor: the ratios between a row's classes change by the same amounts in every row
    w = (prior / prior.sum()) / probs.mean(axis=0)
    np.testing.assert_allclose(out * (probs * w).sum(axis=1, keepdims=True), probs * w, rtol=1e-9, atol=1e-12)
    # a pool whose mean already is the ratio is left unchanged
    np.testing.assert_allclose(align_to_prior(probs, probs.mean(axis=0)), probs, atol=1e-12)
