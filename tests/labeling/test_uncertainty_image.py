"""The uncertainty image annotators see beside a pushed image (``labeling.push.uncertainty_png``): pure, no server."""

import numpy as np

from medloop.data.imagestore import prob_at
from medloop.labeling.push import uncertainty_png


def _float_reference(umap: np.ndarray, h: int, w: int, vmax: float) -> np.ndarray:
    """The map resized as floats first, then put on the 0-255 scale (what the 8-bit resize stands in for)."""
    u = np.nan_to_num(prob_at(umap, (h, w)), nan=0.0)
    return np.clip(u * 255.0 / vmax, 0.0, 255.0)


def test_eight_bit_resize_is_within_one_and_a_half_levels_of_the_float_resize():
    """vmax at or above the map's maximum, as the push sets it (max of the map and 2 x pixel_tau_u)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    smooth = 0.25 * np.exp(-((yy - 0.4) ** 2 + (xx - 0.6) ** 2) / 0.05)
    for umap, vmax in ((smooth, 0.25), (rng.random((64, 64)) * 0.3, 0.3)):
        got = uncertainty_png(umap.astype(np.float32), 200, 256, vmax)
        assert got.shape == (200, 256) and got.dtype == np.uint8
        error = np.abs(got.astype(float) - _float_reference(umap.astype(np.float32), 200, 256, vmax))
        assert error.max() <= 1.5 and error.mean() < 0.5


def test_scale_aspect_and_missing_values():
    umap = np.full((32, 32), 0.5, np.float32)
    umap[0, 0] = np.nan
    small = uncertainty_png(umap, 32, 32, vmax=0.5)  # the model's size: no resize
    assert small[0, 0] == 0 and small[5, 5] == 255  # NaN is dark, vmax is the brightest level
    assert uncertainty_png(umap, 2000, 1000, vmax=1.0).shape == (512, 256)  # the aspect, longer side capped
    assert uncertainty_png(umap, 2000, 1000, vmax=1.0)[300, 100] == 128
