"""Calibration gate and pseudo-label audit."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medloop.selection import audit_precision, audit_sample, calibration_gate, segmentation_gate


def test_calibration_gate_blocks_above_bound_and_says_why():
    allow, reason = calibration_gate(0.31, 0.25)
    assert allow is False
    assert "0.3100" in reason and "0.2500" in reason and "no pseudo-labels" in reason
    allow, reason = calibration_gate(0.25, 0.25)  # at the bound: allowed
    assert allow is True and "allowed" in reason
    assert calibration_gate(0.01, 0.25)[0] is True


@pytest.mark.parametrize("ece", [None, float("nan"), float("inf")])
def test_calibration_gate_unknown_ece_blocks(ece):
    allow, reason = calibration_gate(ece, 0.25)
    assert allow is False and "unavailable" in reason


def test_segmentation_gate_needs_validation_dice_at_the_bound():
    allow, reason = segmentation_gate(0.42, 0.5)
    assert allow is False and "0.4200" in reason and "0.5000" in reason and "no pseudo-masks" in reason
    assert segmentation_gate(0.5, 0.5)[0] is True  # at the bound: allowed
    assert segmentation_gate(None, 0.5)[0] is False and "unavailable" in segmentation_gate(None, 0.5)[1]
    assert segmentation_gate(float("nan"), 0.5)[0] is False
    assert segmentation_gate(None, 0.0) == (True, "segmentation gate off (min_val_dice 0): pseudo-masks allowed")


def test_audit_sample_hand_case():
    accepted = np.array([3, 8, 11, 20, 42, 57, 60, 71, 90, 99])
    a = audit_sample(accepted, 0.2, seed=7)
    assert a.shape == (2,) and set(a) <= set(accepted.tolist())
    assert np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, audit_sample(accepted, 0.2, seed=7))
    assert audit_sample(accepted, 0.05, seed=0).shape == (1,)  # ceil: at least one when fraction > 0
    assert audit_sample(accepted, 0.0, seed=0).shape == (0,)
    assert audit_sample(np.array([], dtype=int), 0.5, seed=0).shape == (0,)
    np.testing.assert_array_equal(audit_sample(accepted, 1.0, seed=3), accepted)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 200), fraction=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_audit_sample_deterministic_subset(n, fraction, seed):
    accepted = np.arange(n) * 3 + 1
    a = audit_sample(accepted, fraction, seed)
    b = audit_sample(accepted, fraction, seed)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == a.shape[0] == min(n, int(np.ceil(fraction * n - 1e-9)))
    assert set(a.tolist()) <= set(accepted.tolist())


def test_audit_sample_differs_by_seed():
    accepted = np.arange(1000)
    assert not np.array_equal(audit_sample(accepted, 0.05, 1), audit_sample(accepted, 0.05, 2))


def test_audit_precision_per_class_and_overall():
    names = ["normal", "benign", "malignant"]
    pseudo = np.array([0, 0, 1, 1, 1, 2, 2])
    human = np.array([0, 1, 1, 1, 2, -1, 2])  # index 5: no answer yet
    out = audit_precision(pseudo, human, names)
    assert out["per_class"]["normal"] == pytest.approx(0.5)
    assert out["per_class"]["benign"] == pytest.approx(2 / 3)
    assert out["per_class"]["malignant"] == pytest.approx(1.0)
    assert out["overall"] == pytest.approx(4 / 6)
    assert out["counts"] == {"normal": 2, "benign": 3, "malignant": 1}
    assert out["n"] == 6


def test_audit_precision_no_answers_is_nan():
    out = audit_precision(np.array([1]), np.array([-1]), ["a", "b"])
    assert np.isnan(out["overall"]) and np.isnan(out["per_class"]["b"]) and out["n"] == 0
