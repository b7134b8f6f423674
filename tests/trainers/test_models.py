"""Seed model families: shapes, gradients, encode/decode split, dropout placement, weights, UML loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medloop.registry import UnknownNameError
from medloop.trainers.models import MODELS, build, count_parameters
from medloop.trainers.models.base import JointModel, JointOutput
from medloop.trainers.models.weights import WeightsMismatchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["jrl", "mttu", "mtunet", "tim_upa", "uml"]
TINY = dict(width=4, depth=3)
HW = 32


def tiny(name: str, **kw) -> JointModel:
    opts = dict(TINY)
    if name == "mttu":
        opts.update(transformer_layers=1, image_size=HW)
    opts.update(kw)
    return build(name, **opts)


def aux_tensors(aux: dict) -> list[torch.Tensor]:
    out = []
    for v in aux.values():
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += [t for t in v if isinstance(t, torch.Tensor)]
    return out


def full_loss(out: JointOutput) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    loss = (out.cls_logits * torch.randn(out.cls_logits.shape, generator=gen)).sum()
    loss = loss + (out.seg_logits * torch.randn(out.seg_logits.shape, generator=gen)).mean()
    for t in aux_tensors(out.aux):
        loss = loss + (t * torch.randn(t.shape, generator=gen)).mean()
    return loss


def test_registry_lists_all_five_and_rejects_unknown() -> None:
    assert set(NAMES) <= set(MODELS.names())
    with pytest.raises(UnknownNameError, match="unknown model 'nope'.*mtunet"):
        build("nope")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_backward_shapes_and_gradients(name: str, channels: int) -> None:
    torch.manual_seed(0)
    model = tiny(name, in_channels=channels, num_classes=3)
    assert model.default_loss == name
    out = model(torch.rand(2, channels, HW, HW))
    assert out.cls_logits.shape == (2, 3)
    assert out.seg_logits.shape == (2, 2, HW, HW)
    assert out.embedding is not None and out.embedding.shape[0] == 2 and out.embedding.ndim == 2
    full_loss(out).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:10]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_seg_classes_and_wrong_input(name: str) -> None:
    model = tiny(name, seg_classes=3, num_classes=2).eval()
    out = model(torch.rand(1, 1, HW, HW))
    assert out.seg_logits.shape == (1, 3, HW, HW) and out.cls_logits.shape == (1, 2)
    with pytest.raises(ValueError):
        model(torch.rand(1, 3, HW, HW))
    with pytest.raises(ValueError, match="divisible"):
        model(torch.rand(1, 1, HW + 4, HW + 4))


@pytest.mark.parametrize("name", NAMES)
def test_encode_decode_equals_forward_and_encode_is_deterministic(name: str) -> None:
    torch.manual_seed(1)
    model = tiny(name, dropout=0.5, dropout_placement=("bottleneck", "decoder", "classifier"))
    model.train()
    model(torch.rand(2, 1, HW, HW))  # move BN statistics away from their init
    model.eval()
    x = torch.rand(2, 1, HW, HW)
    full = model(x)
    split = model.decode(model.encode(x))
    torch.testing.assert_close(split.cls_logits, full.cls_logits)
    torch.testing.assert_close(split.seg_logits, full.seg_logits)
    # MC mode: only dropout stochastic -> encode identical, decode varies
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.train()
    feats_a, feats_b = model.encode(x), model.encode(x)

    def flat(f):
        return list(f.values() if isinstance(f, dict) else f if isinstance(f, (list, tuple)) else [f])

    for a, b in zip(flat(feats_a), flat(feats_b)):
        torch.testing.assert_close(a, b)
    torch.manual_seed(2)
    d1 = model.decode(feats_a)
    torch.manual_seed(3)
    d2 = model.decode(feats_a)
    assert not torch.allclose(d1.seg_logits, d2.seg_logits)
    assert not torch.allclose(d1.cls_logits, d2.cls_logits)


def dropouts(module: nn.Module) -> tuple[int, int]:
    mods = list(module.modules())
    return sum(type(m) is nn.Dropout for m in mods), sum(type(m) is nn.Dropout2d for m in mods)


@pytest.mark.parametrize("name", NAMES)
def test_dropout_placement(name: str) -> None:
    n1d, n2d = dropouts(tiny(name, dropout_placement=("classifier",)))
    assert n1d >= 1 and n2d == 0
    n1d, n2d_all = dropouts(tiny(name, dropout_placement="decoder"))
    assert n1d == 0 and n2d_all >= 3  # one per decoder level (depth 3)
    _, n2d_one = dropouts(tiny(name, dropout_placement="decoder", dropout_levels=[0]))
    assert 1 <= n2d_one < n2d_all
    n1d, n2d = dropouts(tiny(name, dropout_placement=("bottleneck",)))
    assert (n1d, n2d) == (0, 1)
    n1d, n2d = dropouts(tiny(name, dropout_placement=("last_decoder",)))
    assert (n1d, n2d) == (0, 1)  # the last decoder level only
    assert dropouts(tiny(name, dropout=0.0, dropout_placement=("bottleneck", "decoder", "classifier"))) == (0, 0)
    with pytest.raises(ValueError, match="placement"):
        tiny(name, dropout_placement=("encoder",))
    # encode never runs a dropout module, whatever the placement
    model = tiny(name, dropout=0.5, dropout_placement=("bottleneck", "decoder", "classifier")).eval()
    seen: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(m))
             for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d))]
    feats = model.encode(torch.rand(1, 1, HW, HW))
    assert seen == []
    model.decode(feats)
    assert len(seen) >= 3
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("encoder", ["vgg", "mobilenetv2", "resnet"])
def test_mtunet_encoders_and_weights_round_trip(encoder: str, tmp_path) -> None:
    torch.manual_seed(0)
    a = tiny("mtunet", encoder=encoder, in_channels=3).eval()
    path = tmp_path / "w.pt"
    torch.save(a.state_dict(), path)
    b = tiny("mtunet", encoder=encoder, in_channels=3, weights=str(path)).eval()
    x = torch.rand(1, 3, HW, HW)
    torch.testing.assert_close(a(x).seg_logits, b(x).seg_logits)
    c = tiny("mtunet", encoder=encoder, in_channels=3).eval()
    assert not torch.allclose(a(x).seg_logits, c(x).seg_logits)
    # encoder-only file under a prefix
    enc = tmp_path / "enc.pt"
    torch.save({"state_dict": a.encoder.state_dict()}, enc)
    d = tiny("mtunet", encoder=encoder, in_channels=3, weights=str(enc), weights_prefix="encoder.").eval()
    torch.testing.assert_close(a.encode(x)[-1], d.encode(x)[-1])


def test_mtunet_weights_mismatch_is_clear(tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(tiny("mtunet", in_channels=3).state_dict(), path)
    with pytest.raises(WeightsMismatchError, match="shape mismatches"):
        tiny("mtunet", in_channels=1, weights=str(path))
    with pytest.raises(WeightsMismatchError, match="unexpected keys"):
        tiny("mtunet", in_channels=3, encoder="resnet", weights=str(path))
    with pytest.raises(FileNotFoundError):
        tiny("mtunet", weights=str(tmp_path / "absent.pt"))


def test_mttu_position_embedding_interpolates() -> None:
    model = tiny("mttu", image_size=64).eval()
    assert model(torch.rand(1, 1, HW, HW)).seg_logits.shape == (1, 2, HW, HW)
    assert model(torch.rand(1, 1, 64, 64)).seg_logits.shape == (1, 2, 64, 64)


def test_aux_outputs() -> None:
    out = tiny("tim_upa").eval()(torch.rand(2, 1, HW, HW))
    ds = out.aux["deep_supervision"]
    assert len(ds) >= 2 and all(t.shape[:2] == (2, 2) for t in ds)
    out = tiny("uml").eval()(torch.rand(2, 1, HW, HW))
    assert out.aux["prelim_seg_logits"].shape == (2, 2, HW, HW)
    u = out.aux["seg_uncertainty"]
    assert u.shape == (2, 1, HW, HW) and (u > 0).all() and (u <= 1).all()
    assert len(out.aux["deep_supervision"]) == 4  # s_1..s_4 at depth 3


def test_default_sizes_documented() -> None:
    """docs/models.md quotes the parameter counts of the default sizes."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text()
    for name in ["mtunet"]:  # the cheap one; the others are checked by scripts in the doc
        n = count_parameters(build(name))
        assert f"{n:,}" in doc


