"""The inference core of predict / evaluate: native-size maps by hand, the class-consistent empty mask,
and the same measures as the pool scoring's score_batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medloop.trainers.inference import InferenceModel, Settings, native_maps, predict_images, score_images
from medloop.trainers.models.base import JointModel, JointOutput
from medloop.trainers.uncertainty import score_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CLASSES = ["normal", "benign", "malignant"]


class BrightIsLesion(JointModel):
    """Lesion where the image is bright (foreground logit 20 (x - 0.5)); class logits = ``cls_bias`` plus a little
    of the mean intensity; dropout in the decoder so MC passes differ."""

    def __init__(self, cls_bias: list[float]) -> None:
        super().__init__()
        self.cls_bias = nn.Parameter(torch.tensor(cls_bias), requires_grad=False)
        self.drop = nn.Dropout(0.3)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, x: torch.Tensor) -> JointOutput:
        fg = 20.0 * (x[:, :1] - 0.5)
        seg = torch.cat([torch.zeros_like(fg), fg], 1)
        pooled = self.drop(x.mean((1, 2, 3))[:, None].expand(-1, 3))
        return JointOutput(self.cls_bias + pooled, seg, {}, pooled)


def _model(cls_bias: list[float], no_lesion: int | None = 0, size: int = 16) -> InferenceModel:
    return InferenceModel(model=BrightIsLesion(cls_bias).eval(), checkpoint="-", classes=CLASSES, image_size=size,
                          channels=1, cls_head="softmax", seg_head="softmax", no_lesion=no_lesion,
                          device=torch.device("cpu"))


def test_native_maps_resize_the_probability_then_threshold() -> None:
    """4x4 map, left half 0.9, right half 0.1, to 8x12 (bilinear, centres aligned): columns 0-5 interpolate to
    >= 0.633, columns 6-11 to <= 0.367 -> the left half is lesion. An empty model-size mask stays empty."""
    prob = np.tile(np.array([0.9, 0.9, 0.1, 0.1], np.float32), (4, 1))
    unc = np.full((4, 4), 0.25, np.float32)
    mask, p, u = native_maps(prob > 0.5, prob, unc, (8, 12))
    assert mask.shape == p.shape == u.shape == (8, 12) and mask.dtype == np.uint8
    assert mask[:, :6].all() and not mask[:, 6:].any()
    assert p[0, 5] == pytest.approx(0.9 - (1 / 3) * 0.8, abs=1e-5) and np.allclose(u, 0.25)
    empty, p2, _ = native_maps(np.zeros((4, 4), bool), prob, unc, (8, 12))  # e.g. the no-lesion class predicted
    assert not empty.any() and np.allclose(p2, p)


def _bright_rect(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    img = np.full((h, w), 40, np.uint8)
    truth = np.zeros((h, w), np.uint8)
    truth[h // 4: h // 2, w // 3: 2 * w // 3] = 1
    img[truth > 0] = 230
    return img, truth


def test_masks_come_back_at_each_image_size_and_follow_the_no_lesion_class() -> None:
    (a, ta), (b, tb) = _bright_rect(30, 45), _bright_rect(64, 20)
    benign = _model([0.0, 5.0, 0.0])
    preds = predict_images(benign, [a, b], Settings(passes=1))
    for pred, truth in zip(preds, (ta, tb)):
        assert pred.mask.shape == truth.shape == pred.fg_prob.shape == pred.uncertainty.shape
        dice = 2 * (pred.mask & truth).sum() / (pred.mask.sum() + truth.sum())
        assert dice > 0.85 and pred.lesion_area == int(pred.mask.sum()) > 0
        assert CLASSES[pred.pred_class] == "benign"
    normal = predict_images(_model([5.0, 0.0, 0.0]), [a], Settings(passes=1))[0]
    assert CLASSES[normal.pred_class] == "normal" and normal.lesion_area == 0 and normal.fg_prob.max() > 0.9
    kept = predict_images(_model([5.0, 0.0, 0.0], no_lesion=None), [a], Settings(passes=1))[0]
    assert kept.lesion_area > 0  # no no-lesion class: the mask is kept
    rgb = np.repeat(a[..., None], 3, axis=2)  # converted to the model's one channel
    assert np.array_equal(predict_images(benign, [rgb], Settings(passes=1))[0].mask, preds[0].mask)


def test_measures_are_score_batch_measures() -> None:
    im = _model([0.0, 1.0, 0.5], no_lesion=0)
    img, _ = _bright_rect(16, 16)
    batch = img[None, None]
    torch.manual_seed(3)
    ours = score_images(im, batch, Settings(passes=6, boundary_band=2))
    torch.manual_seed(3)
    ref = score_batch(im.model, torch.from_numpy(batch).float() / 255, method="mc_dropout", passes=6,
                      boundary_band=2, no_lesion_class=0)
    for name in ("probs", "confidence", "std", "entropy", "mutual_info", "margin", "seg_uncertainty", "pred_mask"):
        assert np.allclose(getattr(ours, name), getattr(ref, name), equal_nan=True), name
    assert ours.std[0] > 0  # dropout passes differ
    one = [predict_images(im, [img], Settings(passes=1))[0] for _ in range(2)]
    assert np.array_equal(one[0].probs, one[1].probs)  # T = 1: dropout off, deterministic
    assert math.isnan(one[0].measures["std"]) and math.isnan(one[0].measures["mutual_info"])
    assert Settings(passes=1).label() == "one deterministic pass" and Settings(passes=10).label().endswith("T = 10")
