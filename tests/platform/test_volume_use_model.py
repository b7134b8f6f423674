"""`medloop predict` and `medloop evaluate` with a volume model, as a user runs them (typer's CliRunner): a tiny
LIDC-like CT campaign whose round 1 is trained for real (in-process, compute.num_workers = 0) and registered in a
real MLflow store as the champion. Predicted masks are checked against an independent forward pass written with
nibabel and torch alone, on the input's own grid and orientation; the ledger file is hashed before and after."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "rounds"))

from support import tiny_campaign, write_config  # noqa: E402
from volume_files import ct_case, lidc_like, save  # noqa: E402

from medloop.cli import app  # noqa: E402

runner = CliRunner()
CLASSES = ["benign", "malignant"]
VOLUME = [8, 16, 16]
SPACING = (0.7, 0.8, 1.25)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(campaign, config file, checkpoint): one real volume round, registered as version 1 = champion."""
    from medloop.data.ingest import ingest
    from medloop.ledger import Ledger, Round
    from medloop.rounds.orchestrator import run_round

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("volume-use-model")
    lidc_like(root / "data", n=24)
    c = tiny_campaign(
        root / "camp", data={"source": "generic", "path": str(root / "data"), "classes": CLASSES,
                             "volume_size": VOLUME, "image_size": 16, "unlabeled_fraction": 0.0},
        model={"width": 4, "depth": 3}, uncertainty={"mc_passes": 3},
        compute={"num_workers": 0, "epochs": 25, "batch_size": 4, "lr": 1e-2, "score_batch_size": 4},
        selection={"budget": 2, "max_ece": 1.0, "min_val_dice": 0.0})
    ingest(c, "generic")
    assert run_round(c).status == "done"
    led = Ledger.open(c.ledger)
    with led.reading() as s:
        ckpt = s.get(Round, 1).checkpoint_path
    led.close()
    yield c, write_config(c, root / "campaign.toml"), ckpt
    torch.set_num_threads(threads)


def _sha(c) -> str:
    return hashlib.sha256(Path(c.ledger.removeprefix("sqlite:///")).read_bytes()).hexdigest()


def _reference(ckpt: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independent deterministic prediction of one CT file: (class probabilities, mask in the file's own voxel
    order). Canonical RAS+ with nibabel, the lung window (L -600, W 1500), axes (Z, Y, X), trilinear to the
    model's grid and back, threshold 0.5, empty when the model predicts no lesion on its grid."""
    from medloop.trainers.checkpoints import load_model

    img = nib.load(str(path))
    canon = nib.as_closest_canonical(img)
    hu = canon.get_fdata(dtype=np.float32)
    x = np.clip((hu - (-600.0 - 750.0)) / 1500.0, 0.0, 1.0).transpose(2, 1, 0)[None, None]
    model, _ = load_model(ckpt)
    grid = x.shape[2:]
    with torch.no_grad():
        small = torch.nn.functional.interpolate(torch.from_numpy(np.ascontiguousarray(x)), size=VOLUME,
                                                mode="trilinear", align_corners=False)
        out = model(small)
        probs = torch.softmax(out.cls_logits, 1)[0].numpy()
        fg_small = 1 - torch.softmax(out.seg_logits, 1)[:, :1]
        fg = torch.nn.functional.interpolate(fg_small, size=grid, mode="trilinear", align_corners=False)[0, 0].numpy()
    mask = (fg >= 0.5).astype(np.uint8) if (fg_small > 0.5).any() else np.zeros(grid, np.uint8)
    canonical_xyz = mask.transpose(2, 1, 0)
    # back to the file's orientation: flip the axes nibabel flipped (the test files only flip, never permute)
    flips = [ax for ax in range(3) if np.sign(img.affine[ax, ax]) != np.sign(canon.affine[ax, ax])]
    return probs, np.flip(canonical_xyz, axis=flips).copy() if flips else canonical_xyz


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as fh:
        return {r["name"]: r for r in csv.DictReader(fh)}


def _new_cases(folder: Path) -> dict[str, Path]:
    """Cases the campaign has never seen: RAS, LPS-oriented (x and y flipped in the file) and a large one."""
    files = {}
    for i, (name, malignant, shape) in enumerate([("ras", True, (10, 12, 6)), ("other", False, (10, 12, 6)),
                                                   ("big", True, (20, 18, 9))]):
        hu, _ = ct_case(100 + i, shape, malignant)
        files[name] = save(folder / f"{name}.nii.gz", hu.astype(np.int16), SPACING)
    hu, _ = ct_case(103, (10, 12, 6), True)
    lps = nib.Nifti1Image(hu.astype(np.int16), np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0]))
    nib.save(lps, str(folder / "lps.nii.gz"))
    files["lps"] = folder / "lps.nii.gz"
    return files