# --- UML loss (Ren, Zou et al., UML, MICCAI 2023, Eq. 6-9) -----------------------------------------------------

def uml_batch() -> dict:
    mask = torch.zeros(2, 16, 16, dtype=torch.long)
    mask[0, 4:10, 5:12] = 1
    mask[1, 8:14, 2:6] = 1
    mask[0, :, :3] = 255  # ignored stripe
    mask[1, 12:, :] = 255
    return {"image": torch.rand(2, 1, 16, 16), "label": torch.tensor([2, 0]), "mask": mask}


def perfect_output(batch: dict, scale: float = 200.0) -> JointOutput:
    labels, mask = batch["label"], batch["mask"].clamp(max=1)
    cls = (torch.nn.functional.one_hot(labels.clamp(min=0), 3).float() * 2 - 1) * scale
    seg = (torch.nn.functional.one_hot(mask, 2).permute(0, 3, 1, 2).float() * 2 - 1) * scale
    aux = {"prelim_seg_logits": seg.clone(), "deep_supervision": [seg.clone(), seg.clone()]}
    return JointOutput(cls_logits=cls, seg_logits=seg, aux=aux, embedding=torch.zeros(2, 4))


def uml_loss():
    from medloop.trainers.losses import LOSSES, build_loss

    assert "uml" in LOSSES
    return build_loss("uml", anneal_steps=10)


