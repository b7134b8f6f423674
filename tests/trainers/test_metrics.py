"""Metrics: hand-computed cases and cross-checks against scikit-learn."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn import metrics as skm

from medloop.trainers.metrics import (
    accuracy,
    adaptive_ece,
    assd,
    auc_ovr,
    aurc,
    brier_score,
    calibration_metrics,
    classification_metrics,
    confusion_matrix,
    dice,
    ece,
    f1_score,
    hd95,
    iou,
    nll,
    reliability_bins,
    risk_coverage,
    segmentation_metrics,
    sensitivity,
    specificity,
)
from medloop.trainers.metrics.segmentation import surface


def test_dice_iou_hand_and_empty_conventions():
    p = np.zeros((4, 4), np.uint8)
    t = np.zeros((4, 4), np.uint8)
    p[0, :3] = 1  # 3 pixels
    t[0, 1:] = 1  # 3 pixels, overlap 2
    assert dice(p, t) == pytest.approx(4 / 6)
    assert iou(p, t) == pytest.approx(2 / 4)
    e = np.zeros((4, 4))
    assert dice(e, e) == 1.0 and iou(e, e) == 1.0 and assd(e, e) == 0.0 and hd95(e, e) == 0.0
    assert dice(p, e) == 0.0 and iou(e, t) == 0.0
    assert assd(p, e) == pytest.approx(math.hypot(4, 4)) and hd95(e, t) == pytest.approx(math.hypot(4, 4))
    assert math.isnan(hd95(p, e, empty_distance="nan"))
    # ignored pixels (255 in the target) are dropped from both masks
    t_ign = t.copy()
    t_ign[0, 0] = 255
    assert dice(p, t_ign) == pytest.approx(4 / 5)


def test_surface_distances_hand_and_bruteforce():
    p = np.zeros((6, 6), bool)
    t = np.zeros((6, 6), bool)
    p[0, 0] = True
    t[0, 3] = True
    assert assd(p, t) == pytest.approx(3.0) and hd95(p, t) == pytest.approx(3.0)
    assert assd(p, t, spacing=(2.0, 0.5)) == pytest.approx(1.5)
    rng = np.random.default_rng(0)
    a = np.zeros((20, 20), bool)
    b = np.zeros((20, 20), bool)
    a[4:12, 5:14] = True
    b[6:15, 3:11] = True
    a &= rng.random((20, 20)) > 0.1
    assert np.array_equal(surface(a), _surface_4(a)) and np.array_equal(surface(b), _surface_4(b))
    ca, cb = np.argwhere(_surface_4(a)), np.argwhere(_surface_4(b))
    d = cdist(ca, cb)
    dab, dba = d.min(1), d.min(0)
    assert assd(a, b) == pytest.approx((dab.mean() + dba.mean()) / 2)
    assert hd95(a, b) == pytest.approx(np.percentile(np.concatenate((dab, dba)), 95))  # MedPy: pooled
    assert assd(a, a) == 0.0


def _surface_4(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (the image border counts as outside)."""
    m = np.pad(mask, 1)
    inner = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def test_surface_is_medpy_connectivity_1():
    """A pixel whose only background neighbour is diagonal is not on the surface (4-connected cross)."""
    m = np.zeros((9, 9), bool)
    m[2:7, 2:7] = True
    m[2, 2] = False
    s = surface(m)
    assert not s[3, 3] and s[2, 3] and s[3, 2] and not s[4, 4]
    assert s.sum() == 15  # the 16 border pixels of the 5x5 block, minus the removed corner


def test_hd95_pools_both_directions_like_medpy():
    """HD95 = 95th percentile of the pooled directed distances, not the max of two percentiles."""
    p = np.zeros((3, 24), bool)
    g = np.zeros((3, 24), bool)
    p[1, 0] = True
    g[1, 2:22] = True  # a one-pixel-thick line: every pixel is on the surface
    # p -> g: [2]; g -> p: [2, 3, ..., 21]; pooled 21 values, the 95th percentile is 20
    assert hd95(p, g) == pytest.approx(20.0)
    assert hd95(g, p) == pytest.approx(20.0)  # symmetric
    # the max of the directed percentiles would give 20.05
    assert hd95(p, g) != pytest.approx(max(2.0, np.percentile(np.arange(2, 22), 95)))


