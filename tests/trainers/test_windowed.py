"""Patch training and the sliding window (``data.patch_size``): where a training patch is cut, and the whole-grid
prediction of a patch model checked against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medloop.trainers.dataset import IGNORE, JointDataset, SampleArrays, patch_corner
from medloop.trainers.models.base import JointOutput
from medloop.trainers.windowed import SlidingWindow, windowed


def test_patch_corners_stay_inside_and_half_centre_on_the_lesion():
    rng = np.random.default_rng(0)
    mask = np.zeros((12, 40, 40), np.uint8)
    mask[10, 37, 38] = 1  # one lesion voxel in a corner
    mask[:2] = IGNORE  # not annotated: never a lesion
    patch = (8, 16, 16)
    corners = [patch_corner(mask, patch, rng) for _ in range(2000)]
    for c in corners:
        assert all(0 <= v <= n - p for v, n, p in zip(c, mask.shape, patch))
    holds = np.mean([c[0] <= 10 < c[0] + 8 and c[1] <= 37 < c[1] + 16 and c[2] <= 38 < c[2] + 16 for c in corners])
    # centred draws (half) always hold it; a uniform corner holds it with probability 1/5 * 1/25 * 1/25
    assert holds == pytest.approx(0.5, abs=0.04)
    empty = np.zeros((12, 40, 40), np.uint8)
    assert all(patch_corner(empty, patch, rng, lesion_share=1.0) <= (4, 24, 24) for _ in range(50))
    assert patch_corner(np.zeros((4, 8, 8), np.uint8), (8, 16, 16), rng) == (0, 0, 0)  # patch >= grid: the start


def test_a_patch_dataset_cuts_image_and_mask_together():
    vol = np.arange(2 * 6 * 10 * 10, dtype=np.float32).reshape(2, 6, 10, 10) / 1e4
    mask = (np.arange(6 * 10 * 10).reshape(6, 10, 10) % 7 == 0).astype(np.uint8)
    arrays = SampleArrays(np.array([1]), ["a"], vol[None], mask[None], np.array([0]), ["human"], None)
    item = JointDataset(arrays, None, seed=3, patch=(4, 6, 6))[0]
    img, m = item["image"].numpy(), item["mask"].numpy()
    assert img.shape == (2, 4, 6, 6) and m.shape == (4, 6, 6)
    d, h, w = np.argwhere(np.isclose(vol[0], img[0, 0, 0, 0]))[0]  # where the patch starts
    np.testing.assert_array_equal(img, vol[:, d:d + 4, h:h + 6, w:w + 6])
    np.testing.assert_array_equal(m, mask[d:d + 4, h:h + 6, w:w + 6])
    assert JointDataset(arrays, None)[0]["image"].shape == (2, 6, 10, 10)  # without a patch: the whole grid


class Pointwise(nn.Module):
    """A stand-in patch model with known outputs: segmentation logits = a 1x1x1 convolution of the voxels, class
    logits = the patch's mean intensity per channel, embedding = the same mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> JointOutput:
        self.calls.append(tuple(x.shape))
        mean = x.mean(dim=(2, 3, 4))
        return JointOutput(cls_logits=mean, seg_logits=self.conv(x), embedding=mean)


def test_sliding_window_equals_the_pointwise_model_on_the_whole_grid():
    torch.manual_seed(0)
    model = Pointwise()
    x = torch.rand(3, 2, 12, 20, 24)
    with torch.no_grad():
        out = SlidingWindow(model, (8, 8, 8))(x)
        full = model.conv(x)
    assert out.seg_logits.shape == (3, 3, 12, 20, 24)
    torch.testing.assert_close(out.seg_logits, full, atol=1e-5, rtol=1e-5)  # Gaussian blend of equal values
    assert all(shape[2:] == (8, 8, 8) for shape in model.calls)  # the model only ever saw patches
    # class logits: each volume's mean over its patches of the patch means
    model.calls.clear()
    with torch.no_grad():
        one = SlidingWindow(model, (8, 8, 8), sw_batch_size=1)(x[1:2])
    assert one.cls_logits.shape == (1, 2) and one.embedding is not None
    # MONAI's windows at overlap 0.25: starts every 6 voxels, the last one moved back inside the grid
    starts = [[0, 4], [0, 6, 12], [0, 6, 12, 16]]
    means = [x[1, :, d:d + 8, h:h + 8, w:w + 8].mean(dim=(1, 2, 3)) for d in starts[0] for h in starts[1]
             for w in starts[2]]
    assert len(model.calls) == len(means) == 24
    torch.testing.assert_close(one.cls_logits[0], torch.stack(means).mean(0))
    # a patch-sized input goes straight through; no patch size: the model itself
    assert windowed(model, (12, 20, 24))(x).seg_logits.shape == (3, 3, 12, 20, 24)
    assert windowed(model, None) is model
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        SlidingWindow(model, (8, 8, 8))(torch.rand(2, 2, 8, 8))


def test_mc_sampling_a_window_samples_each_patch_and_blends_probabilities():
    from medloop.trainers.uncertainty.mc import mc_sample

    torch.manual_seed(1)
    model = Pointwise()
    x = torch.rand(2, 2, 12, 20, 24)
    s = mc_sample(SlidingWindow(model, (8, 8, 8)), x, passes=3, cached=True, stochastic=False)
    assert s.seg_probs.shape == (3, 2, 3, 12, 20, 24) and s.cls_probs.shape == (3, 2, 2)
    with torch.no_grad():
        expected = torch.softmax(model.conv(x), 1)
    for t in range(3):  # every pass: the pointwise model's probabilities, blended back exactly
        torch.testing.assert_close(s.seg_probs[t], expected, atol=1e-5, rtol=1e-5)
    assert {shape[2:] for shape in model.calls} == {(8, 8, 8)}
    starts = [[0, 4], [0, 6, 12], [0, 6, 12, 16]]
    for b in range(2):  # class probabilities: the mean over the volume's 24 patches of each patch's softmax
        per_patch = [torch.softmax(x[b, :, d:d + 8, h:h + 8, w:w + 8].mean(dim=(1, 2, 3)), 0)
                     for d in starts[0] for h in starts[1] for w in starts[2]]
        torch.testing.assert_close(s.cls_probs[0, b], torch.stack(per_patch).mean(0))
    assert s.embedding is not None and s.embedding.shape == (2, 2)
