"""Per-region Dice and HD95 in mm (trainers/metrics/regions.py) against closed forms, 2D and 3D."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medloop.trainers.metrics.regions import (
    binary_hd95,
    default_regions,
    mean_region_metrics,
    region_dice,
    region_metrics,
)
from medloop.trainers.metrics.segmentation import hd95 as hd95_2d


def planes(shape=(12, 10, 9), a=2, b=7) -> tuple[np.ndarray, np.ndarray]:
    """Two one-voxel-thick full planes z = a and z = b: every surface voxel is |a - b| slices away."""
    p, g = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    p[a], g[b] = 1, 1
    return p, g


def test_parallel_planes_hd95_is_the_gap_in_mm_and_scales_with_the_slice_spacing_only() -> None:
    p, g = planes()
    assert region_metrics(p, g)["1"]["hd95"] == pytest.approx(5.0)
    # anisotropic spacing: the slice spacing multiplies the distance, the in-plane spacing does not
    assert region_metrics(p, g, spacing=(2.5, 0.7, 0.7))["1"]["hd95"] == pytest.approx(12.5)
    assert region_metrics(p, g, spacing=(1.0, 3.0, 0.5))["1"]["hd95"] == pytest.approx(5.0)
    assert region_metrics(p, g)["1"]["dice"] == 0.0


def test_nested_squares_2d_closed_form_and_agrees_with_the_binary_2d_metric() -> None:
    """A = [2, 12)^2, B = [4, 10)^2: A's ring has 24 pixels at 2, 8 at sqrt 5, 4 at sqrt 8; B's ring 20 at 2.
    Pooled 56 distances: the 95th percentile (index 52.25) falls among the four sqrt 8 = 2 sqrt 2."""
    a, b = np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)
    a[2:12, 2:12], b[4:10, 4:10] = 1, 1
    m = region_metrics(a, b)["1"]
    assert m["hd95"] == pytest.approx(2 * math.sqrt(2))
    assert m["dice"] == pytest.approx(2 * 36 / (100 + 36))
    assert m["hd95"] == pytest.approx(hd95_2d(a, b))  # same convention as the 2D binary metric
    # isotropic spacing s scales every distance by s; anisotropic agrees with the 2D metric too
    assert region_metrics(a, b, spacing=(0.5, 0.5))["1"]["hd95"] == pytest.approx(math.sqrt(2))
    assert region_metrics(a, b, spacing=(2.0, 0.5))["1"]["hd95"] == pytest.approx(hd95_2d(a, b, spacing=(2.0, 0.5)))


def ball(shape: tuple[int, int, int], center: tuple[float, ...], r: float) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    return (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= r**2


def test_concentric_spheres_hd95_is_the_radius_gap_within_a_voxel_and_doubles_with_the_spacing() -> None:
    shape, c = (32, 32, 32), (16, 16, 16)
    outer, inner = ball(shape, c, 10).astype(np.uint8), ball(shape, c, 6).astype(np.uint8)
    h1 = region_metrics(outer, inner)["1"]["hd95"]
    assert abs(h1 - 4.0) <= 1.0  # r_outer - r_inner, up to the voxelisation of the two surfaces
    assert region_metrics(outer, inner, spacing=(2, 2, 2))["1"]["hd95"] == pytest.approx(2 * h1)
    assert region_metrics(outer, inner)["1"]["dice"] == pytest.approx(
        2 * inner.sum() / (inner.sum() + outer.sum()))


def test_boxes_dice_closed_form_3d() -> None:
    p, g = np.zeros((10, 10, 10), np.uint8), np.zeros((10, 10, 10), np.uint8)
    p[0:4, 0:4, 0:4] = 1  # 64
    g[2:6, 0:4, 0:4] = 1  # 64, overlap 2*4*4 = 32
    assert region_dice(p, g)["1"] == pytest.approx(2 * 32 / 128)
    assert region_metrics(p, p)["1"] == {"dice": 1.0, "hd95": 0.0}


def test_several_regions_and_nested_regions() -> None:
    """Labels 1 = necrosis, 2 = oedema, 4 = enhancing; BraTS regions WT {1, 2, 4}, TC {1, 4}, ET {4}."""
    g = np.zeros((8, 8, 8), np.uint8)
    g[1:7, 1:7, 1:7] = 2
    g[2:6, 2:6, 2:6] = 4
    g[3:5, 3:5, 3:5] = 1
    p = g.copy()
    p[p == 4] = 1  # the enhancing rim predicted as necrosis
    regions = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    m = region_metrics(p, g, spacing=(1.25, 0.7, 0.7), regions=regions)
    assert m["WT"] == {"dice": 1.0, "hd95": 0.0} and m["TC"] == {"dice": 1.0, "hd95": 0.0}
    assert m["ET"]["dice"] == 0.0
    assert m["ET"]["hd95"] == pytest.approx(math.sqrt((8 * 1.25) ** 2 + 2 * (8 * 0.7) ** 2))  # ET predicted empty
    # default: one region per class 1..K-1; class 3 absent in both -> a correct "not there"
    per_class = region_metrics(p, g, num_classes=5)
    assert list(per_class) == ["1", "2", "3", "4"]
    assert per_class["2"]["dice"] == 1.0 and per_class["3"] == {"dice": 1.0, "hd95": 0.0}
    assert per_class["1"]["dice"] == pytest.approx(2 * 8 / (64 + 8))
    assert default_regions(3) == {"1": [1], "2": [2]}


def test_empty_prediction_of_a_present_region_gives_the_diagonal_in_mm_or_nan() -> None:
    g = np.zeros((4, 6, 8), np.uint8)
    g[1:3, 2:4, 2:5] = 1
    empty = np.zeros_like(g)
    m = region_metrics(empty, g, spacing=(3.0, 1.0, 0.5))["1"]
    assert m["dice"] == 0.0
    assert m["hd95"] == pytest.approx(math.sqrt(12**2 + 6**2 + 4**2))
    assert math.isnan(region_metrics(empty, g, empty_distance="nan")["1"]["hd95"])
    assert binary_hd95(np.zeros((3, 3), bool), np.zeros((3, 3), bool), (1, 1)) == 0.0


def test_ignored_voxels_are_left_out() -> None:
    """A partially labelled volume: only the annotated slice counts."""
    g = np.full((5, 8, 8), 255, np.uint8)
    g[2] = 0
    g[2, 2:6, 2:6] = 1
    p = np.zeros((5, 8, 8), np.uint8)
    p[:, 2:6, 2:6] = 1  # right on the annotated slice, "wrong" on the unannotated ones
    assert region_metrics(p, g)["1"] == {"dice": 1.0, "hd95": 0.0}
    assert region_metrics(p, g, ignore_index=None, num_classes=2)["1"]["dice"] < 1.0


def test_bad_input_is_clear_and_mean_over_cases() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        region_metrics(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="spacing must give 3 positive values"):
        region_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), spacing=(1.0, 1.0))
    p, g = planes()
    cases = mean_region_metrics([p, g], [g, g], [(1.0, 1.0, 1.0), (2.0, 1.0, 1.0)], num_classes=2)
    assert cases["1"]["hd95"] == pytest.approx((5.0 + 0.0) / 2)
    assert cases["1"]["dice"] == pytest.approx(0.5)


def test_region_means_count_only_the_cases_holding_the_region():
    """Per-region means are over the cases whose target holds the region: an absent region adds no trivial 1."""
    from medloop.trainers.metrics.regions import mean_over_holding_cases, region_metrics

    t1 = np.zeros((6, 6), np.uint8)
    t1[1:4, 1:4], t1[2, 2] = 1, 2
    p1 = np.zeros((6, 6), np.uint8)
    p1[1:4, 1:5] = 1
    t2 = np.zeros((6, 6), np.uint8)
    t2[3:5, 3:5] = 1
    p2 = t2.copy()
    regions = {"outer": [1], "inner": [2], "any": [1, 2]}
    got = mean_over_holding_cases([p1, p2], [t1, t2], regions)
    one = region_metrics(p1, t1, regions=regions)
    assert got["inner"]["n"] == 1 and got["inner"]["dice"] == one["inner"]["dice"] == 0.0
    assert got["outer"]["n"] == 2 and got["outer"]["dice"] == pytest.approx((one["outer"]["dice"] + 1.0) / 2)
    assert got["any"]["hd95"] == pytest.approx((one["any"]["hd95"] + 0.0) / 2)
    fast = mean_over_holding_cases([p1, p2], [t1, t2], regions, distances=False)
    assert fast["outer"]["dice"] == got["outer"]["dice"] and math.isnan(fast["outer"]["hd95"])
    assert math.isnan(mean_over_holding_cases([p2], [t2], {"inner": [2]})["inner"]["dice"])


def test_region_intervals_resample_cases_and_average_those_holding_the_region():
    """The bootstrap interval of a region's Dice: each resample (Efron & Tibshirani's percentile interval) averages
    the resampled cases whose target holds the region, repeats counted."""
    from medloop.trainers.evaluate import region_summary
    from medloop.trainers.metrics.bootstrap import bootstrap_indices, percentile_interval
    from medloop.trainers.metrics.regions import region_metrics

    rng = np.random.default_rng(3)
    preds, targets = [], []
    for i in range(12):
        t = np.zeros((12, 12), np.uint8)
        t[2:9, 2:9] = 1
        if i % 3:
            t[4:6, 4:7] = 2  # 8 of the 12 cases hold the core
        p = t.copy()
        p[rng.integers(0, 12, 6), rng.integers(0, 12, 6)] = rng.integers(0, 3, 6)
        preds.append(p)
        targets.append(t)
    regions = {"outer": [1], "core": [2], "whole": [1, 2]}
    got = region_summary(preds, targets, regions, n_boot=300, seed=7)
    assert got["core"]["n"] == 8
    dice = np.array([region_metrics(p, t, regions={"core": [2]})["core"]["dice"] for p, t in zip(preds, targets)])
    holds = np.array([bool((t == 2).any()) for t in targets])
    means = [dice[row[holds[row]]].mean() for row in bootstrap_indices(12, 300, 7) if holds[row].any()]
    expected = percentile_interval(np.asarray(means))
    assert expected is not None and got["core"]["dice_ci"] == pytest.approx(list(expected))
    assert got["core"]["dice_ci"][0] <= got["core"]["dice"] <= got["core"]["dice_ci"][1]
    assert got["whole"]["hd95_ci"][0] <= got["whole"]["hd95"] <= got["whole"]["hd95_ci"][1]
    assert "dice_ci" not in region_summary(preds, targets, regions)["core"]  # no bootstrap asked
