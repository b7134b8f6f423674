"""MC-dropout sampling, uncertainty measures and batch scoring."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from medloop.trainers.models.base import JointModel, JointOutput
from medloop.trainers.uncertainty import enable_mc_dropout, mc_sample, score_batch
from medloop.trainers.uncertainty import measures as M

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyJoint(JointModel):
    """Deterministic encoder (conv + BN), stochastic decoder (dropout before both heads).

    ``encode`` returns a dict holding a tuple, to exercise the feature-structure handling.
    """

    def __init__(self, p: float = 0.5, k: int = 3) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.drop = nn.Dropout(p)
        self.seg = nn.Conv2d(9, 2, 1)
        self.cls_drop = nn.Dropout(p)
        self.cls = nn.Linear(8, k)

    def encode(self, x):
        f = self.enc(x)
        return {"feat": f, "skips": (x,)}

    def decode(self, features):
        f, x = features["feat"], features["skips"][0]
        seg = self.seg(torch.cat([self.drop(f), x], 1))
        emb = f.mean((2, 3))
        return JointOutput(cls_logits=self.cls(self.cls_drop(emb)), seg_logits=seg, embedding=emb)


def _model(p=0.5):
    torch.manual_seed(0)
    m = TinyJoint(p)
    m.train()
    with torch.no_grad():  # give BN non-trivial running statistics
        m(torch.rand(4, 1, 8, 8))
    return m


def test_measures_hand_computed():
    samples = torch.tensor([[[0.8, 0.2]], [[0.4, 0.6]]])  # (T=2, B=1, K=2)
    mean = M.mean_probs(samples)
    assert torch.allclose(mean, torch.tensor([[0.6, 0.4]]))
    assert M.confidence(mean).item() == pytest.approx(0.6)
    assert M.margin(mean).item() == pytest.approx(0.2)
    assert M.predicted_class_std(samples).item() == pytest.approx(0.2)  # |0.8 - 0.4| / 2

    def h(p):
        return -sum(x * math.log(x) for x in p)

    assert M.predictive_entropy(samples).item() == pytest.approx(h([0.6, 0.4]), abs=1e-6)
    expected = (h([0.8, 0.2]) + h([0.4, 0.6])) / 2
    assert M.mutual_information(samples).item() == pytest.approx(h([0.6, 0.4]) - expected, abs=1e-6)
    # identical passes: no epistemic uncertainty
    same = torch.tensor([[[0.7, 0.3]], [[0.7, 0.3]]])
    assert M.mutual_information(same).item() == pytest.approx(0.0, abs=1e-7)
    assert M.predicted_class_std(same).item() == 0.0
    assert M.vacuity(torch.tensor([[1.0, 2.0, 3.0]])).item() == pytest.approx(0.5)


def test_pixel_std_and_region_aggregates():
    # T=2, B=1, Q=2, 1x2 pixels; std of the predicted class's prob per pixel
    seg = torch.tensor([[[[0.9, 0.5]], [[0.1, 0.5]]], [[[0.7, 0.1]], [[0.3, 0.9]]]]).unsqueeze(1)  # (2, 1, 2, 1, 2)
    assert torch.allclose(M.predicted_class_std(seg), torch.tensor([[[0.1, 0.2]]]))

    umap = torch.arange(49, dtype=torch.float32).reshape(1, 7, 7)
    pred = torch.zeros(1, 7, 7, dtype=torch.long)
    pred[0, 3, 3] = 1
    # band 1 -> 3x3 block centred at (3, 3): mean of rows 2-4, cols 2-4 = 24
    assert M.lesion_uncertainty(umap, pred, 1).item() == pytest.approx(24.0)
    assert M.lesion_uncertainty(umap, pred, 0).item() == pytest.approx(24.0)
    pred2 = torch.zeros(1, 7, 7, dtype=torch.long)
    pred2[0, 0, 0] = 1  # corner: band 1 covers (0..1, 0..1) = 0, 1, 7, 8
    assert M.lesion_uncertainty(umap, pred2, 1).item() == pytest.approx(4.0)
    empty = torch.zeros(1, 7, 7, dtype=torch.long)
    assert M.lesion_uncertainty(umap, empty, 3).item() == pytest.approx(24.0)  # whole-image mean
    assert M.lesion_fraction(pred).item() == pytest.approx(1 / 49)


def test_enable_mc_dropout_modes_and_restore():
    m = _model()
    m.train()
    m.cls_drop.eval()  # an unusual mixed state must be restored exactly
    before = {name: mod.training for name, mod in m.named_modules()}
    with enable_mc_dropout(m):
        assert not m.training
        assert not m.enc[1].training
        assert m.drop.training and m.cls_drop.training
    assert {name: mod.training for name, mod in m.named_modules()} == before


@pytest.mark.parametrize("cached", [True, False])
def test_mc_sample_keeps_batchnorm_stats(cached):
    m = _model()
    bn = m.enc[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
    s = mc_sample(m, torch.rand(3, 1, 8, 8), passes=5, cached=cached)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    assert m.training
    assert s.cls_probs.shape == (5, 3, 3) and s.seg_probs.shape == (5, 3, 2, 8, 8)
    assert s.embedding.shape == (3, 8)
    # the passes differ (dropout active) and probabilities sum to one
    assert not torch.allclose(s.cls_probs[0], s.cls_probs[1])
    assert torch.allclose(s.seg_probs.sum(2), torch.ones(5, 3, 8, 8), atol=1e-5)


def test_cached_equals_full_passes_without_dropout():
    m = _model(p=0.0)
    x = torch.rand(2, 1, 8, 8)
    a = mc_sample(m, x, passes=3, cached=True, max_batch=2)  # chunks of one pass
    b = mc_sample(m, x, passes=3, cached=False)
    assert torch.allclose(a.cls_probs, b.cls_probs, atol=1e-6)
    assert torch.allclose(a.seg_probs, b.seg_probs, atol=1e-6)


def test_cached_sampler_same_distribution_as_full_passes():
    m = _model(p=0.5)
    x = torch.rand(2, 1, 8, 8)
    t = 800
    torch.manual_seed(1)
    a = mc_sample(m, x, passes=t, cached=True)
    torch.manual_seed(2)
    b = mc_sample(m, x, passes=t, cached=False)
    for sa, sb in ((a.cls_probs, b.cls_probs), (a.seg_probs[:, :, 1, 2:5, 2:5], b.seg_probs[:, :, 1, 2:5, 2:5])):
        sd = 0.5 * (sa.std(0) + sb.std(0))
        se = sd * math.sqrt(2.0 / t)
        assert torch.all((sa.mean(0) - sb.mean(0)).abs() <= 5 * se + 1e-6)
        assert torch.all((sa.std(0) - sb.std(0)).abs() <= 0.15 * sd + 1e-6)
        assert sd.min() > 1e-3  # dropout really is stochastic here


def test_score_batch_mc_fields_and_pixel_std():
    m = _model()
    x = torch.rand(3, 1, 8, 8)
    torch.manual_seed(5)
    s = mc_sample(m, x, passes=4)
    torch.manual_seed(5)
    r = score_batch(m, x, method="mc_dropout", passes=4, boundary_band=1)
    assert r.probs.shape == (3, 3) and r.probs.dtype == np.float32
    assert r.pred_mask.shape == (3, 8, 8) and r.pred_mask.dtype == np.uint8
    assert r.pixel_uncertainty.dtype == np.float32 and r.embedding.dtype == np.float32
    assert np.allclose(r.pixel_uncertainty, s.seg_probs[:, :, 1].std(0, unbiased=False).numpy(), atol=1e-6)
    assert np.allclose(r.probs, s.cls_probs.mean(0).numpy(), atol=1e-6)
    assert np.allclose(r.confidence, r.probs.max(1))
    assert np.all(np.isnan(r.vacuity)) and np.all(np.isfinite(r.std)) and np.all(r.mutual_info >= 0)
    assert np.allclose(r.seg_uncertainty_image, r.pixel_uncertainty.mean((1, 2)), atol=1e-6)
    assert np.allclose(r.lesion_fraction, (r.pred_mask > 0).mean((1, 2)))
    assert len(r) == 3 and set(r.row(0)) >= {"probs", "vacuity", "pixel_uncertainty"}


def test_score_batch_evidential():
    m = _model()
    x = torch.rand(2, 1, 8, 8)
    r = score_batch(m, x, method="evidential", cls_head="evidential", seg_head="evidential")
    assert m.training  # restored
    out = m.eval()(x)
    m.train()
    alpha = torch.nn.functional.softplus(out.cls_logits) + 1
    assert np.allclose(r.vacuity, (3 / alpha.sum(1)).detach().numpy(), atol=1e-6)
    seg_alpha = torch.nn.functional.softplus(out.seg_logits) + 1
    assert np.allclose(r.pixel_uncertainty, (2 / seg_alpha.sum(1)).detach().numpy(), atol=1e-6)
    assert np.all(np.isnan(r.std)) and np.all(np.isnan(r.mutual_info))
    both = score_batch(m, x, method="both", passes=3, cls_head="evidential", seg_head="evidential")
    assert np.all(np.isfinite(both.vacuity)) and np.all(np.isfinite(both.std))
    with pytest.raises(ValueError):
        score_batch(m, x, method="ensemble")


def test_score_batch_deterministic_is_one_eval_pass_of_softmax_heads():
    m = _model(p=0.5)
    x = torch.rand(2, 1, 8, 8)
    r = score_batch(m, x, method="deterministic", passes=10)  # passes ignored: one pass, dropout off
    again = score_batch(m, x, method="deterministic")
    assert m.training  # restored
    with torch.no_grad():
        out = m.eval()(x)
    m.train()
    probs = torch.softmax(out.cls_logits, 1)
    fg = torch.softmax(out.seg_logits, 1)
    assert np.allclose(r.probs, probs.numpy(), atol=1e-6) and np.array_equal(r.probs, again.probs)
    assert np.allclose(r.fg_prob, fg[:, 1].numpy(), atol=1e-6)
    # normalised per-pixel entropy H / log Q (Q = 2)
    ent = -(fg * fg.clamp_min(1e-12).log()).sum(1) / math.log(2)
    assert np.allclose(r.pixel_uncertainty, ent.numpy(), atol=1e-5)
    assert np.all(np.isnan(r.std)) and np.all(np.isnan(r.mutual_info)) and np.all(np.isnan(r.vacuity))


def test_lesion_uncertainty_not_diluted_and_ranks_a_possibly_missed_lesion_high():
    size = 64
    pixel = torch.zeros(3, size, size)
    fg = torch.zeros(3, size, size)
    pred = torch.zeros(3, size, size, dtype=torch.long)
    # 0: a predicted lesion (4x4) with uncertainty 0.2 inside, the rest of the large image certain
    pred[0, 10:14, 10:14] = 1
    fg[0, 10:14, 10:14] = 0.9
    pixel[0, 10:14, 10:14] = 0.2
    # 1: empty prediction, but a 3x3 patch at lesion probability 0.4 with uncertainty 0.3 (a missed lesion?)
    fg[1, 30:33, 30:33] = 0.4
    pixel[1, 30:33, 30:33] = 0.3
    # 2: empty prediction, every pixel sure there is no lesion
    u = M.lesion_uncertainty(pixel, pred, 0, fg_prob=fg)
    assert u[0].item() == pytest.approx(0.2)  # not diluted by the 4080 background pixels
    assert u[1].item() == pytest.approx(0.3)  # measured on the possible lesion
    assert u[2].item() == 0.0
    assert u[1] > u[0] > u[2]
    with_band = M.lesion_uncertainty(pixel, pred, 1, fg_prob=fg)
    assert with_band[0].item() == pytest.approx(16 * 0.2 / 36)  # 6x6 region with the band


def test_class_consistent_mask_empties_no_lesion_predictions():
    masks = torch.ones(3, 2, 2, dtype=torch.long)
    out = M.class_consistent_mask(masks, torch.tensor([0, 1, 2]), 0)
    assert out.sum((1, 2)).tolist() == [0, 4, 4]
    assert M.class_consistent_mask(masks, torch.tensor([0, 1, 2]), None) is masks


# ---- cached vs full passes, chosen by a probe -------------------------------------------------------------


class _Timed(JointModel):
    """Encoder and decoder with a chosen cost in (simulated) seconds, counted on a fake clock."""

    def __init__(self, encode_cost: float, decode_cost_per_row2: float, clock: list[float]) -> None:
        super().__init__()
        self.inner = _model()
        self.encode_cost, self.decode_cost, self.clock = encode_cost, decode_cost_per_row2, clock
        self.encodes = 0

    def encode(self, x):
        self.encodes += 1
        self.clock[0] += self.encode_cost
        return self.inner.encode(x)

    def decode(self, features):
        rows = features["feat"].shape[0]
        self.clock[0] += self.decode_cost * rows**2  # a decoder whose cost grows faster than its batch
        return self.inner.decode(features)


def test_probe_picks_the_faster_strategy_once_per_model_and_shape():
    from medloop.trainers.uncertainty.mc import probe_cached

    clock = [0.0]
    heavy_encoder = _Timed(encode_cost=1.0, decode_cost_per_row2=0.001, clock=clock)
    x = torch.rand(4, 1, 8, 8)
    assert probe_cached(heavy_encoder, x, passes=8, clock=lambda: clock[0]) is True
    calls = heavy_encoder.encodes
    assert probe_cached(heavy_encoder, x, passes=8, clock=lambda: clock[0]) is True
    assert heavy_encoder.encodes == calls  # decided once for (shape, T, device)
    heavy_decoder = _Timed(encode_cost=0.0, decode_cost_per_row2=0.01, clock=clock)
    # cached: one decode of 8 x 2 rows = 2.56 s; full: 8 decodes of 2 rows = 0.32 s
    assert probe_cached(heavy_decoder, x, passes=8, clock=lambda: clock[0]) is False


def test_auto_sampling_keeps_the_callers_random_stream():
    from medloop.trainers.uncertainty.mc import PROBE_ATTRIBUTE

    m = _model()
    x = torch.rand(3, 1, 8, 8)
    torch.manual_seed(7)
    auto = mc_sample(m, x, passes=5, cached="auto")
    chosen = m.__dict__[PROBE_ATTRIBUTE][((1, 8, 8), 5, "cpu")]
    torch.manual_seed(7)
    same = mc_sample(m, x, passes=5, cached=chosen)  # the probe drew no dropout mask of the caller's
    assert torch.equal(auto.cls_probs, same.cls_probs) and torch.equal(auto.seg_probs, same.seg_probs)
    assert auto.seg_probs.shape == (5, 3, 2, 8, 8)


def test_cached_sampler_runs_the_deterministic_decoder_levels_once():
    """With dropout only on mtunet's last decoder level (+ classifier), the cached sampler runs every up
    block once on the B images and only the segmentation head on the T * B repeated rows; with dropout on
    every level, level 0's up block runs once and the later ones on T * B rows. The samples still vary."""
    from medloop.trainers.models import build

    x = torch.rand(2, 1, 32, 32)
    for placement, repeated_ups in ((("last_decoder", "classifier"), []), (("decoder", "classifier"), [1, 2])):
        torch.manual_seed(0)
        model = build("mtunet", width=4, depth=3, dropout=0.5, dropout_placement=placement).eval()
        rows: dict[str, list[int]] = {}
        for name, mod in [*((f"up{j}", u) for j, u in enumerate(model.ups)), ("seg_head", model.seg_head)]:
            mod.register_forward_hook(lambda m, i, o, name=name, rows=rows: rows.setdefault(name, []).append(
                i[0].shape[0]))
        s = mc_sample(model, x, passes=5, cached=True)
        assert rows["seg_head"] == [10]
        for j in range(3):
            assert rows[f"up{j}"] == ([10] if j in repeated_ups else [2]), (placement, j, rows)
        assert s.seg_probs.std(0).max() > 0 and s.cls_probs.std(0).max() > 0