def test_segmentation_metrics_batch():
    t = np.zeros((2, 5, 5), np.int64)
    t[0, 1:3, 1:3] = 1
    t[1] = 255  # no mask
    r = segmentation_metrics(t.copy(), t)
    assert r["dice"][0] == 1.0 and r["hd95"][0] == 0.0
    assert np.isnan(r["dice"][1])


def test_classification_vs_sklearn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    probs[np.arange(200), labels] += 0.3 * rng.random(200)
    probs /= probs.sum(1, keepdims=True)
    preds = probs.argmax(1)
    assert np.array_equal(confusion_matrix(labels, preds, 3), skm.confusion_matrix(labels, preds, labels=[0, 1, 2]))
    assert accuracy(labels, preds) == pytest.approx(skm.accuracy_score(labels, preds))
    assert f1_score(labels, preds, 3, "macro") == pytest.approx(skm.f1_score(labels, preds, average="macro"))
    assert f1_score(labels, preds, 3, "weighted") == pytest.approx(skm.f1_score(labels, preds, average="weighted"))
    assert auc_ovr(labels, probs) == pytest.approx(skm.roc_auc_score(labels, probs, multi_class="ovr"))
    assert auc_ovr(labels, probs, "weighted") == pytest.approx(
        skm.roc_auc_score(labels, probs, multi_class="ovr", average="weighted")
    )
    assert np.allclose(sensitivity(labels, preds, 3), skm.recall_score(labels, preds, average=None))
    spec_ref = [skm.recall_score(labels != k, preds != k) for k in range(3)]
    assert np.allclose(specificity(labels, preds, 3), spec_ref)
    m = classification_metrics(labels, probs)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))


def test_classification_hand():
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 1, 1, 1])
    assert np.array_equal(confusion_matrix(labels, preds), [[1, 1], [0, 2]])
    assert np.allclose(sensitivity(labels, preds), [0.5, 1.0])
    assert np.allclose(specificity(labels, preds), [1.0, 0.5])
    probs = np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4]])
    assert auc_ovr(np.array([0, 1, 1]), probs) == pytest.approx(0.5 * (0.75 + 0.75))


def test_ece_hand():
    probs = np.array([[0.93, 0.07], [0.93, 0.07], [0.38, 0.62], [0.38, 0.62]])
    labels = np.array([0, 1, 1, 1])  # acc 0.5 at conf 0.93; acc 1 at conf 0.62
    expected = 0.5 * abs(0.5 - 0.93) + 0.5 * abs(1.0 - 0.62)
    assert ece(probs, labels) == pytest.approx(expected)
    assert adaptive_ece(probs, labels, n_bins=2) == pytest.approx(expected)
    b = reliability_bins(probs, labels)
    assert b["count"].sum() == 4 and b["count"][13] == 2 and b["count"][9] == 2
    assert b["accuracy"][13] == pytest.approx(0.5) and b["confidence"][9] == pytest.approx(0.62)
    # perfectly calibrated one-hot predictions
    assert ece(np.eye(3), np.arange(3)) == 0.0


def test_brier_nll_vs_sklearn():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 100)
    p1 = rng.random(100)
    probs = np.stack([1 - p1, p1], 1)
    assert brier_score(probs, labels) == pytest.approx(2 * skm.brier_score_loss(labels, p1))
    assert nll(probs, labels) == pytest.approx(skm.log_loss(labels, probs))
    probs3 = rng.dirichlet(np.ones(3), 50)
    labels3 = rng.integers(0, 3, 50)
    assert nll(probs3, labels3) == pytest.approx(skm.log_loss(labels3, probs3, labels=[0, 1, 2]))
    assert brier_score(np.array([[0.7, 0.2, 0.1]]), np.array([1])) == pytest.approx(0.49 + 0.64 + 0.01)


def test_reliability_bins_vs_sklearn_calibration_curve():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(3)
    p1 = 0.5 + 0.5 * rng.random(300)  # class 1 always the argmax -> conf = p1
    labels = (rng.random(300) < p1).astype(int)
    probs = np.stack([1 - p1, p1], 1)
    b = reliability_bins(probs, labels, n_bins=10)
    frac, mean_pred = calibration_curve(labels, p1, n_bins=10, strategy="uniform")
    filled = b["count"] > 0
    assert np.allclose(b["accuracy"][filled], frac) and np.allclose(b["confidence"][filled], mean_pred)


