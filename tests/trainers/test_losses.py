"""Losses: hand-computed values, minimum at a perfect prediction, ignore-mask invariance."""

import math

import pytest
import torch
import torch.nn.functional as F

from medloop.trainers.losses import LOSSES, build_loss
from medloop.trainers.losses.classification import cross_entropy, focal_cross_entropy
from medloop.trainers.losses.evidential import (
    annealing_coefficient,
    evidential_classification_loss,
    evidential_segmentation_loss,
    evidential_terms,
    kl_to_uniform_dirichlet,
)
from medloop.trainers.losses.segmentation import (
    boundary_loss,
    focal_tversky_loss,
    pixel_cross_entropy,
    soft_dice_loss,
    texture_loss,
)
from medloop.trainers.losses.weighting import KendallWeighting
from medloop.trainers.models.base import JointOutput

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def perfect_logits(mask: torch.Tensor, q: int = 2, scale: float = 30.0) -> torch.Tensor:
    safe = torch.where(mask == 255, torch.zeros_like(mask), mask)
    return scale * (2 * F.one_hot(safe, q).permute(0, 3, 1, 2).float() - 1)


def probs_of(mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(perfect_logits(mask), 1)


def lesion_masks(b: int = 2, h: int = 12) -> torch.Tensor:
    m = torch.zeros(b, h, h, dtype=torch.long)
    m[0, 3:8, 4:9] = 1
    m[1, 6:11, 2:6] = 1
    return m


# -- classification ----------------------------------------------------------------------
def test_ce_skips_missing_labels_and_weights():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.3, 0.1, 0.2], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, -1, 1])
    logp = F.log_softmax(logits, 1)
    expected = -(logp[0, 0] + logp[2, 1]) / 2
    assert cross_entropy(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    w = torch.tensor([2.0, 0.5, 1.0])
    # Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 14: divide by m
    expected_w = -(2.0 * logp[0, 0] + 0.5 * logp[2, 1]) / 2
    assert cross_entropy(logits, labels, w).item() == pytest.approx(expected_w.item(), rel=1e-6)
    none = cross_entropy(logits.requires_grad_(), torch.full((3,), -1))
    assert none.item() == 0.0
    none.backward()


def test_focal_ce():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0])
    assert focal_cross_entropy(logits, labels, gamma=0.0).item() == pytest.approx(cross_entropy(logits, labels).item())
    p = torch.softmax(logits, 1)[:, 0]
    expected = (-((1 - p) ** 2) * torch.log(p)).mean()
    assert focal_cross_entropy(logits, labels, gamma=2.0).item() == pytest.approx(expected.item(), rel=1e-6)


# -- segmentation ------------------------------------------------------------------------
def test_dice_and_focal_tversky_hand_values():
    probs = torch.zeros(1, 2, 2, 2)
    probs[0, 1] = torch.tensor([[0.5, 1.0], [0.0, 0.0]])
    probs[0, 0] = 1 - probs[0, 1]
    mask = torch.tensor([[[1, 1], [0, 0]]])
    # TP = 1.5, FP = 0, FN = 0.5, smooth 1
    assert soft_dice_loss(probs, mask).item() == pytest.approx(1 - 4 / 4.5, rel=1e-6)
    # TI = (TP + s) / (TP + alpha FP + beta FN + s): beta = 0.7 weighs the FN of 0.5
    ti = 2.5 / (1.5 + 0.3 * 0 + 0.7 * 0.5 + 1)
    assert focal_tversky_loss(probs, mask).item() == pytest.approx((1 - ti) ** 0.75, rel=1e-5)
    # a pixel marked 255 is excluded: the 0.5 pixel ignored -> perfect
    mask_ign = torch.tensor([[[255, 1], [0, 0]]])
    assert soft_dice_loss(probs, mask_ign).item() == pytest.approx(0.0, abs=1e-7)


