"""decide_pseudo_labels: policy + balancing + mask gate; human labels always win."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medloop.config import SelectionConfig
from medloop.selection import REASONS, PseudoLabelParams, balanced_counts, decide_pseudo_labels, reason_names


def hand_scores():
    return {
        "pred_class": np.array([0, 1, 1, 1, 0, 1, 1, 0]),
        "confidence": np.array([0.95, 0.97, 0.99, 0.92, 0.80, 0.93, 0.96, 0.99]),
        "std": np.array([0.01, 0.02, 0.01, 0.03, 0.01, 0.09, 0.04, np.nan]),
        "seg_uncertainty": np.array([0.01, 0.2, 0.04, 0.0, 0.02, 0.01, np.nan, 0.0]),
    }


def test_hand_case_ups_balanced():
    sc = hand_scores()
    human = np.array([0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    out = decide_pseudo_labels(sc, human, np.array([10, 10]), PseudoLabelParams())
    # UPS passes 0, 1, 2, 3, 6 (4: low confidence, 5: std 0.09, 7: human). Ratio 1 : 1 ->
    # class 0 has 1 candidate -> keep 1 of class 1: the least uncertain is 2 (std 0.01)
    assert np.flatnonzero(out["accept_class"]).tolist() == [0, 2]
    assert out["pseudo_class"].tolist() == [0, -1, 1, -1, -1, -1, -1, -1]
    assert reason_names(out["reason_class"]).tolist() == [
        "accepted", "class_balance", "accepted", "class_balance", "low_confidence",
        "high_uncertainty", "class_balance", "human_label",
    ]
    # masks decided separately: gate 0.05 on mean pixel uncertainty; 4 gets a mask without a class
    assert np.flatnonzero(out["accept_mask"]).tolist() == [0, 2, 3, 4, 5]
    assert reason_names(out["reason_mask"]).tolist() == [
        "accepted", "mask_uncertain", "accepted", "accepted", "accepted", "accepted",
        "missing_score", "human_label",
    ]
    assert out["reason_class"].dtype == np.int8 and out["pseudo_class"].dtype == np.int64


def test_no_balance_and_ratio_1_to_1_6():
    sc = hand_scores()
    human = np.zeros(8, dtype=bool)
    out = decide_pseudo_labels(sc, human, None)
    assert np.flatnonzero(out["accept_class"]).tolist() == [0, 1, 2, 3, 6]
    out = decide_pseudo_labels(sc, human, np.array([1.0, 1.6]), class_balance=True)
    # class 0: one candidate -> class 1 keeps floor(1.6) = 1
    assert np.flatnonzero(out["accept_class"]).tolist() == [0, 2]
    # class 2 has human labels but no candidate: it leaves the ratio, classes 0 and 1 follow 1 : 1
    out = decide_pseudo_labels(sc, human, np.array([1, 1, 1]))
    assert np.flatnonzero(out["accept_class"]).tolist() == [0, 2]
    # the option to block everything on an empty class is gone (one behaviour for product and bench)
    with pytest.raises(TypeError):
        decide_pseudo_labels(sc, human, np.array([1, 1, 1]), skip_empty_classes=True)


def test_policies_and_measures_by_name():
    sc = hand_scores() | {"entropy": np.array([0.1, 0.5, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])}
    human = np.zeros(8, dtype=bool)
    pl = decide_pseudo_labels(sc, human, None, policy="pl")
    assert pl["accept_class"].all()
    cpl = decide_pseudo_labels(sc, human, None, policy="cpl")
    assert np.flatnonzero(cpl["accept_class"]).tolist() == [0, 1, 2, 3, 5, 6, 7]
    ent = decide_pseudo_labels(sc, human, None, policy="ups", measure="entropy", tau_u=0.15)
    assert np.flatnonzero(ent["accept_class"]).tolist() == [0, 3, 5, 6, 7]


def test_calibration_gate_closes_everything():
    sc = hand_scores()
    human = np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    out = decide_pseudo_labels(sc, human, np.array([1, 1]), allow_pseudo=False)
    assert not out["accept_class"].any() and not out["accept_mask"].any()
    assert set(reason_names(out["reason_class"][1:]).tolist()) == {"calibration_gate"}
    assert reason_names(out["reason_mask"][:1]).tolist() == ["human_label"]


def test_segmentation_gate_closes_masks_only():
    sc = hand_scores()
    human = np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    open_ = decide_pseudo_labels(sc, human, None, policy="cpl")
    shut = decide_pseudo_labels(sc, human, None, policy="cpl", allow_masks=False)
    assert open_["accept_mask"].any() and not shut["accept_mask"].any()
    np.testing.assert_array_equal(shut["accept_class"], open_["accept_class"])  # classes decided as before
    assert set(reason_names(shut["reason_mask"][1:]).tolist()) == {"segmentation_gate"}
    assert reason_names(shut["reason_mask"][:1]).tolist() == ["human_label"]


def test_from_config_and_human_mask_only():
    cfg = SelectionConfig(policy="cpl", tau_c=0.95, mask_gate=0.03)
    params = PseudoLabelParams.from_config(cfg)
    assert (params.policy, params.tau_c, params.mask_gate, params.measure) == ("cpl", 0.95, 0.03, "std")
    sc = hand_scores()
    hm = np.array([1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    out = decide_pseudo_labels(sc, np.zeros(8, bool), None, params, has_human_mask=hm)
    assert out["accept_class"][0] and not out["accept_mask"][0]
    assert np.flatnonzero(out["accept_mask"]).tolist() == [3, 4, 5, 7]


def test_pure_and_redecided():
    sc = hand_scores()
    copy = {k: v.copy() for k, v in sc.items()}
    human = np.zeros(8, dtype=bool)
    first = decide_pseudo_labels(sc, human, None)
    for k in sc:
        np.testing.assert_array_equal(sc[k], copy[k])  # inputs untouched
    # next round: sample 0 became uncertain -> dropped
    sc2 = dict(sc, std=np.where(np.arange(8) == 0, 0.5, sc["std"]))
    second = decide_pseudo_labels(sc2, human, None)
    assert first["accept_class"][0] and not second["accept_class"][0]
    assert REASONS[second["reason_class"][0]] == "high_uncertainty"


def test_missing_measure_for_ups_raises():
    sc = hand_scores()
    del sc["std"]
    with pytest.raises(KeyError, match="std"):
        decide_pseudo_labels(sc, np.zeros(8, bool), None)
    out = decide_pseudo_labels(sc, np.zeros(8, bool), np.array([1, 1]), policy="cpl")  # ranks by 1 - conf
    assert np.flatnonzero(out["accept_class"]).tolist() == [0, 1, 2, 7]  # class 1: 0.99, 0.97


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 40),
    data=st.data(),
    policy=st.sampled_from(["pl", "cpl", "ups"]),
    balance=st.booleans(),
    allow=st.booleans(),
    align=st.booleans(),
)
def test_human_label_never_accepted(n, data, policy, balance, allow, align):
    f = st.one_of(st.floats(0, 1), st.just(np.nan))
    sc = {
        "pred_class": data.draw(arrays(np.int64, n, elements=st.integers(0, 2))),
        "confidence": data.draw(arrays(np.float64, n, elements=f)),
        "std": data.draw(arrays(np.float64, n, elements=f)),
        "seg_uncertainty": data.draw(arrays(np.float64, n, elements=f)),
    }
    raw = data.draw(arrays(np.float64, (n, 3), elements=st.floats(0.01, 1)))
    sc["probs"] = raw / raw.sum(axis=1, keepdims=True)
    human = data.draw(arrays(bool, n))
    counts = data.draw(arrays(np.int64, 3, elements=st.integers(0, 20)))
    out = decide_pseudo_labels(
        sc, human, counts, policy=policy, class_balance=balance, tau_c=0.5, tau_u=0.5, mask_gate=0.5,
        allow_pseudo=allow, distribution_alignment=align,
    )
    assert not np.any(out["accept_class"] & human)
    assert not np.any(out["accept_mask"] & human)
    assert np.all(REASONS[0] == reason_names(out["reason_class"][out["accept_class"]]))
    assert np.all(out["reason_class"][~out["accept_class"]] != 0)
    assert np.all(out["reason_mask"][~out["accept_mask"]] != 0)
    assert np.all((out["pseudo_class"] >= 0) == out["accept_class"])
    if not allow:
        assert not out["accept_class"].any() and not out["accept_mask"].any()


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 40), data=st.data(), tau_c=st.floats(0, 1), tau_u=st.floats(0, 1))
def test_decide_subsets_without_balancing(n, data, tau_c, tau_u):
    sc = {
        "pred_class": data.draw(arrays(np.int64, n, elements=st.integers(0, 2))),
        "confidence": data.draw(arrays(np.float64, n, elements=st.floats(0, 1))),
        "std": data.draw(arrays(np.float64, n, elements=st.floats(0, 1))),
    }
    human = data.draw(arrays(bool, n))
    acc = {
        p: decide_pseudo_labels(sc, human, None, policy=p, tau_c=tau_c, tau_u=tau_u)["accept_class"]
        for p in ("pl", "cpl", "ups")
    }
    assert not np.any(acc["ups"] & ~acc["cpl"]) and not np.any(acc["cpl"] & ~acc["pl"])
    np.testing.assert_array_equal(acc["pl"], ~human)


def test_mask_must_agree_with_the_predicted_class():
    # class 0 = "normal" (no lesion). An empty mask is kept only where "normal" is predicted and a
    # non-empty mask only where a lesion class is predicted, however certain its pixels are.
    sc = {
        "pred_class": np.array([0, 0, 1, 1]),
        "confidence": np.array([0.99, 0.99, 0.99, 0.99]),
        "std": np.zeros(4),
        "seg_uncertainty": np.zeros(4),
        "lesion_fraction": np.array([0.0, 0.2, 0.0, 0.1]),
    }
    out = decide_pseudo_labels(sc, np.zeros(4, bool), None, PseudoLabelParams(no_lesion_class=0))
    assert np.flatnonzero(out["accept_mask"]).tolist() == [0, 3]
    assert reason_names(out["reason_mask"]).tolist() == [
        "accepted", "mask_inconsistent", "mask_inconsistent", "accepted",
    ]
    # without a no-lesion class the rule is off
    out = decide_pseudo_labels(sc, np.zeros(4, bool), None, PseudoLabelParams())
    assert out["accept_mask"].all()


def test_policy_none_accepts_no_class_and_no_mask():
    sc = hand_scores()
    human = np.array([0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    out = decide_pseudo_labels(sc, human, np.array([10, 10]), PseudoLabelParams(policy="none"))
    assert not out["accept_class"].any() and not out["accept_mask"].any()
    names = reason_names(out["reason_mask"]).tolist()
    assert names == ["no_pseudo_labels"] * 7 + ["human_label"]
    assert reason_names(out["reason_class"]).tolist() == ["no_pseudo_labels"] * 7 + ["human_label"]


def test_distribution_alignment_lets_the_minority_classes_in():
    """A pool predicted mostly as class 0 (mean 0.8 / 0.1 / 0.1) against a human ratio 2 : 1 : 1: without
    alignment only class-0 cases pass tau_c = 0.9; aligned (ReMixMatch, Eq. 1) class 1 and 2 cases do, and
    balancing then keeps the human ratio among them."""
    probs = np.array([
        [0.97, 0.02, 0.01], [0.96, 0.03, 0.01], [0.95, 0.03, 0.02], [0.94, 0.04, 0.02],
        [0.93, 0.05, 0.02], [0.92, 0.04, 0.04], [0.91, 0.05, 0.04], [0.90, 0.06, 0.04],
        [0.20, 0.78, 0.02], [0.10, 0.02, 0.88], [0.85, 0.10, 0.05], [0.35, 0.05, 0.60],
    ])
    scores = {"probs": probs, "pred_class": probs.argmax(1).astype(float), "confidence": probs.max(1),
              "std": np.full(12, 0.01)}
    human = np.zeros(12, dtype=bool)
    counts = np.array([20, 10, 10])
    plain = decide_pseudo_labels(scores, human, counts, PseudoLabelParams(class_balance=False))
    assert set(plain["pseudo_class"][plain["accept_class"]].tolist()) == {0}
    np.testing.assert_array_equal(plain["confidence"], scores["confidence"])
    params = PseudoLabelParams(class_balance=False, distribution_alignment=True)
    out = decide_pseudo_labels(scores, human, counts, params)
    mean = probs.mean(axis=0)
    w = np.array([0.5, 0.25, 0.25]) / mean
    aligned = probs * w / (probs * w).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out["confidence"], aligned.max(1))
    np.testing.assert_array_equal(out["decided_class"], aligned.argmax(1))
    np.testing.assert_array_equal(out["accept_class"], aligned.max(1) >= 0.9)
    assert {1, 2} <= set(out["pseudo_class"][out["accept_class"]].tolist())
    balanced = decide_pseudo_labels(scores, human, counts, replace(params, class_balance=True))
    kept = np.bincount(balanced["pseudo_class"][balanced["accept_class"]], minlength=3)
    np.testing.assert_array_equal(kept, balanced_counts(
        np.bincount(aligned.argmax(1)[aligned.max(1) >= 0.9], minlength=3), counts))
    # no human class label yet: nothing to align to, the model's own prediction is judged
    none = decide_pseudo_labels(scores, human, np.zeros(3), params)
    np.testing.assert_array_equal(none["confidence"], scores["confidence"])
    with pytest.raises(ValueError, match="probs"):
        decide_pseudo_labels(dict(scores, probs=probs[:, :2]), human, counts, params)


def test_distribution_alignment_comes_from_the_campaign():
    params = PseudoLabelParams.from_config(SelectionConfig(distribution_alignment=True))
    assert params.distribution_alignment
    assert not PseudoLabelParams.from_config(SelectionConfig()).distribution_alignment