def test_uml_loss_is_minimal_at_a_perfect_prediction() -> None:
    loss = uml_loss()
    batch = uml_batch()
    best, parts = loss(perfect_output(batch), batch, step=100)
    assert set(parts) >= {"total", "mutual", "cls", "seg"}
    assert float(best) < 0.05
    gen = torch.Generator().manual_seed(0)
    for field in ["cls_logits", "seg_logits", "prelim"]:
        worse = perfect_output(batch)
        target = worse.aux["prelim_seg_logits"] if field == "prelim" else getattr(worse, field)
        target.add_(torch.randn(target.shape, generator=gen) * 400)
        assert float(loss(worse, batch, step=100)[0]) > float(best) + 1e-3, field
    random = JointOutput(torch.randn(2, 3), torch.randn(2, 2, 16, 16), {"prelim_seg_logits": torch.randn(2, 2, 16, 16)})
    assert float(loss(random, batch, step=100)[0]) > float(best) + 0.1


def test_uml_loss_respects_ignore_mask_and_missing_labels() -> None:
    loss = uml_loss()
    batch = uml_batch()
    batch["label"] = torch.tensor([2, -1])
    ref = float(loss(perfect_output(batch, scale=3.0), batch, step=5)[0])
    changed = perfect_output(batch, scale=3.0)
    ignored = (batch["mask"] == 255).unsqueeze(1).expand(-1, 2, -1, -1)
    noise = torch.randn(changed.seg_logits.shape) * 50
    changed.seg_logits[ignored] += noise[ignored]
    changed.aux["prelim_seg_logits"][ignored] += noise[ignored]
    changed.aux["deep_supervision"][0][ignored] += noise[ignored]
    changed.cls_logits[1] += torch.tensor([9.0, -3.0, 4.0])  # sample without a class label
    assert float(loss(changed, batch, step=5)[0]) == pytest.approx(ref, rel=1e-6, abs=1e-6)
    # a change at a labelled pixel does move it
    changed.seg_logits[0, :, 6, 6] += torch.tensor([40.0, -40.0])
    assert float(loss(changed, batch, step=5)[0]) != pytest.approx(ref, rel=1e-6, abs=1e-6)


