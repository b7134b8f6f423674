"""Pixel-wise pseudo-masks with ignore, the image-level mask gate, the 255 training target."""

import numpy as np
import pytest

from medloop.selection import IGNORE_INDEX, mask_gate, mean_pixel_uncertainty, pseudo_mask, training_target

PRED = np.array([[0, 1, 1], [0, 1, 0]], dtype=np.int64)
UNC = np.array([[0.01, 0.10, 0.30], [np.nan, 0.00, 0.11]], dtype=np.float32)


def test_pseudo_mask_marks_uncertain_pixels_ignore():
    mask, ignore = pseudo_mask(PRED, UNC, 0.1)
    assert mask.dtype == np.uint8 and ignore.dtype == bool
    np.testing.assert_array_equal(mask, PRED)  # predicted values kept everywhere
    # above the threshold or NaN -> ignore; exactly at the threshold is kept
    np.testing.assert_array_equal(ignore, [[False, False, True], [True, False, True]])


def test_training_target_writes_255_at_ignore():
    mask, ignore = pseudo_mask(PRED, UNC, 0.1)
    target = training_target(mask, ignore)
    np.testing.assert_array_equal(target, [[0, 1, 255], [255, 1, 255]])
    assert IGNORE_INDEX == 255
    # nothing ignored -> the mask itself; everything ignored -> all 255
    np.testing.assert_array_equal(training_target(mask, np.zeros_like(ignore)), PRED)
    assert np.all(training_target(mask, np.ones_like(ignore)) == 255)


def test_pseudo_mask_batch_and_shape_check():
    pred = np.stack([PRED, 1 - PRED])
    unc = np.stack([UNC, np.zeros_like(UNC)])
    _, ignore = pseudo_mask(pred, unc, 0.05)
    assert ignore.shape == (2, 2, 3)
    assert ignore[0].sum() == 4 and ignore[1].sum() == 0
    with pytest.raises(ValueError):
        pseudo_mask(PRED, UNC[:, :2], 0.1)


def test_mask_gate_strictly_below():
    assert mask_gate(0.04, 0.05) is True
    assert mask_gate(0.05, 0.05) is False
    assert mask_gate(float("nan"), 0.05) is False
    np.testing.assert_array_equal(mask_gate(np.array([0.0, 0.05, 0.2, np.nan]), 0.1), [True, True, False, False])


def test_mean_pixel_uncertainty_feeds_the_gate():
    batch = np.stack([np.full((4, 4), 0.02), np.full((4, 4), 0.2)])
    m = mean_pixel_uncertainty(batch)
    np.testing.assert_allclose(m, [0.02, 0.2])
    assert mean_pixel_uncertainty(batch[0]) == pytest.approx(0.02)
    np.testing.assert_array_equal(mask_gate(m, 0.05), [True, False])


def test_pixel_ups_needs_confidence_and_certainty():
    pred = np.array([[1, 1, 0, 0]], np.uint8)
    unc = np.array([[0.01, 0.01, 0.01, 0.5]])
    prob = np.array([[0.97, 0.6, 0.03, 0.01]])  # pixel 1: certain but not confident
    mask, ignore = pseudo_mask(pred, unc, 0.05, fg_prob=prob, tau_c=0.9)
    assert ignore.tolist() == [[False, True, False, True]]
    assert mask.tolist() == pred.tolist()
    _, ignore_certainty_only = pseudo_mask(pred, unc, 0.05)
    assert ignore_certainty_only.tolist() == [[False, False, False, True]]
    with pytest.raises(ValueError, match="fg_prob"):
        pseudo_mask(pred, unc, 0.05, fg_prob=np.zeros((2, 2)), tau_c=0.9)
