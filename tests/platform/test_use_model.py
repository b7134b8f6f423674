"""`medloop predict` and `medloop evaluate` as a user runs them (typer's CliRunner), on a tiny campaign whose
round 1 is trained for real (plain in-process trainer, compute.num_workers = 0) and registered in a real
MLflow store as version 1 with the champion alias. Outputs are checked against an independent forward pass
of the checkpoint; the ledger file is hashed before and after (predict and evaluate only read it)."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rounds"))

from support import ingest_synthetic, tiny_campaign, tiny_score_samples, write_config  # noqa: E402

from medloop.cli import app  # noqa: E402
from medloop.data.imagestore import prob_at  # noqa: E402
from medloop.data.synthetic import generate  # noqa: E402
from medloop.trainers.dataset import fit_image  # noqa: E402
from medloop.trainers.inference import MEASURES  # noqa: E402

runner = CliRunner()
CLASSES = ["normal", "benign", "malignant"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(campaign, config file, folder): one real round, registered as version 1 = champion."""
    from medloop.ledger import Ledger, Round
    from medloop.rounds.orchestrator import run_round

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("use-model")
    c = tiny_campaign(root / "camp", data={"n_samples": 60, "unlabeled_fraction": 0.0, "difficulty": 0.0},
                      model={"width": 8, "depth": 2}, uncertainty={"mc_passes": 3},
                      compute={"num_workers": 0, "epochs": 15, "batch_size": 8, "lr": 1e-2, "score_batch_size": 4})
    ingest_synthetic(c)
    assert run_round(c, extras={"score_samples": tiny_score_samples}).status == "done"
    led = Ledger.open(c.ledger)
    with led.reading() as s:
        ckpt = s.get(Round, 1).checkpoint_path
    led.close()
    yield c, write_config(c, root / "campaign.toml"), root, ckpt
    torch.set_num_threads(threads)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ledger_file(c) -> Path:
    return Path(c.ledger.removeprefix("sqlite:///"))