def test_uml_loss_trains_the_uml_model() -> None:
    torch.manual_seed(0)
    model = tiny("uml")
    loss = uml_loss()
    batch = {"image": torch.rand(2, 1, HW, HW), "label": torch.tensor([1, -1]),
             "mask": torch.randint(0, 2, (2, HW, HW))}
    batch["mask"][1] = 255  # second sample: no mask
    total, parts = loss(model(batch["image"]), batch, step=3)
    assert torch.isfinite(total) and total.requires_grad
    total.backward()
    assert all(p.grad is not None for p in model.parameters())


# --- per-model defaults: heads and depth (unset in the campaign = the model's own) ----------------

DEFAULTS = {  # name -> ((cls_head, seg_head), depth of the paper-sized model)
    "jrl": (("softmax", "softmax"), 5),
    "mttu": (("softmax", "softmax"), 3),
    "mtunet": (("softmax", "softmax"), 4),
    "tim_upa": (("softmax", "softmax"), 4),
    "uml": (("evidential", "evidential"), 3),  # Ren, Zou et al., UML, MICCAI 2023: evidential by design
    "mttu3d": (("softmax", "softmax"), 3),  # volume models: tests/trainers/test_models3d.py
    "mtunet3d": (("softmax", "softmax"), 4),
}


def test_default_heads_and_depth_live_on_the_model_classes() -> None:
    from medloop.trainers.models import default_heads, model_class, model_defaults, resolve_heads

    assert sorted(DEFAULTS) == MODELS.names()
    for name, (heads, depth) in DEFAULTS.items():
        cls = model_class(name)
        assert issubclass(cls, JointModel)
        assert default_heads(name) == heads == tuple(cls.default_heads)
        assert model_defaults(name)["depth"] == depth
    assert model_defaults("mttu")["image_size"] == 256 and model_defaults("mttu3d")["image_size"] == 128
    assert model_defaults("mttu3d")["transformer_layers"] == 4  # inherited from the 2D class
    assert resolve_heads("uml", "softmax", None) == ("softmax", "evidential")  # what the campaign sets wins
    assert resolve_heads("mtunet", None, "evidential") == ("softmax", "evidential")
    with pytest.raises(UnknownNameError):
        default_heads("nope")


@pytest.mark.parametrize("name", NAMES)
def test_campaign_defaults_train_and_score_with_the_models_own_heads_and_depth(name: str) -> None:
    from medloop.config import Campaign
    from medloop.trainers.checkpoints import build_model, model_spec
    from medloop.trainers.plain import LoopSettings, make_loss

    heads, depth = DEFAULTS[name]
    c = Campaign.model_validate({"model": {"name": name, "width": 4, "options": {"image_size": HW}
                                           if name == "mttu" else {}}})
    assert (c.model.cls_head, c.model.seg_head, c.model.depth) == (None, None, None)
    assert "depth" not in model_spec(c)["options"]  # the builder's own depth
    s = LoopSettings.from_campaign(c)
    assert (s.cls_head, s.seg_head) == heads
    assert (s.meta()["cls_head"], s.meta()["seg_head"]) == heads  # the checkpoint meta that scoring reads
    model = build_model(s.model)
    assert model.depth == depth
    loss = make_loss(model, s)
    assert (loss.cls_head, loss.seg_head) == heads  # uml: evidential loss with its KL term


