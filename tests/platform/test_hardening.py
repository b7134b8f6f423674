"""Bad input and settings that used to corrupt data or make the loop do nothing silently
(docs/hardening.md lists each one with the test here that shows what medloop does now)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from medloop.config import Campaign, ConfigError, load_campaign, parse_campaign
from medloop.data.errors import DataError, FileError, IngestError
from medloop.data.ingest import ingest
from medloop.data.records import decode_image, read_image, read_mask, rescale_intensity
from medloop.ledger import Ledger, Sample

# ---- helpers ---------------------------------------------------------------------------------


def _campaign(root: Path, **data: Any) -> Campaign:
    base: dict[str, Any] = {"image_size": 16, "n_samples": 30, "unlabeled_fraction": 0.5}
    base.update(data)
    return parse_campaign({"name": "t", "root": str(root), "data": base})


def _samples(campaign: Campaign) -> int:
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        n = s.scalar(select(func.count()).select_from(Sample))
    ledger.close()
    return int(n or 0)


def _gradient(lo: float, hi: float, dtype: Any, h: int = 24, w: int = 32) -> np.ndarray:
    return np.linspace(lo, hi, h * w).reshape(h, w).astype(dtype)


# ---- image depth: 16-bit, float, signed ------------------------------------------------------


def test_16bit_png_is_rescaled_min_max_not_saturated(tmp_path: Path) -> None:
    values = _gradient(1000, 60000, np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    image, mode, notes = decode_image(tmp_path / "a.png")
    assert mode == "I;16" and image.dtype == np.uint8 and notes == []
    assert (image.min(), image.max()) == (0, 255)
    assert (image == 255).mean() < 0.01  # convert("L") used to put 99 % of the pixels at 255
    expected = np.rint((values.astype(float) - 1000) / 59000 * 255).astype(np.uint8)
    assert np.array_equal(image, expected)


def test_float_tiff_in_unit_range_is_not_stored_black(tmp_path: Path) -> None:
    Image.fromarray(_gradient(0.0, 1.0, np.float32), "F").save(tmp_path / "f.tif")
    image = read_image(tmp_path / "f.tif")
    assert (image.min(), image.max()) == (0, 255) and len(np.unique(image)) > 200  # was all 0


def test_signed_tiff_is_rescaled(tmp_path: Path) -> None:
    values = _gradient(-1024, 3071, np.int32)  # CT-like Hounsfield units
    Image.fromarray(values, "I").save(tmp_path / "s.tif")
    image = read_image(tmp_path / "s.tif", channels=3)
    expected = np.rint((values.astype(float) + 1024) / 4095 * 255).astype(np.uint8)
    assert image.shape == (24, 32, 3) and np.array_equal(image[..., 0], expected)
    assert (image == 255).mean() < 0.01  # convert("L") clipped every value above 255 (most of them)


def test_intensity_window_maps_lo_hi_and_counts_what_it_clips() -> None:
    values = np.array([[-100.0, 0.0, 500.0], [1000.0, 1500.0, 4000.0]])
    out, notes = rescale_intensity(values, (0.0, 1000.0), "x.tif")
    assert out.tolist() == [[0, 0, 128], [255, 255, 255]]
    assert len(notes) == 1 and "x.tif" in notes[0] and "3 of 6 pixel(s)" in notes[0]
    assert "data.intensity_window [0, 1000]" in notes[0]
    _, inside = rescale_intensity(np.array([[0.0, 1000.0]]), (0.0, 1000.0))
    assert inside == []


def test_constant_and_non_finite_deep_images() -> None:
    out, notes = rescale_intensity(np.full((4, 4), 7.0), None, "c.tif")
    assert out.max() == 0 and "constant image" in notes[0] and "c.tif" in notes[0]
    with pytest.raises(FileError, match="n.tif: 1 pixel"):
        rescale_intensity(np.array([[0.0, np.nan]]), None, "n.tif")


def test_deep_images_through_ingest_report_the_rule_and_clipping(lay, tmp_path: Path) -> None:
    root = lay.write_generic(tmp_path / "d", n=6)
    Image.fromarray(_gradient(0, 4000, np.uint16)).save(root / "images" / "case0.png")
    nan = _gradient(0.0, 1.0, np.float32)
    nan[0, 0] = np.nan
    Image.fromarray(nan, "F").save(root / "images" / "case1.tif")
    (root / "images" / "case1.png").unlink()
    (root / "masks" / "case1.png").unlink()
    camp = _campaign(tmp_path / "c", intensity_window=[0, 2000], min_image_size=16)
    report = ingest(camp, "generic", root, skip_bad=True)
    assert [b.path.endswith("case1.tif") and "NaN or infinite" in b.problem for b in report.bad] == [True]
    assert report.added == 5
    text = "\n".join(report.warnings)
    assert "1 image(s) deeper than 8 bits (I;16 x1) rescaled to 8 bits: data.intensity_window [0, 2000]" in text
    assert "case0.png" in text and "outside data.intensity_window" in text


def test_intensity_window_key_is_checked() -> None:
    with pytest.raises(ConfigError, match="data.intensity_window: expected"):
        load_campaign(None, data={"intensity_window": [10, 1]})
    assert load_campaign(None, data={"intensity_window": [-1000, 400]}).data.intensity_window == [-1000, 400]


# ---- decompression bomb ----------------------------------------------------------------------


def test_decompression_bomb_is_a_named_bad_file(lay, tmp_path: Path, monkeypatch) -> None:
    root = lay.write_generic(tmp_path / "d", n=6)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(root / "images" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 > 2 x 1000: PIL refuses it; 24x32 pass
    with pytest.raises(FileError, match="huge.png: image too large"):
        read_image(root / "images" / "huge.png")
    with pytest.raises(FileError, match="huge.png: mask too large"):
        read_mask(root / "images" / "huge.png")
    camp = _campaign(tmp_path / "c")
    with pytest.raises(IngestError) as exc:
        ingest(camp, "generic", root)
    assert "huge.png" in str(exc.value) and "decompression-bomb limit" in str(exc.value)
    report = ingest(camp, "generic", root, skip_bad=True)
    assert [b.path.endswith("huge.png") for b in report.bad] == [True] and report.added == 6


# ---- labels.csv ------------------------------------------------------------------------------


def test_labels_csv_with_excel_bom_is_read(lay, tmp_path: Path) -> None:
    root = lay.write_generic(tmp_path / "d", n=6, masks=False)
    text = (root / "labels.csv").read_text()
    (root / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    report = ingest(_campaign(tmp_path / "c"), "generic", root)
    assert report.added == 6 and report.classes == {"normal": 2, "benign": 2, "malignant": 2}


def test_labels_csv_not_utf8_is_named(lay, tmp_path: Path) -> None:
    root = lay.write_generic(tmp_path / "d", n=3, masks=False)
    (root / "labels.csv").write_bytes("image,label\ncase0.png,b\xe9nin\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"labels.csv: not UTF-8 text"):
        ingest(_campaign(tmp_path / "c"), "generic", root)


def test_conflicting_label_rows_are_bad_and_name_both_rows(lay, tmp_path: Path) -> None:
    root = lay.write_generic(tmp_path / "d", n=6)  # case1 is benign (line 3)
    with (root / "labels.csv").open("a") as fh:
        fh.write("images/case1.png,malignant\n")  # line 8: the same image, another class
        fh.write("case2.png,malignant\n")  # line 9: the same answer again is harmless
    camp = _campaign(tmp_path / "c")
    with pytest.raises(IngestError) as exc:
        ingest(camp, "generic", root)
    assert len(exc.value.bad) == 1
    bad = exc.value.bad[0]
    assert bad.path.endswith("labels.csv:3,8 (case1.png, images/case1.png)")
    assert "conflicting labels" in bad.problem and "line 3 'benign'" in bad.problem
    assert "line 8 'malignant'" in bad.problem
    report = ingest(camp, "generic", root, skip_bad=True)
    assert report.added == 5 and report.classes == {"normal": 2, "benign": 1, "malignant": 2}


# ---- tiny images -----------------------------------------------------------------------------


def test_tiny_image_is_named_in_the_warnings(lay, tmp_path: Path) -> None:
    root = lay.write_generic(tmp_path / "d", n=4, masks=False)
    Image.fromarray(np.full((1, 1), 90, np.uint8)).save(root / "images" / "tiny.png")
    assert Campaign().data.min_image_size == 32
    report = ingest(_campaign(tmp_path / "c", min_image_size=16), "generic", root)
    small = [w for w in report.warnings if "min_image_size" in w]
    assert len(small) == 1 and "tiny.png: image 1x1 is smaller than data.min_image_size = 16" in small[0]
    assert "upscaled to 16x16" in small[0] and report.added == 5


# ---- synthetic re-ingest with other settings -------------------------------------------------


def test_synthetic_reingest_at_another_size_is_refused(tmp_path: Path) -> None:
    first = _campaign(tmp_path / "c", image_size=16)
    assert ingest(first, "synthetic").added == 30
    again = ingest(first, "synthetic")
    assert (again.added, again.duplicates) == (0, 30)
    bigger = _campaign(tmp_path / "c", image_size=32)
    with pytest.raises(DataError) as exc:
        ingest(bigger, "synthetic")
    msg = str(exc.value)
    assert "already holds 30 synthetic phantom(s)" in msg and "synthetic:seed=0/0" in msg
    assert "stored at 16x16 px, data.image_size is now 32" in msg and "data.seed" in msg
    assert _samples(first) == 30
    other_mix = _campaign(tmp_path / "c", image_size=16, class_mix=[0.6, 0.2, 0.2])
    with pytest.raises(DataError, match="class_mix"):
        ingest(other_mix, "synthetic")
    new_seed = _campaign(tmp_path / "c", image_size=16, seed=1, n_samples=6)
    assert ingest(new_seed, "synthetic").added == 6  # another seed: new phantoms, welcome


# ---- settings --------------------------------------------------------------------------------


def test_unknown_model_name_is_refused_at_load() -> None:
    with pytest.raises(ConfigError) as exc:
        load_campaign(None, model={"name": "unet"})
    assert ('model.name = "unet": unknown model; known: jrl, mttu, mttu3d, mtunet, mtunet3d, tim_upa, uml'
            in str(exc.value))


def test_a_volume_model_checks_the_volume_size_against_its_down_sampling() -> None:
    load_campaign(None, model={"name": "mttu3d"}, data={"volume_size": [16, 48, 48]})  # 2**3 divides each
    with pytest.raises(ConfigError) as exc:
        load_campaign(None, model={"name": "mtunet3d"}, data={"volume_size": [20, 48, 64]})
    assert ('data.volume_size = [20, 48, 64] cannot be divided by 2**4 = 16 on every axis, the down-sampling of '
            'model "mtunet3d" (its own depth 4, model.depth unset); use data.volume_size = [16, 48, 64]'
            in str(exc.value))


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        ({}, 100, 'data.image_size = 100 cannot be divided by 2**4 = 16, the down-sampling of model "mtunet" '
                   "(its own depth 4, model.depth unset); use data.image_size = 96 or 112"),
        ({"name": "jrl"}, 48, "2**5 = 32"),
        ({"depth": 6}, 96, "(model.depth = 6); use data.image_size = 64 or 128"),
        ({"depth": 2, "options": {"depth": 3}}, 20, "(model.options.depth = 3)"),
    ],
)
def test_image_size_the_model_cannot_divide_is_refused_at_load(model: dict, size: int, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_campaign(None, model=model, data={"image_size": size})
    assert expected in str(exc.value)


@pytest.mark.parametrize(("model", "size"), [({"name": "jrl"}, 64), ({"depth": 2}, 100), ({"name": "uml"}, 24)])
def test_image_size_the_model_divides_is_accepted(model: dict, size: int) -> None:
    load_campaign(None, model=model, data={"image_size": size})


def test_class_mix_is_needed_only_for_synthetic() -> None:
    c = load_campaign(None, data={"source": "generic", "classes": ["benign", "malignant"]})
    assert c.data.classes == ["benign", "malignant"]
    with pytest.raises(ConfigError, match="data.class_mix"):
        load_campaign(None, data={"source": "synthetic", "classes": ["benign", "malignant"]})


def _bool_keys() -> list[tuple[str, str]]:
    out = []
    for section, field in Campaign.model_fields.items():
        for key, sub in getattr(field.annotation, "model_fields", {}).items():
            if sub.annotation is bool:
                out.append((section, key))
    return out


def test_every_boolean_key_is_found() -> None:
    assert ("compute", "use_gpu") in _bool_keys() and len(_bool_keys()) >= 9


@pytest.mark.parametrize("value", ["yes", "true", 1, 0, "off"])
@pytest.mark.parametrize(("section", "key"), _bool_keys())
def test_booleans_are_strict(tmp_path: Path, section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        load_campaign(None, **{section: {key: value}})
    assert f"{section}.{key}: Input should be true or false" in str(exc.value)
    assert getattr(load_campaign(None, **{section: {key: True}}), section).__getattribute__(key) is True


def test_quoted_boolean_in_a_file_names_the_key(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[compute]\nuse_gpu = "yes"\n')
    with pytest.raises(ConfigError) as exc:
        load_campaign(f)
    assert str(f) in str(exc.value) and "compute.use_gpu: Input should be true or false" in str(exc.value)
    assert "'yes'" in str(exc.value)


# ---- a round that selects nothing says why ---------------------------------------------------


def _decide(n: int = 120, confidence: float = 0.5, **kw: Any) -> dict[str, np.ndarray]:
    from medloop.selection import PseudoLabelParams, decide_pseudo_labels

    scores = {"pred_class": np.ones(n), "confidence": np.full(n, confidence), "std": np.full(n, 0.01),
              "seg_uncertainty": np.full(n, 0.01)}
    policy = kw.pop("policy", "ups")
    return decide_pseudo_labels(scores, np.zeros(n, bool), np.array([5, 5, 5]), PseudoLabelParams(policy=policy),
                                **kw)


def _sel(**kw: Any) -> Any:
    base = dict(tau_c=0.9, tau_u=0.05, measure="std", mask_gate=0.05, budget=16, acquisition="hybrid")
    base.update(kw)
    return SimpleNamespace(**base)


def test_nothing_selected_reason_names_the_cause() -> None:
    from medloop.rounds.steps.select import nothing_selected_reason

    n = 120
    human, none_eligible, acq = np.zeros(n, bool), np.zeros(n, bool), np.ones(n)
    low = nothing_selected_reason(_sel(budget=0), _decide(n, 0.5, allow_masks=False), human, none_eligible, acq,
                                  "gate open", "validation Dice 0.2 < min_val_dice 0.5")
    assert low.startswith("no pseudo-label: all 120 unlabeled pool cases below tau_c 0.9")
    assert "no pseudo-mask: segmentation gate (validation Dice 0.2 < min_val_dice 0.5)" in low
    assert low.endswith("nothing queued: selection.budget = 0")
    gate = nothing_selected_reason(_sel(), _decide(n, 0.99, allow_pseudo=False), human, none_eligible, acq,
                                   "validation ECE 0.3100 > max_ece 0.2500", "")
    assert gate.startswith("no pseudo-label: calibration gate (validation ECE 0.3100 > max_ece 0.2500)")
    assert "pseudo-mask" not in gate and "none of the 120 unlabeled pool cases is eligible" in gate
    none = nothing_selected_reason(_sel(), _decide(n, 0.99, policy="none"), human, np.ones(n, bool),
                                   np.full(n, np.nan), "", "")
    assert none.startswith('no pseudo-label: policy none (selection.policy = "none")')
    assert 'selection.acquisition = "hybrid" gave no finite score for the 120 eligible cases' in none
    empty = nothing_selected_reason(_sel(), _decide(2), np.ones(2, bool), np.zeros(2, bool), np.ones(2), "", "")
    assert "no unlabeled case in the scored pool" in empty


# ---- files named in the campaign resolve from the campaign file's folder ----------------------------------


def test_files_named_in_the_campaign_resolve_from_its_folder(lay, tmp_path: Path, monkeypatch) -> None:
    """A round scheduled from another working directory (cron, systemd) finds ``data.path``,
    ``model.weights``, ``labeling.token_file`` and ``labeling.document_root`` where the campaign
    file says, relative to that file; absolute paths and ``~`` stay as they are."""
    from medloop.config import load_campaign
    from medloop.data.ingest import ingest
    from medloop.labeling.client import read_token
    from medloop.labeling.server import document_root
    from medloop.trainers.plain import LoopSettings

    project = tmp_path / "project"
    lay.write_generic(project / "data" / "cases", n=6)
    (project / "secrets").mkdir()
    (project / "secrets" / "ls.token").write_text("tok-from-file\n")
    cfg = project / "campaign.toml"
    cfg.write_text('name = "paths"\n[data]\nsource = "generic"\npath = "data/cases"\nimage_size = 32\n'
                   '[model]\nweights = "weights/start.pt"\n'
                   '[labeling]\ntoken_env = "MEDLOOP_TEST_UNSET_TOKEN"\ntoken_file = "secrets/ls.token"\n'
                   'document_root = "served"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MEDLOOP_TEST_UNSET_TOKEN", raising=False)
    campaign = load_campaign(cfg)
    assert campaign.resolve_path("/abs/x.pt") == Path("/abs/x.pt")
    assert campaign.resolve_path("~/x.pt") == Path.home() / "x.pt"
    report = ingest(campaign, "generic")
    assert report.path == str(project / "data" / "cases") and report.added == 6
    assert read_token(campaign) == "tok-from-file"
    assert document_root(campaign) == (project / "served").resolve()
    assert LoopSettings.from_campaign(campaign).init_weights == str(project / "weights" / "start.pt")
    assert not (elsewhere / "data").exists() and list(elsewhere.iterdir()) == []