def _reference(ckpt: str, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Independent deterministic prediction: (class probabilities, native-size mask)."""
    from medloop.trainers.checkpoints import load_model

    model, meta = load_model(ckpt)
    x = torch.from_numpy(np.array(fit_image(image, int(meta["image_size"]), 1)[None])).float() / 255
    with torch.no_grad():
        out = model(x)
    probs = torch.softmax(out.cls_logits, 1)[0].numpy()
    fg = 1 - torch.softmax(out.seg_logits, 1)[0, 0].numpy()
    mask = (prob_at(fg, image.shape[:2]) >= 0.5).astype(np.uint8)
    if probs.argmax() == CLASSES.index("normal") or not (fg > 0.5).any():
        mask[:] = 0
    return probs, mask


def _write_dicom(path: Path, pixels: np.ndarray, frames: int = 1) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _minmax(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.float64)
    return np.rint((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8)


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def _inputs(folder: Path) -> dict[str, np.ndarray]:
    """A folder of mixed inputs; returns the grey images the model should see, by output name."""
    ph = generate(6, 64, seed=123, difficulty=0.0)
    lesion = next(i for i, lab in enumerate(ph.labels) if lab != "normal")
    other = next(i for i, lab in enumerate(ph.labels) if lab != "normal" and i != lesion)
    folder.mkdir(parents=True)
    seen: dict[str, np.ndarray] = {}
    odd = np.asarray(Image.fromarray(ph.images[lesion]).resize((77, 50), Image.Resampling.BILINEAR))
    Image.fromarray(odd).save(folder / "odd.png")
    seen["odd"] = odd
    rgb = np.stack([ph.images[other], ph.images[other] // 2, 255 - ph.images[other]], axis=2)
    Image.fromarray(rgb, "RGB").save(folder / "rgb.png")
    seen["rgb"] = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    Image.fromarray(seen["rgb"]).save(folder / "rgb_as_grey.png")
    deep = ph.images[other].astype(np.uint16) * 200 + 1000
    Image.fromarray(deep).save(folder / "deep16.png")
    assert Image.open(folder / "deep16.png").mode.startswith("I")
    seen["deep16"] = _minmax(deep)
    Image.fromarray(seen["deep16"]).save(folder / "deep_as_8bit.png")
    _write_dicom(folder / "scan.dcm", deep[:40, :56])
    seen["scan"] = _minmax(deep[:40, :56])
    _write_dicom(folder / "cine.dcm", np.stack([deep, deep]), frames=2)
    good = (folder / "odd.png").read_bytes()
    (folder / "trunc.png").write_bytes(good[: len(good) // 2])
    (folder / "sub").mkdir()
    Image.fromarray(ph.images[lesion]).save(folder / "sub" / "nested.bmp")
    seen["sub/nested"] = ph.images[lesion]
    (folder / "readme.txt").write_text("not an image")
    return seen


def test_predict_a_mixed_folder(trained, tmp_path: Path) -> None:
    c, cfg, _, ckpt = trained
    seen = _inputs(tmp_path / "in")
    ledger_before = _sha(_ledger_file(c))
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "--config", str(cfg), "--out", str(out),
                                 "--mc-passes", "1", "--overlays"])
    assert result.exit_code == 0, result.output
    assert "medloop-tiny version 1 (champion), round 1" in result.output
    assert _sha(_ledger_file(c)) == ledger_before
    rows = _rows(out / "predictions.csv")
    assert set(rows) == {"odd", "rgb", "rgb_as_grey", "deep16", "deep_as_8bit", "scan", "sub/nested"}
    with (out / "unreadable.csv").open(newline="") as fh:
        bad = {Path(r["file"]).name: r["reason"] for r in csv.DictReader(fh)}
    assert set(bad) == {"trunc.png", "cine.dcm"}
    assert "truncated" in bad["trunc.png"] and "multi-frame DICOM (2 frames)" in bad["cine.dcm"]
    assert "trunc.png" in result.output and "cine.dcm" in result.output
    for name, image in seen.items():
        h, w = image.shape
        mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}, name
        assert (rows[name]["width"], rows[name]["height"]) == (str(w), str(h))
        assert int(rows[name]["lesion_area_px"]) == int((mask > 0).sum())
        assert np.asarray(Image.open(out / "overlays" / f"{name}.png")).shape == (h, 2 * w, 3)
        probs, ref_mask = _reference(ckpt, image)
        assert [float(rows[name][f"p_{k}"]) for k in CLASSES] == pytest.approx(probs.tolist(), abs=1e-5), name
        assert np.array_equal(mask > 0, ref_mask > 0), name
        assert rows[name]["class"] == CLASSES[int(probs.argmax())]
    assert (np.asarray(Image.open(out / "masks" / "odd.png")) > 0).any()  # a lesion at 77x50
    assert "RGB image converted to grey" in rows["rgb"]["notes"] and rows["odd"]["notes"] == ""
    assert "rescaled to 8 bits" in rows["deep16"]["notes"] and "rescaled to 8 bits" in rows["scan"]["notes"]
    for a, b in (("rgb", "rgb_as_grey"), ("deep16", "deep_as_8bit")):
        assert all(rows[a][f"p_{k}"] == rows[b][f"p_{k}"] for k in CLASSES)
    assert rows["odd"]["std"] == "" and rows["odd"]["mutual_info"] == ""  # T = 1: no MC spread
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["version"] == "1" and run["model"]["round"] == 1 and run["predicted"] == 7
    assert run["unreadable"] == 2 and run["passes"] == 1


def test_predict_with_ray_data_matches_the_in_process_path(trained, tmp_path: Path) -> None:
    """``--ray``: the same folder through Ray Data (a real local Ray on 127.0.0.1, one actor) gives the same
    predictions.csv, byte-identical masks and overlays, and the same unreadable files, in input order."""
    import ray

    c, cfg, _, _ = trained
    _inputs(tmp_path / "in")
    base = ["predict", str(tmp_path / "in"), "--config", str(cfg), "--mc-passes", "1", "--overlays"]
    ledger_before = _sha(_ledger_file(c))
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "local")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "ray"), "--ray", "--ray-actors", "1"])
    assert result.exit_code == 0, result.output
    assert "Ray Data, 1 actor(s)" in result.output and "trunc.png" in result.output
    assert not ray.is_initialized()  # the local Ray this command started is shut down
    assert _sha(_ledger_file(c)) == ledger_before
    local, dist = tmp_path / "local", tmp_path / "ray"
    with (local / "predictions.csv").open(newline="") as a, (dist / "predictions.csv").open(newline="") as b:
        rows_a, rows_b = list(csv.reader(a)), list(csv.reader(b))
    assert rows_a[0] == rows_b[0] and len(rows_a) == len(rows_b) == 8  # header + 7 readable, same order
    head = rows_a[0]
    floats = {i for i, h in enumerate(head) if h.startswith("p_") or h in (*MEASURES, "lesion_fraction")}
    for ra, rb in zip(rows_a[1:], rows_b[1:]):  # file, name, size, class, lesion area, notes: equal
        assert [ra[i] for i in range(len(head)) if i not in floats] == \
            [rb[i] for i in range(len(head)) if i not in floats], ra[1]
        for i in floats:  # probabilities and measures: equal up to float32 rounding ("" = undefined)
            assert (ra[i] == rb[i] == "") or float(rb[i]) == pytest.approx(float(ra[i]), abs=1e-5), (ra[1], head[i])
    for sub in ("masks", "overlays"):
        files_a = sorted(p.relative_to(local / sub) for p in (local / sub).rglob("*.png"))
        assert len(files_a) == 7 and files_a == sorted(p.relative_to(dist / sub) for p in (dist / sub).rglob("*.png"))
        for f in files_a:
            assert (local / sub / f).read_bytes() == (dist / sub / f).read_bytes(), f
    assert (local / "unreadable.csv").read_text() == (dist / "unreadable.csv").read_text()
    assert {Path(r["file"]).name for r in csv.DictReader((dist / "unreadable.csv").open(newline=""))} == {
        "trunc.png", "cine.dcm"}
    run = json.loads((dist / "run.json").read_text())
    assert run["engine"] == "Ray Data, 1 actor(s)" and run["predicted"] == 7 and run["unreadable"] == 2
    assert json.loads((local / "run.json").read_text())["engine"] == "in-process"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ray")]  # no staged folder left


def test_predict_with_mc_passes_and_a_checkpoint_folder(trained, tmp_path: Path) -> None:
    c, cfg, _, ckpt = trained
    img = generate(1, 32, seed=5, difficulty=0.0).images[0]
    Image.fromarray(img).save(tmp_path / "one.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(tmp_path / "one.png"), "--config", str(cfg), "--out", str(out),
                                 "--model", ckpt])
    assert result.exit_code == 0, result.output
    row = _rows(out / "predictions.csv")["one"]
    assert float(row["std"]) >= 0 and float(row["mutual_info"]) >= 0  # uncertainty.mc_passes = 3
    assert abs(sum(float(row[f"p_{k}"]) for k in CLASSES) - 1) < 1e-5
    run = json.loads((out / "run.json").read_text())
    assert run["passes"] == 3 and run["model"]["version"] is None and run["model"]["checkpoint"] == ckpt


def test_predict_refusals(trained, tmp_path: Path) -> None:
    c, cfg, _, _ = trained
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "img.png")
    base = ["predict", str(tmp_path / "img.png"), "--config", str(cfg)]

    result = runner.invoke(app, [*base, "--out", str(tmp_path / "o1"), "--model", "7"])
    assert result.exit_code == 1
    assert "medloop-tiny has no version 7; versions: 1" in result.output and not (tmp_path / "o1").exists()
    result = runner.invoke(app, [*base, "--out", str(tmp_path / "o1"), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "no such folder" in result.output

    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, [*base, "--out", str(out)])
    assert result.exit_code == 1 and "not empty (use --force" in result.output and (out / "keep.txt").exists()
    result = runner.invoke(app, [*base, "--out", str(out), "--force"])
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "masks" / "img.png").exists()

    inside = tmp_path / "inside"  # --out inside the input folder: an earlier output is not read as input
    inside.mkdir()
    (inside / "img.png").write_bytes((tmp_path / "img.png").read_bytes())
    for extra in ([], ["--force"]):
        result = runner.invoke(app, ["predict", str(inside), "--config", str(cfg), "--out", str(inside / "preds"),
                                     "--mc-passes", "1", *extra])
        assert result.exit_code == 0, result.output
        assert set(_rows(inside / "preds" / "predictions.csv")) == {"img"}

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes((tmp_path / "img.png").read_bytes()[:30])
    result = runner.invoke(app, ["predict", str(broken), "--config", str(cfg), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 1 and "none of the 1 image file(s) could be read" in result.output
    assert "a.png" in result.output and not (tmp_path / "o2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o2")]  # the temporary folder is gone
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    result = runner.invoke(app, ["predict", str(empty), "--config", str(cfg), "--out", str(tmp_path / "o3")])
    assert result.exit_code == 1 and "no image file" in result.output


def _write_generic(root: Path, cases: list[tuple[str, np.ndarray, np.ndarray | None, str | None]]) -> None:
    """A generic-layout dataset: images/<name>.png, masks/<name>.png (0/255), labels.csv."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for name, image, mask, label in cases:
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        if mask is not None:
            Image.fromarray(mask * 255).save(root / "masks" / f"{name}.png")
        if label is not None:
            rows.append((f"{name}.png", label))
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("image", "label"), *rows])