def test_campaign_heads_and_depth_override_the_model() -> None:
    from medloop.config import Campaign
    from medloop.trainers.checkpoints import model_spec
    from medloop.trainers.plain import LoopSettings

    c = Campaign.model_validate({"model": {"name": "uml", "cls_head": "softmax", "depth": 2}})
    assert model_spec(c)["options"]["depth"] == 2
    s = LoopSettings.from_campaign(c)
    assert (s.cls_head, s.seg_head) == ("softmax", "evidential")
    s = LoopSettings.from_campaign(Campaign.model_validate({"model": {"cls_head": "evidential"}}))
    assert (s.cls_head, s.seg_head) == ("evidential", "softmax")


PLACEMENT_SETS = [("decoder", "classifier"), ("last_decoder", "classifier"), ("bottleneck", "decoder"),
                  ("classifier",), ("decoder",)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("placement", PLACEMENT_SETS)
def test_decode_prefix_then_rest_is_decode(name: str, placement: tuple[str, ...]) -> None:
    """``decode_rest(decode_prefix(f)) == decode(f)`` in eval mode, and with the same dropout masks in MC mode."""
    torch.manual_seed(1)
    model = tiny(name, dropout=0.5, dropout_placement=placement)
    model.train()
    model(torch.rand(2, 1, HW, HW))
    model.eval()
    x = torch.rand(2, 1, HW, HW)
    feats = model.encode(x)
    full, split = model.decode(feats), model.decode_rest(model.decode_prefix(feats))
    torch.testing.assert_close(split.cls_logits, full.cls_logits)
    torch.testing.assert_close(split.seg_logits, full.seg_logits)
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout2d)):
            m.train()
    state = model.decode_prefix(feats)  # deterministic: draws no dropout mask
    torch.manual_seed(5)
    a = model.decode(feats)
    torch.manual_seed(5)
    b = model.decode_rest(state)
    torch.testing.assert_close(b.seg_logits, a.seg_logits)
    torch.testing.assert_close(b.cls_logits, a.cls_logits)


def test_mtunet_prefix_stops_at_the_first_active_dropout() -> None:
    """mtunet splits its decoder where the first active dropout sits: the last level for "last_decoder",
    level 0 for "decoder", nothing after the encoder for "bottleneck"; inactive dropout does not count."""
    x = torch.rand(1, 1, HW, HW)
    for placement, start in ((("last_decoder", "classifier"), 2), (("decoder",), 0), (("classifier",), 2),
                             (("bottleneck", "decoder"), None)):
        model = tiny("mtunet", dropout=0.5, dropout_placement=placement).eval()
        for m in model.modules():
            if isinstance(m, (nn.Dropout, nn.Dropout2d)):
                m.train()
        assert model.decode_prefix(model.encode(x))["start"] == start, placement
    model = tiny("mtunet", dropout=0.5, dropout_placement=("decoder",)).eval()  # dropout off: all deterministic
    assert model.decode_prefix(model.encode(x))["start"] == 2


def test_mtunet_gap_gmp_pool_is_average_and_max_of_the_bottleneck() -> None:
    """``cls_pool="gap_gmp"``: the embedding is [mean, max] of the bottleneck per channel (MTTU-Net Eq. 10-11),
    twice as wide as the default GAP; the split decoder still equals the whole one; a bad name is refused."""
    torch.manual_seed(0)
    model = tiny("mtunet", cls_pool="gap_gmp", dropout=0.5, dropout_placement=("decoder", "classifier")).eval()
    x = torch.rand(2, 1, HW, HW)
    feats = model.encode(x)
    bottleneck = feats[-1]
    out = model.decode(feats)
    expected = torch.cat([bottleneck.mean((2, 3)), bottleneck.amax((2, 3))], dim=1)
    torch.testing.assert_close(out.embedding, expected)
    assert out.embedding.shape[1] == 2 * tiny("mtunet").decode(tiny("mtunet").encode(x)).embedding.shape[1]
    torch.testing.assert_close(model.decode_rest(model.decode_prefix(feats)).cls_logits, out.cls_logits)
    with pytest.raises(ValueError, match="cls_pool"):
        tiny("mtunet", cls_pool="attention")
