"""Sliding-window MC-dropout scoring of volumes (MONAI's sliding_window_inference): a pointwise model
against its closed form, dropout statistics, the volume- and slice-level scores, a real 3D model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation
from torch import nn

from medloop.trainers.models import build
from medloop.trainers.models.base import JointModel, JointOutput
from medloop.trainers.uncertainty.volume import score_volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Pointwise(JointModel):
    """Seg logits = a 1x1x1 convolution (each voxel on its own, so patches blend to the full-volume
    answer exactly); cls logits = a constant bias; optional dropout on the input channels."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout3d(p)
        self.conv = nn.Conv3d(2, 2, 1)
        self.cls_bias = nn.Parameter(torch.tensor([0.3, -0.2, 1.0]))
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[[1.5]]], [[[-0.5]]]], [[[[-1.0]]], [[[2.0]]]]]))
            self.conv.bias.copy_(torch.tensor([0.2, -0.1]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, features: torch.Tensor) -> JointOutput:
        seg = self.conv(self.drop(features))
        return JointOutput(cls_logits=self.cls_bias.expand(features.shape[0], -1), seg_logits=seg, aux={},
                           embedding=None)


def test_patches_blend_to_the_full_volume_answer() -> None:
    torch.manual_seed(0)
    vol = torch.rand(2, 20, 18, 22)
    model = Pointwise()
    res = score_volume(model, vol, roi_size=(8, 8, 8), passes=1, overlap=0.5)
    with torch.no_grad():
        full = torch.softmax(model.conv(vol[None]), 1)[0].numpy()
    np.testing.assert_allclose(res.seg_probs, full, atol=1e-5)
    np.testing.assert_allclose(res.probs, torch.softmax(model.cls_bias, 0).detach().numpy(), atol=1e-6)
    assert res.pred_mask.shape == (20, 18, 22) and (res.pred_mask == full.argmax(0)).all()
    assert not res.voxel_std.any() and res.volume_uncertainty == 0.0 and not res.slice_uncertainty.any()
    assert res.pred_class == 2


def test_mc_passes_give_voxel_std_seeded_and_scores_follow_their_definitions() -> None:
    torch.manual_seed(1)
    vol = torch.rand(2, 12, 16, 16)
    vol[:, 4:8, 5:11, 5:11] += 1.5  # a block the model calls lesion
    model = Pointwise(p=0.5)
    a = score_volume(model, vol, roi_size=(8, 8, 8), passes=6, seed=3, boundary_band=1)
    b = score_volume(model, vol, roi_size=(8, 8, 8), passes=6, seed=3, boundary_band=1)
    np.testing.assert_array_equal(a.voxel_std, b.voxel_std)
    assert model.training  # the model's mode is restored
    assert a.voxel_std.max() > 0.05
    full = score_volume(model, vol, roi_size=(8, 8, 8), passes=6, seed=3, boundary_band=1, cached=False)
    assert full.voxel_std.max() > 0.05 and full.pred_mask.shape == a.pred_mask.shape  # T full passes per patch
    # volume score: mean voxel std over (possible lesion, dilated by a 3x3x3 cube)
    possible = (a.pred_mask > 0) | (1.0 - a.seg_probs[0] >= 0.1)
    region = binary_dilation(possible, structure=np.ones((3, 3, 3)))
    assert a.volume_uncertainty == pytest.approx(float(a.voxel_std[region].mean()), rel=1e-5)
    # slice scores: the same on each axial slice with a 3x3 square; 0 where nothing may be lesion
    for z in range(12):
        sl = binary_dilation(possible[z], structure=np.ones((3, 3)))
        expected = float(a.voxel_std[z][sl].mean()) if sl.any() else 0.0
        assert a.slice_uncertainty[z] == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_a_real_3d_model_on_a_volume_larger_than_its_patch() -> None:
    torch.manual_seed(0)
    model = build("mtunet3d", in_channels=4, num_classes=2, width=4, depth=2, dropout=0.2)
    vol = torch.rand(4, 20, 24, 28)
    res = score_volume(model, vol, roi_size=(16, 16, 16), passes=3, sw_batch_size=2)
    assert res.seg_probs.shape == (2, 20, 24, 28) and res.probs.shape == (2,)
    np.testing.assert_allclose(res.seg_probs.sum(0), 1.0, atol=1e-5)
    assert res.probs.sum() == pytest.approx(1.0, abs=1e-5) and res.slice_uncertainty.shape == (20,)
    assert np.isfinite(res.volume_uncertainty) and (res.voxel_std >= 0).all()


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"expected \(C, D, H, W\)"):
        score_volume(Pointwise(), torch.rand(20, 18, 22), roi_size=(8, 8, 8))
