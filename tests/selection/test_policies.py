"""PL / CPL / UPS (Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 19) on hand-made scores, and the subset property."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medloop.registry import UnknownNameError
from medloop.selection import POLICIES, vacuity_tau_from_evidence

CONF = np.array([0.95, 0.85, 0.90, 0.99, np.nan, 0.97])
STD = np.array([0.01, 0.01, 0.05, 0.20, 0.00, np.nan])


def test_registry_names():
    assert POLICIES.names() == ["cpl", "none", "pl", "ups"]
    with pytest.raises(UnknownNameError, match="known: cpl, none, pl, ups"):
        POLICIES.get("fixmatch")


def test_pl_accepts_every_prediction():
    assert np.flatnonzero(POLICIES.get("pl")(CONF, STD)).tolist() == [0, 1, 2, 3, 4, 5]


def test_cpl_confidence_threshold_inclusive():
    assert np.flatnonzero(POLICIES.get("cpl")(CONF, STD, tau_c=0.9)).tolist() == [0, 2, 3, 5]
    assert np.flatnonzero(POLICIES.get("cpl")(CONF, None, tau_c=0.96)).tolist() == [3, 5]


def test_ups_eq19_both_factors():
    # 0: conf ok, std ok; 1: conf too low; 2: both at the threshold (inclusive); 3: std too high;
    # 4: NaN confidence; 5: NaN uncertainty
    assert np.flatnonzero(POLICIES.get("ups")(CONF, STD, tau_c=0.9, tau_u=0.05)).tolist() == [0, 2]
    assert np.flatnonzero(POLICIES.get("ups")(CONF, STD, tau_c=0.9, tau_u=0.01)).tolist() == [0]


def test_none_accepts_nothing():
    got = POLICIES.get("none")(CONF, STD, tau_c=0.0, tau_u=10.0)  # even with thresholds that let all pass
    assert got.dtype == bool and got.shape == CONF.shape and not got.any()
    assert POLICIES.get("none")(CONF[:0]).shape == (0,)
    with pytest.raises(ValueError, match="1-d"):
        POLICIES.get("none")(CONF[None])


def test_none_policy_in_a_round_decision():
    """decide_pseudo_labels with policy none: no class pseudo-label and no pseudo-mask, whatever the gate."""
    from medloop.selection import PseudoLabelParams, decide_pseudo_labels

    n = 4
    scores = {"pred_class": np.array([0, 1, 2, 1]), "confidence": np.full(n, 0.99), "std": np.zeros(n),
              "seg_uncertainty": np.full(n, 0.01)}
    d = decide_pseudo_labels(scores, np.zeros(n, bool), np.array([1, 1, 1]), PseudoLabelParams(policy="none"))
    assert not d["accept_class"].any() and (d["pseudo_class"] == -1).all()
    assert not d["accept_mask"].any()  # every mask would pass the gate: the policy closes them


def test_ups_needs_uncertainty():
    with pytest.raises(ValueError, match="uncertainty"):
        POLICIES.get("ups")(CONF, None)


def test_vacuity_threshold_depends_on_head_classes():
    # same evidence requirement (E >= 27), different K: 3-class head vs 2-class pixel head
    assert vacuity_tau_from_evidence(27, 3) == pytest.approx(3 / 30)
    assert vacuity_tau_from_evidence(27, 2) == pytest.approx(2 / 29)


unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    conf=arrays(np.float64, st.integers(0, 40), elements=st.one_of(unit, st.just(np.nan))),
    data=st.data(),
    tau_c=unit,
    tau_u=st.floats(0.0, 0.5),
)
def test_ups_subset_cpl_subset_pl(conf, data, tau_c, tau_u):
    unc = data.draw(arrays(np.float64, conf.shape[0], elements=st.one_of(st.floats(0, 1), st.just(np.nan))))
    masks = {name: POLICIES.get(name)(conf, unc, tau_c=tau_c, tau_u=tau_u) for name in ("pl", "cpl", "ups", "none")}
    assert all(m.dtype == bool and m.shape == conf.shape for m in masks.values())
    assert not masks["none"].any()
    assert not np.any(masks["ups"] & ~masks["cpl"])
    assert not np.any(masks["cpl"] & ~masks["pl"])
    # exactly Eq. 19
    np.testing.assert_array_equal(masks["ups"], (conf >= tau_c) & (unc <= tau_u))