def test_predict_volumes_on_their_own_grid_and_orientation(trained, tmp_path: Path) -> None:
    c, cfg, ckpt = trained
    files = _new_cases(tmp_path / "in")
    good = files["ras"].read_bytes()
    (tmp_path / "in" / "trunc.nii.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "in" / "notes.txt").write_text("not a volume")
    before = _sha(c)
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "--config", str(cfg), "--out", str(out),
                                 "--mc-passes", "1", "--overlays"])
    assert result.exit_code == 0, result.output
    assert "predicted 4 volume(s)" in result.output and "trunc.nii.gz" in result.output
    assert _sha(c) == before  # predict only reads
    rows = _rows(out / "predictions.csv")
    assert set(rows) == set(files)
    lesions = 0
    for name, path in files.items():
        probs, ref = _reference(ckpt, path)
        written = nib.load(str(out / "masks" / f"{name}.nii.gz"))
        source = nib.load(str(path))
        assert written.shape == source.shape  # the input's own grid ...
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)  # ... and orientation
        mask = np.asarray(written.dataobj)
        assert mask.dtype == np.uint8 and np.array_equal(mask, ref), name
        row = rows[name]
        assert row["class"] == CLASSES[int(probs.argmax())]
        assert float(row["p_malignant"]) == pytest.approx(float(probs[1]), abs=1e-5)
        assert int(row["lesion_voxels"]) == int(mask.sum())
        assert float(row["lesion_volume_mm3"]) == pytest.approx(mask.sum() * np.prod(SPACING), rel=1e-5)
        assert row["shape"] == "x".join(map(str, source.shape)) and row["mask"] == f"masks/{name}.nii.gz"
        assert (out / "overlays" / f"{name}.png").is_file() and 0 <= int(row["overlay_slice"]) < source.shape[2]
        lesions += int(mask.any())
    assert lesions >= 2  # the check above compared real masks, not only empty ones
    with (out / "unreadable.csv").open(newline="") as fh:
        bad = {Path(r["file"]).name: r["reason"] for r in csv.DictReader(fh)}
    assert list(bad) == ["trunc.nii.gz"] and "truncated" in bad["trunc.nii.gz"]
    run = json.loads((out / "run.json").read_text())
    assert run["volume_size"] == VOLUME and run["predicted"] == 4


def test_predict_volume_refusals(trained, tmp_path: Path) -> None:
    c, cfg, _ = trained
    hu, _ = ct_case(7)
    save(tmp_path / "two_seq.nii.gz", np.stack([hu, hu], axis=-1).astype(np.int16))  # 2 sequences, model takes 1
    result = runner.invoke(app, ["predict", str(tmp_path / "two_seq.nii.gz"), "--config", str(cfg), "--out",
                                 str(tmp_path / "o1")])
    assert result.exit_code == 1 and "has 2 sequence(s); the model takes 1" in result.output
    assert not (tmp_path / "o1").exists()
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "a.png").write_bytes(b"\x89PNG")
    result = runner.invoke(app, ["predict", str(tmp_path / "pngs" / "a.png"), "--config", str(cfg), "--out",
                                 str(tmp_path / "o2")])
    assert result.exit_code == 1 and "takes volumes" in result.output and "a.png" in result.output
    result = runner.invoke(app, ["predict", str(tmp_path / "two_seq.nii.gz"), "--config", str(cfg), "--ray",
                                 "--out", str(tmp_path / "o3")])
    assert result.exit_code == 1 and "leave out --ray" in result.output

    from medloop.predict_volumes import list_volume_inputs

    for site in ("a", "b"):  # the same case name in two folders: the second is named, not dropped silently
        save(tmp_path / site / "case1.nii.gz", hu.astype(np.int16))
    cases, bad = list_volume_inputs([tmp_path / "a", tmp_path / "b"], None)
    assert [k.name for k in cases] == ["case1"] and "another input is also named 'case1'" in bad[0].problem


