"""Volume models mttu3d / mtunet3d at tiny sizes: shapes, MC-dropout contract, the MTTU-Net
multi-scale classifier and bottleneck tokens, parameter counts against closed forms, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medloop.trainers.models import MODELS, build, count_parameters
from medloop.trainers.models.mttu3d import MTTUNet3D
from medloop.trainers.models.mtunet3d import MTUNet3D
from medloop.trainers.uncertainty.mc import enable_mc_dropout, mc_sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES3D = ["mttu3d", "mtunet3d"]
S = 16  # 16^3 volumes


def tiny3d(name: str, **kw) -> nn.Module:
    opts: dict = dict(width=4, depth=2 if name == "mtunet3d" else 3, in_channels=1)
    if name == "mttu3d":
        opts.update(transformer_layers=1, heads=4, image_size=S)
    opts.update(kw)
    return build(name, **opts)


def test_registry_builds_the_volume_models_by_name() -> None:
    assert {"mttu3d", "mtunet3d"} <= set(MODELS.names())
    assert isinstance(tiny3d("mttu3d"), MTTUNet3D)
    assert isinstance(tiny3d("mtunet3d"), MTUNet3D)
    # four co-registered MRI sequences are fine for a volume model, not for a 2D one
    assert tiny3d("mttu3d", in_channels=4).in_channels == 4
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        build("mttu", in_channels=4)
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        build("mtunet3d", in_channels=0)


@pytest.mark.parametrize("name", NAMES3D)
def test_forward_shapes_regions_and_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = tiny3d(name, in_channels=2, num_classes=3, seg_classes=4)
    x = torch.rand(2, 2, S, S, S)
    out = model(x)
    assert out.cls_logits.shape == (2, 3)
    assert out.seg_logits.shape == (2, 4, S, S, S)  # K = 4 regions incl. background, per voxel
    assert out.embedding is not None and out.embedding.shape[0] == 2
    (out.cls_logits.sum() + out.seg_logits.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    # anisotropic grids work too (each axis divisible by 2**depth)
    out = model.eval()(torch.rand(1, 2, 8, S, 2 * S))
    assert out.seg_logits.shape == (1, 4, 8, S, 2 * S)


@pytest.mark.parametrize("name", NAMES3D)
def test_bad_input_is_named(name: str) -> None:
    model = tiny3d(name)
    with pytest.raises(ValueError, match=r"expected a volume batch \(B, 1, D, H, W\), got \(1, 1, 16, 16\)"):
        model(torch.rand(1, 1, S, S))
    with pytest.raises(ValueError, match="divisible by"):
        model(torch.rand(1, 1, S, S, 6))


@pytest.mark.parametrize("name", NAMES3D)
def test_dropout_only_in_train_or_mc_mode_and_cached_sampler(name: str) -> None:
    torch.manual_seed(0)
    model = tiny3d(name, dropout=0.5, dropout_placement=("bottleneck", "decoder", "classifier"))
    drops = [m for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout3d))]
    assert any(isinstance(m, nn.Dropout3d) for m in drops) and any(type(m) is nn.Dropout for m in drops)
    x = torch.rand(1, 1, S, S, S)
    model.eval()
    a, b = model(x), model(x)
    assert torch.equal(a.seg_logits, b.seg_logits) and torch.equal(a.cls_logits, b.cls_logits)
    feats = model.encode(x)
    assert torch.equal(model.decode(feats).seg_logits, a.seg_logits)  # forward == decode(encode)
    with enable_mc_dropout(model):  # dropout on, BatchNorm frozen
        assert all(m.training for m in drops)
        assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm3d))
        c, d = model(x), model(x)
        assert not torch.equal(c.seg_logits, d.seg_logits)
        assert not torch.equal(c.cls_logits, d.cls_logits)
        assert torch.equal(model.encode(x)[0], feats[0])  # encode holds no dropout
    assert not model.training and not any(m.training for m in drops)  # restored
    samples = mc_sample(model, x, passes=3, cached=True)
    assert samples.seg_probs.shape == (3, 1, 2, S, S, S)
    assert samples.cls_probs.shape == (3, 1, 3)
    assert torch.allclose(samples.seg_probs.sum(2), torch.ones(3, 1, S, S, S), atol=1e-5)
    assert samples.seg_probs.std(0).max() > 0  # the passes differ
    # without dropout every pass equals the deterministic prediction
    plain = tiny3d(name, dropout=0.0).eval()
    det = torch.softmax(plain(x).seg_logits, 1)
    s = mc_sample(plain, x, passes=2, cached=True)
    assert torch.allclose(s.seg_probs[0], det, atol=1e-6) and torch.allclose(s.seg_probs[1], det, atol=1e-6)


def test_mtunet3d_last_decoder_placement_repeats_only_the_head() -> None:
    """"last_decoder" + "classifier": one Dropout3d; the cached sampler runs every up block once on the volume
    and the rest on the T repeated rows; ``decode_rest(decode_prefix(f)) == decode(f)`` with the same masks."""
    torch.manual_seed(0)
    model = tiny3d("mtunet3d", dropout=0.5, dropout_placement=("last_decoder", "classifier")).eval()
    assert sum(isinstance(m, nn.Dropout3d) for m in model.modules()) == 1
    x = torch.rand(1, 1, S, S, S)
    rows: list[int] = []
    for up in model.ups:
        up.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    s = mc_sample(model, x, passes=4, cached=True)
    assert rows == [1] * len(model.ups) and s.seg_probs.std(0).max() > 0
    with enable_mc_dropout(model):
        feats = model.encode(x)
        state = model.decode_prefix(feats)
        torch.manual_seed(3)
        a = model.decode(feats)
        torch.manual_seed(3)
        b = model.decode_rest(state)
    torch.testing.assert_close(b.seg_logits, a.seg_logits)
    torch.testing.assert_close(b.cls_logits, a.cls_logits)


def test_mttu3d_tokens_are_the_bottleneck_voxels_and_classifier_is_gap_gmp() -> None:
    torch.manual_seed(0)
    model = tiny3d("mttu3d", in_channels=1, num_classes=2).eval()
    seen: list[tuple[int, ...]] = []
    model.transformer[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    x = torch.rand(2, 1, 8, S, S)
    feats = model.encode(x)
    f4, f5 = feats[-2], feats[-1]
    assert f4.shape == (2, 32, 1, 2, 2)  # 8 * width channels at 1/8 of each axis (Eq. 1)
    n_voxels = math.prod(f4.shape[2:])
    assert seen == [(2, n_voxels, 128)]  # N = (D/8)(H/8)(W/8) tokens of d = 32 * width
    assert f5.shape == (2, 128, 1, 2, 2)
    # Eq. 10-12: Concat(GAP(F4), GMP(F4), GAP(F5), GMP(F5)) -> FC 32w - 2w - K
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2 * 32 + 2 * 128, 128), (128, 8), (8, 2)]
    pooled = torch.cat([f4.mean((2, 3, 4)), f4.amax((2, 3, 4)), f5.mean((2, 3, 4)), f5.amax((2, 3, 4))], 1)
    assert torch.allclose(model.decode(feats).cls_logits, model.classifier(pooled), atol=1e-6)
    # the max-pooled half matters: +50 at one voxel of F5 and -50 at another keeps GAP, moves GMP
    bumped = [f.clone() for f in feats]
    bumped[-1][:, :, 0, 0, 0] += 50.0
    bumped[-1][:, :, 0, 1, 1] -= 50.0
    assert torch.allclose(bumped[-1].mean((2, 3, 4)), f5.mean((2, 3, 4)), atol=1e-4)
    assert not torch.allclose(model.decode(bumped).cls_logits, model.decode(feats).cls_logits)
    # position embedding: learned for a 16^3 crop (2^3 tokens), interpolated for other grids
    assert model.pos.shape == (1, 8, 128)
    assert model.position_embedding((1, 2, 2)).shape == (1, 4, 128)
    assert model.position_embedding((2, 2, 2)) is model.pos


def _double_conv(cin: int, cout: int) -> int:
    return 27 * cin * cout + 2 * cout + 27 * cout * cout + 2 * cout  # two bias-free convs + BN (weight, bias)


def test_parameter_counts_match_closed_forms() -> None:
    w, depth, cin, k, q = 4, 2, 3, 2, 4
    chs = [w * 2**i for i in range(depth + 1)]
    enc = _double_conv(cin, chs[0]) + sum(_double_conv(chs[i - 1], chs[i]) for i in range(1, depth + 1))
    dec = sum(8 * chs[i + 1] * chs[i] + chs[i] + _double_conv(2 * chs[i], chs[i]) for i in range(depth))
    head = chs[0] * q + q
    cls = chs[-1] * 4 * w + 4 * w + 4 * w * k + k
    model = build("mtunet3d", width=w, depth=depth, in_channels=cin, num_classes=k, seg_classes=q)
    assert count_parameters(model) == enc + dec + head + cls

    m = tiny3d("mttu3d", num_classes=2, transformer_layers=2)
    d = 32 * 4
    per_layer = 12 * d * d + 13 * d  # 2 LayerNorms, MSA (W_Q, W_K, W_V, W_O + biases), MLP d-4d-d
    assert count_parameters(m.transformer) == 2 * per_layer
    assert m.pos.numel() == (S // 8) ** 3 * d  # E_pos: N x d
    assert count_parameters(m.proj) == 27 * 32 * d + d  # the 3x3x3 linear projection 8w -> d
    # a 3D model has more weights than the 2D one of the same size (3x3x3 vs 3x3 kernels)
    m2 = build("mttu", width=4, depth=3, transformer_layers=2, heads=4, image_size=S, num_classes=2)
    assert count_parameters(m) > count_parameters(m2)


def test_default_sizes() -> None:
    """The paper's size: 16 channels after the stem, 128 at F_4, d = 512, L = 4, 128^3 crops."""
    m = build("mttu3d", in_channels=4, num_classes=2, seg_classes=4)
    assert m.stem.out_channels == 16 and m.proj.in_channels == 128 and m.proj.out_channels == 512
    assert len(m.transformer) == 4 and m.pos.shape == (1, 16**3, 512)
    assert [lin.out_features for lin in m.classifier if isinstance(lin, nn.Linear)] == [512, 32, 2]
    assert m.seg_head.out_channels == 4