def test_focal_tversky_favours_recall_with_the_paper_weights():
    """alpha 0.3 on FP, beta 0.7 on FN (Al Shafi, Zunayed et al., TIM/UPA): missing k lesion pixels
    costs more than k extra pixels."""
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 2:6, 2:6] = 1  # 16 lesion pixels

    def probs_for(fg: torch.Tensor) -> torch.Tensor:
        fg = fg.float()
        return torch.stack([1 - fg, fg], 0).unsqueeze(0)

    k = 4
    missed = mask[0].clone()
    missed[2, 2:6] = 0  # 4 false negatives: TP 12, FN 4, FP 0
    extra = mask[0].clone()
    extra[1, 2:6] = 1  # 4 false positives: TP 16, FP 4, FN 0
    loss_fn = focal_tversky_loss(probs_for(missed), mask).item()
    loss_fp = focal_tversky_loss(probs_for(extra), mask).item()
    assert loss_fn > loss_fp
    # closed form, smooth 1: TI_fn = 13 / (12 + 0.7 * 4 + 1), TI_fp = 17 / (16 + 0.3 * 4 + 1)
    assert loss_fn == pytest.approx((1 - 13 / (13 + 0.7 * k)) ** 0.75, rel=1e-5)
    assert loss_fp == pytest.approx((1 - 17 / (17 + 0.3 * k)) ** 0.75, rel=1e-5)
    # swapping the weights swaps the preference
    assert focal_tversky_loss(probs_for(missed), mask, alpha=0.7, beta=0.3).item() < focal_tversky_loss(
        probs_for(extra), mask, alpha=0.7, beta=0.3
    ).item()


@pytest.mark.parametrize("fn", [soft_dice_loss, focal_tversky_loss, boundary_loss, texture_loss])
def test_region_losses_zero_when_perfect_and_ignore_invariant(fn):
    torch.manual_seed(0)
    mask = lesion_masks()
    assert fn(probs_of(mask), mask).item() == pytest.approx(0.0, abs=1e-5)
    noisy = torch.softmax(torch.randn(2, 2, 12, 12), 1)
    assert fn(noisy, mask).item() > 1e-3
    ign = mask.clone()
    ign[:, :, :5] = 255
    ign[1] = 255  # sample 1 has no mask at all
    other = noisy.clone()
    other[:, :, :, :5] = torch.softmax(torch.randn(2, 2, 12, 5), 1)
    other[1] = torch.softmax(torch.randn(2, 12, 12), 0)
    assert fn(noisy, ign).item() == pytest.approx(fn(other, ign).item(), abs=1e-6)
    empty = torch.full_like(mask, 255)
    assert fn(noisy, empty).item() == 0.0


def test_pixel_ce_ignore():
    logits = torch.randn(1, 2, 3, 3)
    mask = torch.full((1, 3, 3), 255)
    assert pixel_cross_entropy(logits, mask).item() == 0.0
    mask[0, 0, 0] = 1
    expected = -F.log_softmax(logits, 1)[0, 1, 0, 0]
    assert pixel_cross_entropy(logits, mask).item() == pytest.approx(expected.item(), rel=1e-6)


# -- evidential --------------------------------------------------------------------------
def test_evidential_terms_hand_values():
    alpha = torch.tensor([[2.0, 1.0]])
    y = torch.tensor([[1.0, 0.0]])
    assert evidential_terms(alpha, y, "digamma").item() == pytest.approx(0.5, rel=1e-6)  # psi(3) - psi(2)
    assert evidential_terms(alpha, y, "log").item() == pytest.approx(math.log(1.5), rel=1e-6)
    assert evidential_terms(alpha, y, "mse").item() == pytest.approx(1 / 3, rel=1e-6)


def test_kl_to_uniform_matches_torch_distributions():
    alpha = torch.tensor([[1.0, 3.0, 0.5], [2.0, 2.0, 2.0]])
    ref = torch.distributions.kl_divergence(
        torch.distributions.Dirichlet(alpha), torch.distributions.Dirichlet(torch.ones(3))
    )
    assert torch.allclose(kl_to_uniform_dirichlet(alpha), ref, atol=1e-5)
    assert kl_to_uniform_dirichlet(torch.ones(1, 4)).item() == pytest.approx(0.0, abs=1e-6)


def test_evidential_cls_annealing_and_missing_labels():
    assert annealing_coefficient(0, 10) == 0.0 and annealing_coefficient(5, 10) == 0.5
    assert annealing_coefficient(25, 10) == 1.0 and annealing_coefficient(3, 0) == 1.0
    alpha = torch.tensor([[2.0, 3.0], [5.0, 1.0]])
    labels = torch.tensor([0, -1])
    data = (torch.digamma(torch.tensor(5.0)) - torch.digamma(torch.tensor(2.0))).item()
    kl = kl_to_uniform_dirichlet(torch.tensor([[1.0, 3.0]])).item()  # alpha~ = (alpha - 1)(1 - y) + 1

    def loss_at(step: int) -> float:
        return evidential_classification_loss(alpha, labels, step=step, anneal_steps=10).item()

    assert loss_at(0) == pytest.approx(data, rel=1e-5)
    assert loss_at(5) == pytest.approx(data + 0.5 * kl, rel=1e-5)
    assert evidential_classification_loss(alpha, torch.tensor([-1, -1])).item() == 0.0