def test_risk_coverage_and_aurc():
    cov, risk = risk_coverage(np.array([0.7, 0.9, 0.8]), np.array([1, 1, 0]))
    assert np.allclose(cov, [1 / 3, 2 / 3, 1.0]) and np.allclose(risk, [0.0, 0.5, 1 / 3])
    assert aurc(np.array([0.7, 0.9, 0.8]), np.array([1, 1, 0])) == pytest.approx((0 + 0.5 + 1 / 3) / 3)
    m = calibration_metrics(np.eye(3), np.arange(3))
    assert m["ece"] == 0.0 and m["brier"] == 0.0 and m["aurc"] == 0.0


def test_pixel_predictions_flatten_and_drop_ignored_pixels():
    from medloop.trainers.metrics import pixel_predictions

    fg = np.array([[[0.9, 0.2], [0.6, 0.1]]])  # (1, 2, 2) foreground probability
    probs = np.stack([1 - fg, fg], axis=1)  # (1, Q=2, 2, 2)
    masks = np.array([[[1, 0], [255, 1]]], dtype=np.uint8)
    p, y = pixel_predictions(probs, masks)
    assert y.tolist() == [1, 0, 1]
    assert p[:, 1].tolist() == pytest.approx([0.9, 0.2, 0.1])
    # confidences 0.9, 0.8, 0.9 with correctness 1, 1, 0 -> one bin per confidence with 15 bins
    assert ece(p, y, n_bins=15) == pytest.approx((abs(1 - 0.8) + 2 * abs(0.5 - 0.9)) / 3)
    sub_p, sub_y = pixel_predictions(probs, masks, max_pixels=2, seed=1)
    assert len(sub_y) == 2 and set(sub_p[:, 1].tolist()) <= {0.9, 0.2, 0.1}
    with pytest.raises(ValueError, match=r"N, Q, \[D,\] H, W"):
        pixel_predictions(probs[0], masks)
    vp, vy = pixel_predictions(probs[:, :, None], masks[:, None])  # a volume of one slice: the same voxels
    assert vy.tolist() == y.tolist() and vp.tolist() == p.tolist()


# ---- validation / test Dice: mean per case over the cases with a lesion -----------------------------------


def _lesion_batch():
    from medloop.trainers.metrics.segmentation import IGNORE

    t = np.zeros((4, 8, 8), np.uint8)
    p = np.zeros((4, 8, 8), np.uint8)
    t[0, :4, :4] = 1  # big lesion (16 px), predicted exactly
    p[0, :4, :4] = 1
    t[1, 0, 0:2] = 1  # small lesion (2 px), half found: Dice 2*1/(1+2) = 2/3
    p[1, 0, 0] = 1
    p[2, 5, 5] = 1  # normal case with a false lesion
    t[3, 0, :] = IGNORE  # partly ignored normal case: not a no-lesion case
    return p, t


def test_lesion_dice_is_the_mean_per_lesion_case_not_pooled():
    from medloop.trainers.metrics import dice, lesion_dice, lesion_iou

    p, t = _lesion_batch()
    assert lesion_dice(p, t) == pytest.approx((1.0 + 2 / 3) / 2)
    assert lesion_iou(p, t) == pytest.approx((1.0 + 1 / 2) / 2)
    pooled = dice(p[:2], t[:2])  # 2 * 17 / (17 + 18): large lesions outweigh small ones
    assert pooled == pytest.approx(34 / 35) and pooled != pytest.approx(lesion_dice(p, t))
    assert np.isnan(lesion_dice(p[2:], t[2:]))


def test_empty_mask_rate_counts_fully_annotated_no_lesion_cases():
    from medloop.trainers.metrics import empty_mask_rate, no_lesion_cases

    p, t = _lesion_batch()
    assert no_lesion_cases(t).tolist() == [False, False, True, False]
    assert empty_mask_rate(p, t) == 0.0
    p[2] = 0
    assert empty_mask_rate(p, t) == 1.0


def test_validation_metrics_use_lesion_dice():
    from medloop.trainers.plain import validation_metrics

    p, t = _lesion_batch()
    pred = {"label": np.array([1, 1, 0, 0]), "probs": np.tile([0.2, 0.7, 0.1], (4, 1)), "mask": t, "pred_mask": p}
    m = validation_metrics(pred, 3)
    assert m["val_dice"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["val_empty_rate"] == 0.0
    assert m["val_accuracy"] == 0.5
    assert m["val_score"] == pytest.approx((m["val_dice"] + 0.5) / 2)