def test_evaluate_volumes_agrees_with_predict_and_reports_mm(trained, tmp_path: Path) -> None:
    from medloop.trainers import metrics as M

    c, cfg, _ = trained
    data = tmp_path / "data"
    truth = {}
    rows = ["image,label"]
    for i in range(6):
        malignant = i % 2 == 0
        hu, mask = ct_case(200 + i, (12, 12, 8), malignant)
        name = f"Q{i}_R_1"
        save(data / "images" / f"{name}.nii.gz", hu.astype(np.int16), SPACING)
        save(data / "masks" / f"{name}.nii.gz", mask * (2 if i == 1 else 1), SPACING)  # region 2: still lesion
        rows.append(f"{name}.nii.gz,{'malignant' if malignant else 'benign'}")
        truth[name] = mask
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    before = _sha(c)
    out = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", str(data), "--format", "generic", "--config", str(cfg), "--out",
                                 str(out), "--bootstrap", "200", "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert _sha(c) == before and "already in campaign" not in result.output
    pred = tmp_path / "pred"
    assert runner.invoke(app, ["predict", str(data), "--config", str(cfg), "--out", str(pred),
                               "--mc-passes", "1"]).exit_code == 0
    cases = {Path(r["file"]).name.removesuffix(".nii.gz"): r for r in csv.DictReader((out / "cases.csv").open())}
    assert set(cases) == set(truth)
    dices, hds = [], []
    for name, mask in truth.items():
        p = np.asarray(nib.load(str(pred / "masks" / f"{name}.nii.gz")).dataobj)
        d, h = M.dice(p, mask), M.hd95(p, mask, SPACING)
        got = cases[name]
        assert float(got["dice"]) == pytest.approx(d, rel=1e-5)  # cases.csv: 6 significant digits
        if h is not None and np.isfinite(h):
            assert float(got["hd95"]) == pytest.approx(h, rel=1e-5)  # millimetres from the spacing
        dices.append(d)
        hds.append(h)
    m = json.loads((out / "report.json").read_text())["metrics"]
    assert m["n"] == 6 and m["n_lesion"] == 6
    assert m["metrics"]["dice"]["value"] == pytest.approx(float(np.mean(dices)), abs=1e-9)
    assert "Masks compared on each volume's own grid" in (out / "report.md").read_text()
    assert "| hd95 |" in (out / "report.md").read_text() and "lesion cases (mm)" in (out / "report.md").read_text()

    # the campaign's own cases are spotted (ingest's identity), and a 2D format is refused for a volume model
    seen = runner.invoke(app, ["evaluate", str(c.data.path), "--format", "generic", "--config", str(cfg), "--out",
                               str(tmp_path / "seen"), "--bootstrap", "50", "--no-mlflow"])
    assert seen.exit_code == 0, seen.output
    assert "24 of 24 case(s) are already in campaign" in seen.output
    refused = runner.invoke(app, ["evaluate", str(data), "--format", "busi", "--config", str(cfg), "--out",
                                  str(tmp_path / "r2"), "--no-mlflow"])
    assert refused.exit_code == 1 and "is a volume model" in refused.output and "--format generic" in refused.output


def test_predict_a_dicom_series(trained, tmp_path: Path) -> None:
    """A DICOM series folder (one slice per file) is one volume: its mask lies on the series' canonical grid."""
    from dicom_files import series

    from medloop.data.dicom_series import read_dicom_series

    _, cfg, _ = trained
    folder = series(tmp_path / "scans" / "series1", n=6)
    result = runner.invoke(app, ["predict", str(folder), "--config", str(cfg), "--out", str(tmp_path / "o"),
                                 "--mc-passes", "1"])
    assert result.exit_code == 0, result.output
    assert "predicted 1 volume(s)" in result.output
    volume = read_dicom_series(folder)
    written = nib.load(str(tmp_path / "o" / "masks" / "series1.nii.gz"))
    assert written.shape == volume.shape3d
    np.testing.assert_allclose(written.affine, volume.affine, atol=1e-5)
    assert _rows(tmp_path / "o" / "predictions.csv")["series1"]["spacing_mm"] == "x".join(
        f"{s:g}" for s in volume.spacing)
