"""Semi-supervised training: ramp-up, UPS targets, output split, strong view, EMA teacher, and
the plain loop / Ray Train DDP learning from the unlabeled pool."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medloop.ledger.store import Ledger
from medloop.trainers.checkpoints import load_state
from medloop.trainers.dataset import IGNORE, load_arrays
from medloop.trainers.models import build
from medloop.trainers.models.base import JointOutput
from medloop.trainers.plain import LoopSettings, make_semi, train_plain
from medloop.trainers.semi import SemiOptions, StrongAugment, ramp_weight, split_output, ups_targets
from medloop.trainers.toydata import populate, toy_campaign

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- ramp-up (Laine & Aila 2017) -------------------------------------------------------------------------


def test_ramp_weight_closed_form():
    assert ramp_weight(0.0, 0.3, 2.0) == pytest.approx(2.0 * math.exp(-5.0))
    assert ramp_weight(0.15, 0.3, 2.0) == pytest.approx(2.0 * math.exp(-5.0 * 0.25))
    assert ramp_weight(0.3, 0.3, 2.0) == pytest.approx(2.0)
    assert ramp_weight(0.9, 0.3, 2.0) == pytest.approx(2.0)
    assert ramp_weight(0.0, 0.0, 2.0) == 2.0  # no ramp


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0.01, 1))
def test_ramp_weight_monotone_and_bounded(a, b, ramp):
    lo, hi = sorted((a, b))
    assert 0.0 <= ramp_weight(lo, ramp, 1.0) <= ramp_weight(hi, ramp, 1.0) <= 1.0


# ---- UPS targets per case and per pixel ------------------------------------------------------------------


def test_ups_targets_keep_only_confident_and_certain():
    # 3 passes, 3 cases, 2 classes
    cls = torch.tensor([
        [[0.95, 0.05], [0.99, 0.01], [0.6, 0.4]],
        [[0.95, 0.05], [0.85, 0.15], [0.6, 0.4]],
        [[0.95, 0.05], [0.97, 0.03], [0.6, 0.4]],
    ])
    # case 0: confident (0.95) and certain (std 0) -> kept; case 1: mean 0.937 but std 0.061 > 0.05
    # -> not kept; case 2: confidence 0.6 < 0.9 -> not kept
    seg = torch.zeros(3, 3, 2, 1, 3)
    fg = torch.tensor([[0.99, 0.5, 0.02], [0.99, 0.5, 0.02], [0.99, 0.5, 0.2]])  # per pass, pixel
    seg[:, :, 1, 0, :] = fg[:, None, :]
    seg[:, :, 0, 0, :] = 1 - fg[:, None, :]
    t = ups_targets(cls, seg, tau_c=0.9, tau_u=0.05, pixel_tau_u=0.05)
    assert t.label.tolist() == [0, -1, -1]
    # pixel 0: fg 0.99 certain -> 1; pixel 1: 0.5 -> ignored; pixel 2: mean bg 0.92 but std 0.0849 -> ignored
    assert t.mask[0, 0].tolist() == [1, IGNORE, IGNORE]
    assert t.kept_cases == pytest.approx(1 / 3)
    assert t.kept_pixels == pytest.approx(1 / 3)


def test_ups_targets_one_pass_uses_confidence_only():
    cls = torch.tensor([[[0.91, 0.09], [0.89, 0.11]]])
    seg = torch.tensor([[[[[0.05, 0.5]], [[0.95, 0.5]]]]]).expand(1, 2, 2, 1, 2)
    t = ups_targets(cls, seg, tau_c=0.9, tau_u=0.0, pixel_tau_u=0.0)
    assert t.label.tolist() == [0, -1]
    assert t.mask[0, 0].tolist() == [1, IGNORE]


def test_split_output_splits_every_tensor():
    out = JointOutput(torch.arange(5.0)[:, None], torch.zeros(5, 2, 4, 4),
                      aux={"deep_supervision": [torch.ones(5, 2, 2, 2)], "scalar": torch.tensor(1.0)},
                      embedding=torch.zeros(5, 3))
    a, b = split_output(out, 2)
    assert a.cls_logits.flatten().tolist() == [0, 1] and b.cls_logits.flatten().tolist() == [2, 3, 4]
    assert a.aux["deep_supervision"][0].shape[0] == 2 and b.aux["deep_supervision"][0].shape[0] == 3
    assert a.embedding.shape == (2, 3) and b.seg_logits.shape == (3, 2, 4, 4)
    assert a.aux["scalar"] == 1.0  # 0-d tensors are shared


# ---- strong view ------------------------------------------------------------------------------------------


def test_strong_augment_is_seeded_bounded_and_changes_the_image():
    x = torch.rand(6, 1, 16, 16)
    aug = StrongAugment(p=1.0)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.shape == x.shape and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert not torch.allclose(a, x)


def test_cutout_fills_a_rectangle_with_the_image_mean():
    x = torch.rand(1, 1, 20, 20)
    out = StrongAugment(ops=("cutout",), p=1.0)(x, torch.Generator().manual_seed(0))
    changed = (out != x)[0, 0]
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert changed.sum() > 0
    box = out[0, 0, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert torch.allclose(box, x.mean().expand_as(box))


def test_strong_augment_on_volumes_keeps_cases_apart_and_z_scores_unclipped():
    """A volume batch (B, C, D, H, W): each case gets its own factors (none leak across the batch or mix
    channels), the cut-out is a box through slices too, and z-scored MRI intensities are not clipped."""
    x = 0.4 + 0.2 * torch.rand(3, 2, 6, 12, 12)  # no clipping after contrast and brightness
    intensity = StrongAugment(ops=("intensity",), p=1.0, strength=0.4)
    out = intensity(x, torch.Generator().manual_seed(1))
    for i in range(3):  # one contrast / brightness per case: an affine map of that case's voxels
        a, b = np.polyfit(x[i].flatten().numpy(), out[i].flatten().numpy(), 1)
        np.testing.assert_allclose(out[i].numpy(), a * x[i].numpy() + b, atol=1e-5)
    box = StrongAugment(ops=("cutout",), p=1.0)(x[:1], torch.Generator().manual_seed(0))
    changed = (box != x[:1])[0, 0]
    d, r, c = torch.nonzero(changed, as_tuple=True)
    assert changed.sum() == (d.max() - d.min() + 1) * (r.max() - r.min() + 1) * (c.max() - c.min() + 1)
    assert 0 < int(d.max() - d.min() + 1) < 6  # a box through some slices, not all
    z = torch.randn(2, 1, 4, 8, 8) * 2.0
    strong = StrongAugment(p=1.0)(z, torch.Generator().manual_seed(2))
    assert strong.shape == z.shape and (float(strong.min()) < 0.0 or float(strong.max()) > 1.0)


# ---- EMA teacher --------------------------------------------------------------------------------------------


def test_mean_teacher_ema_update_closed_form():
    student = build("mtunet", width=4, depth=2)
    loader = torch.utils.data.DataLoader([{"image": torch.zeros(1, 32, 32)}], batch_size=1)
    options = SemiOptions(method="mean_teacher", ema_decay=0.9)
    semi_settings = LoopSettings(model={"name": "mtunet", "options": {}}, classes=["a", "b", "c"], semi=options)
    from medloop.trainers.semi import SemiTrainer

    semi = SemiTrainer(semi_settings.semi, loader, student, cls_head="softmax", seg_head="softmax", epochs=1)
    name, param = next(iter(student.named_parameters()))
    before = semi.teacher.state_dict()[name].clone()
    with torch.no_grad():
        param.add_(1.0)
    semi.after_step()
    assert torch.allclose(semi.teacher.state_dict()[name], 0.9 * before + 0.1 * (before + 1.0), atol=1e-6)
    assert not any(p.requires_grad for p in semi.teacher.parameters())


# ---- distribution alignment (Berthelot et al., ReMixMatch 2020) ---------------------------------------------


@given(st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3), st.lists(st.floats(0.05, 1.0), min_size=3, max_size=3))
def test_align_distribution_closed_form(prior, running):
    from medloop.trainers.semi import align_distribution

    samples = torch.softmax(torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    p, r = torch.tensor(prior) / sum(prior), torch.tensor(running) / sum(running)
    out = align_distribution(samples, p, r)
    want = samples * p / r
    assert torch.allclose(out, want / want.sum(-1, keepdim=True), atol=1e-6)
    assert torch.allclose(out.sum(-1), torch.ones(2, 4), atol=1e-6)
    assert torch.allclose(align_distribution(samples, p, p), samples, atol=1e-6)  # nothing to correct


def test_distribution_alignment_stops_the_majority_class_taking_every_target():
    """A teacher that calls every pool image class 0 with 0.92 confidence: without alignment each one becomes a
    class-0 target (tau_c 0.9); aligned to a labeled ratio of 1/3 each, none passes the confidence threshold."""
    from medloop.trainers.semi import SemiTrainer

    def majority() -> torch.nn.Module:  # a real model whose classifier answers (0.92, 0.05, 0.03) for any image
        model = build("mtunet", width=4, depth=2, num_classes=3)
        last = model.classifier[-1]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.copy_(torch.log(torch.tensor([0.92, 0.05, 0.03])))
        return model.eval()

    loader = torch.utils.data.DataLoader([{"image": torch.zeros(1, 16, 16)}] * 4, batch_size=4)
    weak = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = SemiTrainer(SemiOptions(method="fixmatch", teacher_passes=1, tau_c=0.9, tau_u=1.0), loader, majority(),
                        cls_head="softmax", seg_head="softmax", epochs=1)
    assert (plain.targets(weak).label == 0).all()
    aligned = SemiTrainer(SemiOptions(method="fixmatch", teacher_passes=1, tau_c=0.9, tau_u=1.0,
                                      distribution_alignment=True, class_prior=(1 / 3, 1 / 3, 1 / 3)),
                          loader, majority(), cls_head="softmax", seg_head="softmax", epochs=1)
    assert (aligned.targets(weak).label == -1).all()
    assert torch.allclose(aligned.running, torch.tensor([0.92, 0.05, 0.03]), atol=1e-6)


def test_class_ratio_of_the_labeled_set():
    from medloop.trainers.plain import class_ratio

    assert class_ratio(np.array([0, 0, 1, -1, 2, 0]), 3) == pytest.approx((0.6, 0.2, 0.2))
    assert class_ratio(np.array([-1, -1]), 2) == (0.5, 0.5)


# ---- the loops ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_pool(tmp_path_factory):
    campaign = toy_campaign(tmp_path_factory.mktemp("semi"), training={"semi": "fixmatch", "teacher_passes": 2,
                                                                        "ramp_up": 0.0})
    ledger = Ledger.open(campaign.ledger)
    populate(campaign, ledger, n_train=12, n_val=12, n_pool=24)
    return campaign, ledger


def test_segmentation_gate_holds_the_pixel_targets_back_until_validation_passes():
    """Pixel targets are all ignored until a validation Dice of at least ``min_val_dice`` opens the gate; a
    later Dice below it (or none) closes it again; the class targets are the same either way; 0 = always on."""
    from medloop.trainers.semi import SemiTrainer

    torch.manual_seed(0)
    model = build("mtunet", width=4, depth=2)
    weak = torch.rand(3, 1, 32, 32)
    opts = SemiOptions(method="fixmatch", teacher_passes=1, tau_c=0.0, tau_u=1.0, pixel_tau_u=1.0, min_val_dice=0.5)
    semi = SemiTrainer(opts, loader=[], student=model, cls_head="softmax", seg_head="softmax", epochs=2)
    model.eval()
    closed = semi.targets(weak)
    assert not semi.pixels_on and (closed.mask == IGNORE).all() and closed.kept_pixels == 0.0
    semi.update_gate(0.5)
    opened = semi.targets(weak)
    assert semi.pixels_on and (opened.mask != IGNORE).all() and opened.kept_pixels == 1.0
    assert torch.equal(opened.label, closed.label) and (opened.label >= 0).all()
    for dice in (0.49, None):
        semi.update_gate(0.9)
        semi.update_gate(dice)
        assert not semi.pixels_on and (semi.targets(weak).mask == IGNORE).all()
    always = SemiTrainer(SemiOptions(method="fixmatch", teacher_passes=1, tau_c=0.0, tau_u=1.0, pixel_tau_u=1.0),
                         loader=[], student=model, cls_head="softmax", seg_head="softmax", epochs=2)
    assert always.pixels_on and (always.targets(weak).mask != IGNORE).all()


def test_calibration_gate_holds_the_class_targets_back_while_validation_ece_is_high():
    """With ``max_val_ece`` set, class targets are all dropped until a validation ECE at most ``max_val_ece``
    opens the gate; a higher ECE (or none) closes it again; the pixel targets do not depend on it."""
    from medloop.trainers.semi import NO_LABEL, SemiTrainer

    torch.manual_seed(0)
    model = build("mtunet", width=4, depth=2).eval()
    weak = torch.rand(3, 1, 32, 32)
    opts = SemiOptions(method="fixmatch", teacher_passes=1, tau_c=0.0, tau_u=1.0, pixel_tau_u=1.0, max_val_ece=0.1)
    semi = SemiTrainer(opts, loader=[], student=model, cls_head="softmax", seg_head="softmax", epochs=2)
    closed = semi.targets(weak)
    assert not semi.classes_on and (closed.label == NO_LABEL).all() and closed.kept_cases == 0.0
    assert semi.pixels_on and closed.kept_pixels == 1.0  # min_val_dice 0: pixels ungated
    semi.update_gate(None, 0.1)
    opened = semi.targets(weak)
    assert semi.classes_on and (opened.label >= 0).all() and opened.kept_cases == 1.0
    assert torch.equal(opened.mask, closed.mask)
    for ece in (0.11, None, float("nan")):
        semi.update_gate(None, 0.05)
        semi.update_gate(None, ece)
        assert not semi.classes_on and (semi.targets(weak).label == NO_LABEL).all()


def test_semi_seg_gate_takes_the_campaigns_segmentation_gate(toy_pool):
    campaign, _ = toy_pool
    assert LoopSettings.from_campaign(campaign).semi.min_val_dice == campaign.selection.min_val_dice == 0.5
    off = campaign.model_copy(update={"training": campaign.training.model_copy(update={"semi_seg_gate": False})})
    assert LoopSettings.from_campaign(off).semi.min_val_dice == 0.0
    assert LoopSettings.from_campaign(campaign).semi.max_val_ece == campaign.selection.max_ece  # on by default
    no = campaign.model_copy(update={"training": campaign.training.model_copy(update={"semi_cls_gate": False})})
    assert LoopSettings.from_campaign(no).semi.max_val_ece is None


def test_plain_loop_opens_the_gate_from_each_epochs_validation(toy_pool):
    """The loop decides the gates after every validation: with a segmentation gate no model passes (Dice >= 1)
    no pixel is ever kept, with a calibration gate no model passes (ECE <= -1) no case; with the gates off,
    pixels are kept from the first epoch."""
    from dataclasses import replace

    campaign, ledger = toy_pool
    settings = LoopSettings.from_campaign(campaign, epochs=2)
    train, val = load_arrays(campaign, ledger, "train"), load_arrays(campaign, ledger, "val")
    unlabeled = load_arrays(campaign, ledger, "unlabeled")
    shut = train_plain(replace(settings, semi=replace(settings.semi, min_val_dice=1.0, tau_c=0.0, tau_u=1.0,
                                                      pixel_tau_u=1.0)), train, val, unlabeled=unlabeled)
    assert [r["loss_pixel_gate"] for r in shut.history] == [0.0, 0.0]
    assert all(r["loss_kept_pixels"] == 0.0 for r in shut.history)
    no_cls = train_plain(replace(settings, semi=replace(settings.semi, max_val_ece=-1.0, tau_c=0.0, tau_u=1.0)),
                         train, val, unlabeled=unlabeled)  # an ECE is never below 0: the class term stays off
    assert [r["loss_class_gate"] for r in no_cls.history] == [0.0, 0.0]
    assert all(r["loss_kept_cases"] == 0.0 for r in no_cls.history)
    free = train_plain(replace(settings, semi=replace(settings.semi, min_val_dice=0.0, tau_c=0.0, tau_u=1.0,
                                                      pixel_tau_u=1.0)), train, val, unlabeled=unlabeled)
    assert [r["loss_pixel_gate"] for r in free.history] == [1.0, 1.0]
    assert all(r["loss_kept_pixels"] == 1.0 for r in free.history)


def test_a_step_that_keeps_no_unlabeled_target_trains_on_the_labeled_batch_alone(toy_pool):
    """With gates no model passes, and with open gates whose thresholds no case or pixel meets, no strong view
    enters a forward pass: BatchNorm sees the labeled batches only, and the weights after two epochs equal
    supervised training's (``semi = "none"``, same seed) exactly. (A one-pass teacher draws no dropout mask,
    so the random stream is the same.)"""
    from dataclasses import replace

    campaign, ledger = toy_pool
    settings = LoopSettings.from_campaign(campaign, epochs=2)
    train, val = load_arrays(campaign, ledger, "train"), load_arrays(campaign, ledger, "val")
    unlabeled = load_arrays(campaign, ledger, "unlabeled")
    supervised = train_plain(replace(settings, semi=replace(settings.semi, method="none")), train, val)
    shut = train_plain(replace(settings, semi=replace(settings.semi, min_val_dice=1.0, max_val_ece=-1.0)),
                       train, val, unlabeled=unlabeled)
    unmet = train_plain(replace(settings, semi=replace(settings.semi, min_val_dice=0.0, max_val_ece=None,
                                                       teacher_passes=1, tau_c=1.01, pixel_tau_u=-1.0)),
                        train, val, unlabeled=unlabeled)
    assert [r["loss_class_gate"] for r in unmet.history] == [1.0, 1.0]  # the gates were open
    for run in (shut, unmet):
        assert all(r["loss_kept_cases"] == 0.0 and r["loss_kept_pixels"] == 0.0 for r in run.history)
        want, got = supervised.model.state_dict(), run.model.state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]


def test_unlabeled_part_is_the_pool_without_labels(toy_pool):
    campaign, ledger = toy_pool
    unlabeled = load_arrays(campaign, ledger, "unlabeled")
    assert len(unlabeled) == 24
    assert (unlabeled.labels == -1).all() and (unlabeled.masks == IGNORE).all()


def test_distribution_alignment_aims_at_the_labeled_ratio(toy_pool):
    from dataclasses import replace

    from medloop.trainers.plain import class_ratio

    campaign, ledger = toy_pool
    train, unlabeled = load_arrays(campaign, ledger, "train"), load_arrays(campaign, ledger, "unlabeled")
    settings = LoopSettings.from_campaign(campaign)
    settings = replace(settings, semi=replace(settings.semi, distribution_alignment=True))
    semi = make_semi(settings, unlabeled, build("mtunet", width=4, depth=2), labels=train.labels)
    assert semi is not None and semi.options.class_prior == class_ratio(train.labels, len(settings.classes))


@pytest.mark.parametrize("method", ["fixmatch", "mean_teacher"])
def test_plain_loop_trains_on_the_pool(toy_pool, method):
    campaign, ledger = toy_pool
    settings = LoopSettings.from_campaign(campaign, epochs=2)
    settings.semi.method = method
    train, val = load_arrays(campaign, ledger, "train"), load_arrays(campaign, ledger, "val")
    unlabeled = load_arrays(campaign, ledger, "unlabeled")
    res = train_plain(settings, train, val, unlabeled=unlabeled)
    for row in res.history:
        assert np.isfinite(row["loss"]) and np.isfinite(row["loss_unlabeled"])
        assert row["loss_unlabeled_weight"] == pytest.approx(1.0)
        assert 0.0 <= row["loss_kept_pixels"] <= 1.0
    # the unlabeled batches change training: same seed without them gives other weights
    settings_none = LoopSettings.from_campaign(campaign, epochs=2)
    settings_none.semi.method = "none"
    plain = train_plain(settings_none, train, val)
    assert "loss_unlabeled" not in plain.history[0]
    a, b = res.model.state_dict(), plain.model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_no_semi_without_pool(toy_pool):
    campaign, _ = toy_pool
    settings = LoopSettings.from_campaign(campaign)
    assert make_semi(settings, None, build("mtunet", width=4, depth=2)) is None


@pytest.mark.slow
def test_ray_train_ddp_mean_teacher_checkpoints_the_teacher(toy_pool):
    import ray

    from medloop.trainers.train import train_round

    campaign, ledger = toy_pool
    campaign = campaign.model_copy(update={"training": campaign.training.model_copy(update={"semi": "mean_teacher"})})
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        res = train_round(campaign, ledger, round_id=7, epochs=2, resume=False)
    finally:
        ray.shutdown()
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert all(np.isfinite(h["loss_unlabeled"]) for h in res.history)
    _, _, train_state = load_state(res.latest_checkpoint_path, with_train_state=True)
    assert train_state["teacher"] is not None and len(train_state["teacher"]) > 0


def test_unlabeled_loss_is_cross_entropy_over_all_cases_and_pixels():
    from medloop.trainers.semi import Targets, unlabeled_loss

    seg_logits = torch.zeros(2, 2, 1, 2)  # p = 0.5 everywhere: CE = log 2 per kept pixel
    cls_logits = torch.zeros(2, 3)  # p = 1/3: CE = log 3 per kept case
    out = JointOutput(cls_logits, seg_logits)
    mask = torch.tensor([[[1, IGNORE]], [[IGNORE, IGNORE]]])  # 1 of 4 pixels kept
    t = Targets(label=torch.tensor([2, -1]), mask=mask, kept_cases=0.5, kept_pixels=0.25)
    loss = unlabeled_loss(out, t, cls_head="softmax", seg_head="softmax")
    assert loss.item() == pytest.approx(math.log(2) / 4 + math.log(3) / 2, rel=1e-5)
    none = Targets(label=torch.tensor([-1, -1]), mask=torch.full_like(mask, IGNORE), kept_cases=0, kept_pixels=0)
    assert unlabeled_loss(out, none, cls_head="softmax", seg_head="softmax").item() == 0.0
