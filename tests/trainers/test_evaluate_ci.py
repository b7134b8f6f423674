"""Native-size evaluation with bootstrap intervals: per-case segmentation by hand, point estimates equal
to evaluation_metrics (the campaign's test metrics) on images of one size, intervals around them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medloop.trainers.evaluate import evaluation_metrics
from medloop.trainers.evaluate_ci import OVERALL, case_segmentation, concat_segmentation, evaluate_with_ci

CLASSES = ["normal", "benign", "malignant"]


def _block(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def test_case_segmentation_at_each_case_size() -> None:
    """Case 0 (8x8): half of a 2x2 lesion found -> Dice 2/3, IoU 1/2, HD95 1. Case 1 (10x14): lesion missed ->
    Dice 0, HD95 = the diagonal of 10x14. Case 2 (6x5): no lesion, empty prediction. Case 3: no mask."""
    preds = [_block((8, 8), 1, 2, 1, 3), np.zeros((10, 14), np.uint8), np.zeros((6, 5), np.uint8),
             np.ones((4, 4), np.uint8)]
    masks = [_block((8, 8), 1, 3, 1, 3), _block((10, 14), 2, 5, 2, 5), np.zeros((6, 5), np.uint8), None]
    s = case_segmentation(preds, masks)
    assert s["lesion"].tolist() == [True, True, False, False]
    assert s["no_lesion"].tolist() == [False, False, True, False]
    assert s["empty"].tolist() == [False, True, True, False]
    assert s["dice"][:2] == pytest.approx([2 / 3, 0.0]) and math.isnan(s["dice"][2])
    assert s["iou"][:2] == pytest.approx([0.5, 0.0])
    assert s["hd95"][:2] == pytest.approx([1.0, math.hypot(10, 14)])
    both = concat_segmentation([case_segmentation(preds[:2], masks[:2]), case_segmentation(preds[2:], masks[2:])])
    assert all(np.array_equal(both[k], s[k], equal_nan=True) for k in s)
    with pytest.raises(ValueError, match="differ in size"):
        case_segmentation([np.zeros((4, 4))], [np.zeros((4, 5))])


def _random_cases(n: int, seed: int, size: int = 12):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    probs = rng.dirichlet([1, 1, 1], n)
    probs[np.arange(n), labels] += rng.random(n)  # better than chance
    probs /= probs.sum(1, keepdims=True)
    masks, preds = [], []
    for y in labels:
        m = np.zeros((size, size), np.uint8)
        if y > 0:
            r, c = rng.integers(0, size - 4, 2)
            m[r:r + 4, c:c + 4] = 1
        p = np.roll(m, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
        if rng.random() < 0.2:
            p = np.zeros_like(m) if y > 0 else _block((size, size), 0, 2, 0, 2)
        masks.append(m)
        preds.append(p)
    return probs, labels, preds, masks


def test_point_estimates_equal_evaluation_metrics_and_lie_in_their_intervals() -> None:
    probs, labels, preds, masks = _random_cases(60, seed=0)
    ref = evaluation_metrics({"probs": probs, "label": labels, "pred_mask": np.stack(preds), "mask": np.stack(masks)},
                             3, CLASSES)
    out = evaluate_with_ci(probs, labels, case_segmentation(preds, masks), CLASSES, n_boot=500, seed=0)
    assert (out["n"], out["n_class"], out["n_lesion"], out["n_no_lesion"]) == (
        ref["n"], ref["n_class"], ref["n_lesion"], ref["n_no_lesion"])
    keys = {"dice": "dice", "iou": "iou", "hd95": "hd95", "empty_rate": "empty_rate", "accuracy": "accuracy",
            "f1": "f1", "auc": "auc", "ece": "ece", "brier": "brier"}
    assert tuple(out["metrics"]) == OVERALL
    for mine, theirs in keys.items():
        e = out["metrics"][mine]
        assert e["value"] == pytest.approx(ref[theirs]), mine
        assert e["lo"] <= e["value"] <= e["hi"] and e["lo"] < e["hi"], mine
    assert out["confusion"] == ref["confusion"]
    for name in CLASSES:
        assert out["per_class"][name]["n"] == ref["per_class"][name]["n"]
        assert out["per_class"][name]["recall"]["value"] == pytest.approx(ref["per_class"][name]["recall"])
        assert out["per_class"][name]["precision"]["value"] == pytest.approx(ref["per_class"][name]["precision"])
    # per-class segmentation: the mean over that class's lesion cases
    seg = case_segmentation(preds, masks)
    benign = (labels == 1) & seg["lesion"]
    assert out["per_class"]["benign"]["dice"]["value"] == pytest.approx(seg["dice"][benign].mean())
    assert out["per_class"]["normal"]["dice"]["value"] is None
    normal = (labels == 0) & seg["no_lesion"]
    assert out["per_class"]["normal"]["empty_rate"]["value"] == pytest.approx(seg["empty"][normal].mean())
    assert sum(b["count"] for b in out["reliability"]) == 60 and out["bootstrap"]["n_boot"] == 500


def test_more_cases_narrower_intervals_and_seeded() -> None:
    small = evaluate_with_ci(*_cases_for_ci(40, 1), CLASSES, n_boot=400, seed=0)
    large = evaluate_with_ci(*_cases_for_ci(640, 1), CLASSES, n_boot=400, seed=0)
    for key in ("accuracy", "dice", "brier"):
        w_small = small["metrics"][key]["hi"] - small["metrics"][key]["lo"]
        w_large = large["metrics"][key]["hi"] - large["metrics"][key]["lo"]
        assert w_large < 0.5 * w_small, key  # 16x the cases: about a quarter of the width
    again = evaluate_with_ci(*_cases_for_ci(40, 1), CLASSES, n_boot=400, seed=0)
    assert again["metrics"] == small["metrics"]


def _cases_for_ci(n: int, seed: int):
    probs, labels, preds, masks = _random_cases(n, seed)
    return probs, labels, case_segmentation(preds, masks)


def test_a_perfect_model_has_point_intervals_and_undefined_metrics_are_none() -> None:
    labels = np.array([0, 1, 2, 1, 0, 2])
    probs = np.eye(3)[labels] * 0.9 + 0.1 / 3
    masks = [np.zeros((6, 6), np.uint8) if y == 0 else _block((6, 6), 1, 4, 1, 4) for y in labels]
    out = evaluate_with_ci(probs, labels, case_segmentation(masks, masks), CLASSES, n_boot=300)
    for key in ("accuracy", "dice", "iou", "hd95", "empty_rate"):
        e = out["metrics"][key]
        assert e["lo"] == e["value"] == e["hi"], key
    # macro-F1 counts a class missing from a resample as F1 0 (metrics.f1_score): the interval reaches below 1
    assert out["metrics"]["f1"]["value"] == 1.0 == out["metrics"]["f1"]["hi"] and out["metrics"]["f1"]["lo"] < 1.0
    assert out["metrics"]["dice"]["value"] == 1.0 and out["metrics"]["hd95"]["value"] == 0.0
    # no class labels at all: classification metrics undefined, segmentation still measured
    unl = evaluate_with_ci(probs, np.full(6, -1), case_segmentation(masks, masks), CLASSES, n_boot=50)
    assert unl["metrics"]["accuracy"] == {"value": None, "lo": None, "hi": None}
    assert unl["metrics"]["dice"]["value"] == 1.0 and unl["reliability"] == [] and unl["confusion"] is None
    with pytest.raises(ValueError):
        evaluate_with_ci(probs[:0], labels[:0], case_segmentation([], []), CLASSES)