@pytest.mark.parametrize("form", ["digamma", "log", "mse"])
def test_evidential_losses_prefer_perfect_prediction(form):
    labels = torch.tensor([0, 2])
    good = F.softplus(30 * (2 * F.one_hot(labels, 3).float() - 1)) + 1
    bad = F.softplus(30 * (2 * F.one_hot(torch.tensor([1, 0]), 3).float() - 1)) + 1
    flat = torch.ones(2, 3)
    lg = evidential_classification_loss(good, labels, 100, 10, form)
    assert lg < evidential_classification_loss(flat, labels, 100, 10, form)
    assert lg < evidential_classification_loss(bad, labels, 100, 10, form)
    mask = lesion_masks()
    seg_good = F.softplus(perfect_logits(mask)) + 1
    seg_flat = torch.ones(2, 2, 12, 12)
    sg = evidential_segmentation_loss(seg_good, mask, 100, 10, form)
    assert sg < evidential_segmentation_loss(seg_flat, mask, 100, 10, form)


def test_evidential_seg_ignore_invariance():
    torch.manual_seed(0)
    mask = lesion_masks()
    mask[:, 6:] = 255
    a = F.softplus(torch.randn(2, 2, 12, 12)) + 1
    b = a.clone()
    b[:, :, 6:] = F.softplus(torch.randn(2, 2, 6, 12)) + 1
    assert evidential_segmentation_loss(a, mask, 3, 10).item() == pytest.approx(
        evidential_segmentation_loss(b, mask, 3, 10).item(), abs=1e-6
    )