def _new_cases() -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """18 phantoms the campaign never saw (another seed), at a native 56x48."""
    ph = generate(18, 64, seed=77, difficulty=0.0)
    return [(f"c{i:02d}", np.asarray(Image.fromarray(img).resize((56, 48), Image.Resampling.BILINEAR)),
             np.asarray(Image.fromarray(m).resize((56, 48), Image.Resampling.NEAREST)), lab)
            for i, (img, m, lab) in enumerate(zip(ph.images, ph.masks, ph.labels))]


def _campaign_case(campaign) -> tuple[np.ndarray, np.ndarray, str]:
    """A case the campaign holds (image, mask, class), read back from its store."""
    from sqlalchemy import select

    from medloop.data.imagestore import ImageStore
    from medloop.ledger import Label, Ledger, Sample

    led = Ledger.open(campaign.ledger)
    with led.reading() as s:
        sample, label = s.execute(select(Sample, Label).join(Label, Label.sample_id == Sample.id).where(
            Label.kind == "truth", Label.mask_path.is_not(None)).limit(1)).one()
    led.close()
    store = ImageStore(campaign.store)
    return store.load_image(sample.image_path), store.load_mask(label.mask_path), str(label.class_name)


def test_evaluate_matches_evaluation_metrics_at_native_size(trained, tmp_path: Path) -> None:
    from medloop.trainers.evaluate import evaluation_metrics

    c, cfg, _, ckpt = trained
    cases = _new_cases()
    _write_generic(tmp_path / "data", cases)
    ledger_before = _sha(_ledger_file(c))
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", str(tmp_path / "data"), "--format", "generic", "--config", str(cfg),
                                 "--out", str(out), "--bootstrap", "300", "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert _sha(_ledger_file(c)) == ledger_before and "already in campaign" not in result.output
    # the same numbers from an independent forward pass, masks compared at 56x48 by evaluation_metrics
    refs = [_reference(ckpt, image) for _, image, _, _ in cases]
    ref = evaluation_metrics({"probs": np.stack([r[0] for r in refs]),
                              "label": np.array([CLASSES.index(lab) for *_, lab in cases]),
                              "pred_mask": np.stack([r[1] for r in refs]),
                              "mask": np.stack([m for _, _, m, _ in cases])}, 3, CLASSES)
    m = json.loads((out / "report.json").read_text())["metrics"]
    assert (m["n"], m["n_lesion"], m["n_no_lesion"]) == (18, ref["n_lesion"], ref["n_no_lesion"]) and ref["n_lesion"]
    for key in ("dice", "iou", "hd95", "empty_rate", "accuracy", "f1", "auc", "ece", "brier"):
        e = m["metrics"][key]
        assert e["value"] == pytest.approx(ref[key], abs=1e-6), key  # float32 probabilities
        assert e["lo"] <= e["value"] <= e["hi"], key
    assert m["confusion"] == ref["confusion"]
    for name in CLASSES:
        assert m["per_class"][name]["recall"]["value"] == ref["per_class"][name]["recall"]
    for f in ("report.md", "report.json", "reliability.png", "confusion_matrix.png", "cases.csv"):
        assert (out / f).is_file(), f
    assert "| dice |" in (out / "report.md").read_text()
    with (out / "cases.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 18


def test_evaluate_logs_to_mlflow_and_reports_seen_and_bad_cases(trained, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    c, cfg, _, _ = trained
    dup = _campaign_case(c)
    cases: list = [*_new_cases()[:6], ("dup", *dup), ("unlabeled", dup[0], None, None)]
    data = tmp_path / "data"
    _write_generic(data, cases)
    good = (data / "images" / "c00.png").read_bytes()
    (data / "images" / "zz_trunc.png").write_bytes(good[: len(good) // 2])
    ledger_before = _sha(_ledger_file(c))
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", str(data), "--format", "generic", "--config", str(cfg), "--out", str(out),
                                 "--bootstrap", "100"])
    assert result.exit_code == 0, result.output
    assert _sha(_ledger_file(c)) == ledger_before
    assert "zz_trunc.png" in result.output and "1 of 7 case(s) are already in campaign 'tiny'" in result.output
    rep = json.loads((out / "report.json").read_text())
    m = rep["metrics"]
    assert m["n"] == 7 and [b["file"] for b in rep["bad"]] == [str(data / "images" / "zz_trunc.png")]
    client = MlflowClient(tracking_uri=c.tracking_uri, registry_uri=c.tracking_uri)
    run = client.get_run(rep["run"]["mlflow_run_id"])
    assert run.data.tags["medloop.model_name"] == "medloop-tiny" and run.data.tags["medloop.model_version"] == "1"
    assert run.data.tags["medloop.model_round"] == "1" and run.data.tags["medloop.evaluation"] == str(data.resolve())
    assert run.data.metrics["eval_dice"] == pytest.approx(m["metrics"]["dice"]["value"])
    assert run.data.metrics["eval_dice_ci_lo"] == pytest.approx(m["metrics"]["dice"]["lo"])
    assert run.data.params["bootstrap_n_boot"] == "100" and run.info.status == "FINISHED"
    assert {"report.json", "report.md", "reliability.png", "cases.csv"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)}


def test_evaluate_refuses_a_missing_campaign_and_a_bad_format(trained, tmp_path: Path) -> None:
    _, _, _, ckpt = trained
    cfg = tmp_path / "c.toml"
    missing = tmp_path / "no-campaign"
    cfg.write_text(f'name = "ghost"\nroot = "{missing}"\n[data]\nimage_size = 32\n[model]\nwidth = 8\ndepth = 2\n')
    (tmp_path / "d" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "d" / "images" / "a.png")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "d"), "--format", "generic", "--config", str(cfg),
                                 "--model", ckpt, "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "campaign 'ghost'" in result.output and "no campaign ledger" in result.output
    assert not missing.exists() and not (tmp_path / "r").exists()
    result = runner.invoke(app, ["evaluate", str(tmp_path / "d"), "--format", "nifti", "--config", str(cfg),
                                 "--model", ckpt, "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "expected one of busi, generic" in result.output
