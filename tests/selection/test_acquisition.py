"""Acquisition functions on hand-made scores, the annotation queue, k-center greedy."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medloop.selection import ACQUISITIONS, acquisition_scores, build_queue, k_center_greedy


def order(name, scores, **options):
    s = acquisition_scores(name, scores, **options)
    return build_queue(s, np.ones(s.shape[0], dtype=bool), s.shape[0]).tolist()


def test_registry_names():
    assert ACQUISITIONS.names() == ["bald", "entropy", "hybrid", "margin", "random", "seg_uncertainty", "vacuity"]


def test_entropy_from_probs_and_column():
    probs = np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    np.testing.assert_allclose(ACQUISITIONS.get("entropy")({"probs": probs}), [0.0, np.log(3), np.log(2)])
    assert order("entropy", {"probs": probs}) == [1, 2, 0]
    assert order("entropy", {"entropy": np.array([0.2, 0.1, 0.9])}) == [2, 0, 1]


def test_margin_smaller_gap_queued_first():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.6, 0.3, 0.1]])
    np.testing.assert_allclose(ACQUISITIONS.get("margin")({"probs": probs}), [0.5, 0.95, 0.7])
    assert order("margin", {"probs": probs}) == [1, 2, 0]
    assert order("margin", {"margin": np.array([0.9, 0.1, 0.5])}) == [1, 2, 0]


def test_bald_vacuity_seg_uncertainty_columns():
    assert order("bald", {"mutual_info": np.array([0.2, 0.0, 0.5, 0.1])}) == [2, 0, 3, 1]
    assert order("vacuity", {"vacuity": np.array([0.3, 0.9, 0.1])}) == [1, 0, 2]
    assert order("seg_uncertainty", {"seg_uncertainty": np.array([0.05, 0.01, 0.3])}) == [2, 0, 1]
    with pytest.raises(KeyError, match="mutual_info"):
        ACQUISITIONS.get("bald")({"entropy": np.zeros(2)})


def test_hybrid_weighted_minmax():
    sc = {"entropy": np.array([0.0, 1.0, 2.0]), "seg_uncertainty": np.array([10.0, 30.0, 20.0])}
    # minmax: class [0, .5, 1], seg [0, 1, .5]
    np.testing.assert_allclose(acquisition_scores("hybrid", sc, weight=0.8), [0.0, 0.6, 0.9])
    assert order("hybrid", sc, weight=0.8) == [2, 1, 0]
    assert order("hybrid", sc, weight=0.2) == [1, 2, 0]
    assert order("hybrid", sc, weight=0.5) == [1, 2, 0]  # tie 0.75 / 0.75 -> lower index first
    np.testing.assert_allclose(acquisition_scores("hybrid", sc, weight=1.0), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError):
        acquisition_scores("hybrid", sc, weight=1.5)


def test_random_is_seeded():
    sc = {"confidence": np.zeros(50)}
    a = acquisition_scores("random", sc, seed=3)
    np.testing.assert_array_equal(a, acquisition_scores("random", sc, seed=3))
    assert not np.array_equal(a, acquisition_scores("random", sc, seed=4))
    assert a.shape == (50,) and np.all((a >= 0) & (a < 1))


def test_build_queue_hand_case():
    s = np.array([0.5, 0.9, 0.1, 0.9, 0.7, np.nan])
    elig = np.array([1, 1, 1, 0, 1, 1], dtype=bool)  # 3 already queued; 5 has no score
    assert build_queue(s, elig, 2).tolist() == [1, 4]
    assert build_queue(s, elig, 10).tolist() == [1, 4, 0, 2]
    assert build_queue(s, elig, 0).tolist() == []
    assert build_queue(np.ones(5), np.ones(5, bool), 3).tolist() == [0, 1, 2]  # ties: lower index


def test_build_queue_diversity_hand_case():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    emb = np.array([[0, 0], [0, 0], [0, 0], [5, 5], [0, 0.1], [9, 9], [100, 100]], dtype=np.float32)
    elig = np.ones(7, dtype=bool)
    assert build_queue(s, elig, 3).tolist() == [0, 1, 2]
    # candidates = top 6: 0 first, then farthest (5), then (3): the duplicates 1, 2 are skipped; 6 is
    # outside the candidate set even though it is farthest
    assert build_queue(s, elig, 3, diversity=True, embeddings=emb, candidate_factor=2).tolist() == [0, 5, 3]
    with pytest.raises(ValueError, match="embeddings"):
        build_queue(s, elig, 3, diversity=True)


def test_k_center_greedy_hand_case_and_centers():
    x = np.array([[0.0], [1.0], [10.0], [4.0], [10.0]])
    assert k_center_greedy(x, 3).tolist() == [0, 2, 3]
    assert k_center_greedy(x, 10).tolist() == [0, 2, 3, 1, 4]  # all rows, duplicate last
    # an already-labelled center at 10 makes the far points uninteresting
    assert k_center_greedy(x, 2, first=None, centers=np.array([[10.0]])).tolist() == [0, 3]


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 50),
    budget=st.integers(-1, 20),
    diversity=st.booleans(),
    data=st.data(),
)
def test_build_queue_properties(n, budget, diversity, data):
    s = data.draw(arrays(np.float64, n, elements=st.one_of(st.floats(0, 1), st.just(np.nan))))
    elig = data.draw(arrays(bool, n))
    emb = data.draw(arrays(np.float32, (n, 3), elements=st.integers(0, 3).map(float)))
    q = build_queue(s, elig, budget, diversity=diversity, embeddings=emb, candidate_factor=2)
    valid = elig & np.isfinite(s)
    assert q.dtype == np.int64
    assert q.shape[0] == min(max(budget, 0), int(valid.sum()))
    assert len(set(q.tolist())) == q.shape[0]
    assert np.all(valid[q])  # never ineligible, never unscored
    if not diversity and q.size:
        assert np.all(np.diff(s[q]) <= 0)
        rest = np.setdiff1d(np.flatnonzero(valid), q)
        if rest.size:
            assert s[q].min() >= s[rest].max()


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 60), budget=st.integers(1, 10), factor=st.integers(1, 4), data=st.data())
def test_diversity_avoids_exact_duplicates(n, budget, factor, data):
    s = data.draw(arrays(np.float64, n, elements=st.floats(0, 1)))
    elig = data.draw(arrays(bool, n))
    emb = data.draw(arrays(np.float32, (n, 2), elements=st.integers(0, 4).map(float)))
    # the candidate set build_queue uses: top factor * budget eligible by (-score, index)
    idx = np.flatnonzero(elig)
    cand = idx[np.lexsort((idx, -s[idx]))][: factor * budget]
    distinct = {tuple(row) for row in emb[cand].tolist()}
    assume(len(distinct) >= budget)
    q = build_queue(s, elig, budget, diversity=True, embeddings=emb, candidate_factor=factor)
    assert set(q.tolist()) <= set(cand.tolist())
    picked = [tuple(row) for row in emb[q].tolist()]
    assert len(set(picked)) == len(picked) == budget