# -- weighting ---------------------------------------------------------------------------
def test_kendall_weighting_eq15():
    kw = KendallWeighting(2)
    with torch.no_grad():
        kw.log_var.copy_(torch.tensor([math.log(4.0), 0.0]))  # sigma = 2, 1
    l1, l2 = torch.tensor(3.0), torch.tensor(5.0)
    expected = 3.0 / (2 * 4) + math.log(2.0) + 5.0 / 2 + 0.0
    assert kw([l1, l2]).item() == pytest.approx(expected, rel=1e-6)
    assert kw([l1, l2], present=[True, False]).item() == pytest.approx(3.0 / 8 + math.log(2.0), rel=1e-6)
    # the optimum of 0.5 exp(-s) L + 0.5 s is s = log L
    kw2 = KendallWeighting(1)
    opt = torch.optim.SGD(kw2.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        kw2([torch.tensor(2.0)]).backward()
        opt.step()
    assert kw2.log_var.item() == pytest.approx(math.log(2.0), abs=1e-3)


# -- composites --------------------------------------------------------------------------
def _batch():
    mask = lesion_masks()
    mask[1, :, 8:] = 255
    return {"image": torch.rand(2, 1, 12, 12), "label": torch.tensor([1, -1]), "mask": mask}


def _output(cls_logits, seg_logits, ds=False):
    aux = {"deep_supervision": [F.avg_pool2d(seg_logits, 2)]} if ds else {}
    return JointOutput(cls_logits=cls_logits, seg_logits=seg_logits, aux=aux, embedding=None)


@pytest.mark.parametrize("name", ["mtunet", "jrl", "mttu", "tim_upa"])
@pytest.mark.parametrize("head", ["softmax", "evidential"])
def test_composite_losses(name, head):
    torch.manual_seed(0)
    assert name in LOSSES
    loss = build_loss(name, cls_head=head, seg_head=head, anneal_steps=10, class_weights=[1.0, 2.0, 1.0])
    batch = _batch()
    ds = name == "tim_upa"
    perfect = _output(30 * (2 * F.one_hot(torch.tensor([1, 0]), 3).float() - 1), perfect_logits(batch["mask"]), ds)
    t_perfect, parts = loss(perfect, batch, step=20)
    assert {"total", "seg", "cls"} <= set(parts)
    for _ in range(3):
        cls = torch.randn(2, 3, requires_grad=True)
        seg = torch.randn(2, 2, 12, 12, requires_grad=True)
        total, _ = loss(_output(cls, seg, ds), batch, step=20)
        assert t_perfect < total
        total.backward()
        assert cls.grad is not None and seg.grad.abs().sum() > 0
        # ignored pixels and the unlabelled sample's class logits do not matter
        seg2 = seg.detach().clone()
        seg2[1, :, :, 8:] = torch.randn(2, 12, 4) * 5
        cls2 = cls.detach().clone()
        cls2[1] = torch.randn(3) * 5
        if not ds:
            again, _ = loss(_output(cls2, seg2), batch, step=20)
            assert again.item() == pytest.approx(total.item(), abs=1e-5)
        assert seg.grad[1, :, :, 8:].abs().max() == 0 or ds
        assert cls.grad[1].abs().max() == 0


def test_tim_upa_deep_supervision_term():
    batch = _batch()
    seg = torch.randn(2, 2, 12, 12)
    cls = torch.randn(2, 3)
    loss = build_loss("tim_upa")
    plain, _ = loss(_output(cls, seg), batch)
    with_ds, parts = loss(_output(cls, seg, ds=True), batch)
    assert "deep_supervision" in parts and parts["deep_supervision"] > 0
    assert with_ds.item() != pytest.approx(plain.item())


def test_unknown_loss_name():
    with pytest.raises(KeyError):
        build_loss("nope")


# ---- Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 14 class weights ----------------------------------------------------


def test_frequency_class_weights_two_classes_match_eq14():
    from medloop.trainers.losses.classification import frequency_class_weights

    # N_1 = 1 mutant, N_2 = 3 wild-type: w_1 = N_2 / (N_1 + N_2) = 0.75, w_2 = N_1 / (N_1 + N_2) = 0.25
    w = frequency_class_weights([0, 1, 1, 1, -1], 2)
    assert w.tolist() == pytest.approx([0.75, 0.25])


def test_frequency_class_weights_three_classes_sum_to_one_and_favour_rare():
    from medloop.trainers.losses.classification import frequency_class_weights

    w = frequency_class_weights([0] * 6 + [1] * 3 + [2], 3)  # N = 10
    assert w.tolist() == pytest.approx([4 / 20, 7 / 20, 9 / 20])
    assert w.sum() == pytest.approx(1.0)
    assert frequency_class_weights([-1, -1], 3).tolist() == pytest.approx([1 / 3] * 3)


def test_make_loss_fills_mttu_class_weights_from_training_labels():
    import numpy as np

    from medloop.trainers.plain import LoopSettings, make_loss

    settings = LoopSettings(model={"name": "mttu", "options": {}}, classes=["a", "b"], loss="mttu")
    loss = make_loss(torch.nn.Linear(1, 1), settings, np.array([0, 1, 1, 1]))
    assert loss.class_weights.tolist() == pytest.approx([0.75, 0.25])
    off = LoopSettings(model={"name": "mttu", "options": {}}, classes=["a", "b"], loss="mttu",
                       loss_options={"class_weights": "none"})
    assert make_loss(torch.nn.Linear(1, 1), off, np.array([0, 1, 1, 1])).class_weights is None
    plain = LoopSettings(model={"name": "mtunet", "options": {}}, classes=["a", "b"], loss="mtunet")
    assert make_loss(torch.nn.Linear(1, 1), plain, np.array([0, 1, 1, 1])).class_weights is None


@pytest.mark.parametrize("fn", [soft_dice_loss, focal_tversky_loss])
def test_region_losses_on_volumes_equal_the_same_voxels_as_an_image(fn):
    """A (B, Q, D, H, W) volume gives the loss of its voxels laid out as a (B, Q, D*H, W) image: the
    per-sample sums run over every spatial axis (the 3D models of Cheng et al., MTTU-Net, 2022)."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 4, 5, 6, generator=g), dim=1)
    mask = torch.randint(0, 3, (2, 4, 5, 6), generator=g)
    mask[0, 1] = 255  # an ignored slice
    volume = fn(probs, mask)
    image = fn(probs.reshape(2, 3, 20, 6), mask.reshape(2, 20, 6))
    assert torch.isfinite(volume) and float(volume) == pytest.approx(float(image), rel=1e-6)
    assert float(fn(F.one_hot(mask.clamp(0, 2), 3).movedim(-1, 1).float(), mask)) == pytest.approx(0.0, abs=1e-6)
