"""Multi-region masks (``data.regions``), for real. Volumes: 3D phantoms whose masks hold oedema (1), core (2)
and enhancing tumour (3) are ingested with their labels, a round trains a model with one segmentation class per
region (in-process), Ray Data scores the pool into region label maps with each voxel's region probability, UPS
keeps a voxel in a pseudo-mask only when its region is confident and certain, and the report gives Dice per
region and per BraTS composite. The Label Studio pieces (one brush label per region) are checked against their
definitions: a pre-annotation, an annotator's answer and the partial label sync makes of it, then through a real
Label Studio. Images: label PNG masks through a round, ``medloop predict`` and export + re-ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from support import on_labelstudio, run_round_on_one_thread, synced_slice_labels, tiny_campaign

from medloop.data.imagestore import ImageStore, region_prob_path
from medloop.data.ingest import ingest
from medloop.data.phantoms3d import write_phantom_folder
from medloop.ledger import Label, Ledger, Prediction, Round

REGIONS = ["oedema", "core", "enhancing"]
GROUPS = {"whole_tumour": [1, 2, 3], "tumour_core": [2, 3], "enhancing_tumour": [3]}
VOLUME = [16, 16, 16]


def _campaign(root: Path, data: Path, **sections):
    return tiny_campaign(
        root, data={"source": "generic", "path": str(data), "classes": ["idh_mutant", "idh_wildtype"],
                    "volume_size": VOLUME, "image_size": 16, "regions": REGIONS, "region_groups": GROUPS,
                    "unlabeled_fraction": 0.3},
        model={"width": 8, "depth": 2}, uncertainty={"mc_passes": 3},
        compute={"num_workers": 0, "epochs": 15, "batch_size": 4, "lr": 3e-3, "score_batch_size": 4},
        selection={"budget": 2, "tau_c": 0.5, "tau_u": 0.5, "max_ece": 1.0, "min_val_dice": 0.0, "mask_gate": 1.0,
                   "pixel_tau_u": 0.5}, **sections)


def test_a_multi_region_volume_round(tmp_path: Path) -> None:
    write_phantom_folder(tmp_path / "data", n=24, size=16)
    c = _campaign(tmp_path / "camp", tmp_path / "data")
    ingest(c, "generic")
    out = run_round_on_one_thread(c)
    assert out.status == "done", out
    ledger, store = Ledger.open(c.ledger), ImageStore(c.store)
    with ledger.reading() as s:
        truth = [store.load_label_map(lab.mask_path) for lab in s.scalars(select(Label).where(Label.kind == "truth"))]
        preds = list(s.scalars(select(Prediction)))
        pseudo = [lab for lab in s.scalars(select(Label).where(Label.kind == "pseudo")) if lab.mask_path]
        ckpt = s.get(Round, 1).checkpoint_path
    ledger.close()
    assert set(np.unique(np.concatenate([t.ravel() for t in truth]))) == {0, 1, 2, 3}  # labels kept at ingest

    from medloop.trainers.checkpoints import load_model

    model, meta = load_model(ckpt)
    assert model.seg_head.out_channels == 4 and meta["regions"]["enhancing_tumour"] == [3]
    for p in preds:  # the pool's label maps and each voxel's region probability, as the model gives them
        labels = store.load_label_map(p.mask_path)
        assert labels.shape == tuple(VOLUME) and labels.max() <= 3
        conf = store.load_array(region_prob_path(p.umap_path))
        assert conf.shape == tuple(VOLUME) and float(conf.min()) >= 0.25 - 1e-3  # max of 4 probabilities
    assert max(int(store.load_label_map(p.mask_path).max()) for p in preds) >= 2  # regions, not one lesion
    assert pseudo  # the loop below checks real pseudo-masks
    for lab in pseudo:  # UPS per voxel: kept only where the region is confident and certain
        kept = store.load_label_map(lab.mask_path)
        ignored = store.load_array(lab.ignore_path).astype(bool)
        pred = next(p for p in preds if p.sample_id == lab.sample_id)
        conf = store.load_array(region_prob_path(pred.umap_path)).astype(np.float32)
        unc = store.load_array(pred.umap_path)
        assert np.array_equal(~ignored, (unc <= c.selection.pixel_tau_u) & (conf >= c.selection.tau_c))
        assert np.array_equal(kept, store.load_label_map(pred.mask_path))
    for name in [*REGIONS, *GROUPS]:  # per region in the round's validation metrics (whole lesion: val_dice)
        assert f"dice_{name}" in out.metrics or name == "enhancing", name  # IDH-mutant phantoms have no rim

    from medloop.trainers.evaluate import evaluate_checkpoint

    test = evaluate_checkpoint(c, c.ledger, ckpt)
    assert set(test["regions"]) == {*REGIONS, *GROUPS}
    whole = test["regions"]["whole_tumour"]
    assert whole["n"] == test["n_lesion"] and whole["dice"] == pytest.approx(test["dice"], abs=1e-9)

    # medloop evaluate / predict on new phantoms: regions per case on each volume's own grid
    import json

    import nibabel as nib

    from medloop.evaluation import run_evaluate
    from medloop.predict import run_predict

    write_phantom_folder(tmp_path / "new", n=6, seed=7, size=16)
    report = run_evaluate(c, tmp_path / "new", "generic", model=ckpt, out=tmp_path / "eval", n_boot=50,
                          log_mlflow=False)
    m = json.loads((tmp_path / "eval" / "report.json").read_text())["metrics"]
    assert set(m["regions"]) == {*REGIONS, *GROUPS} and report.metrics["n"] == 6
    assert m["regions"]["whole_tumour"]["dice"] == pytest.approx(m["metrics"]["dice"]["value"], abs=1e-9)
    assert "## Per region" in (tmp_path / "eval" / "report.md").read_text()
    run_predict(c, [tmp_path / "new"], model=ckpt, out=tmp_path / "pred", passes=1)
    maps = [np.asarray(nib.load(str(f)).dataobj) for f in sorted((tmp_path / "pred" / "masks").glob("*.nii.gz"))]
    assert len(maps) == 6 and max(int(x.max()) for x in maps) >= 2 and max(int(x.max()) for x in maps) <= 3


def test_region_brushes_round_trip_through_label_studio_results() -> None:
    """Pre-annotation -> annotator's result -> the label map sync writes: region ids survive both ways."""
    from medloop.config import parse_campaign
    from medloop.labeling.project import brush_labels, label_config
    from medloop.labeling.pull import BadAnnotation, parse_annotation
    from medloop.labeling.push import prediction_results
    from medloop.labeling.volume_slices import NOT_ANNOTATED, partial_label_map
    from medloop.rounds.oracle import annotation_result

    c = parse_campaign({"name": "r", "root": "/tmp/r", "data": {"source": "generic", "classes": ["a", "b"],
                                                          "regions": REGIONS}}, "t")
    assert brush_labels(c) == REGIONS
    config = label_config(c, volumes=True)
    assert all(f'<Label value="{r}"' in config for r in REGIONS)
    mask = np.zeros((12, 10), np.uint8)
    mask[2:9, 2:8], mask[4:7, 3:6], mask[5, 4] = 1, 2, 3
    pre = prediction_results("b", mask, brush_labels(c), 7)
    assert [r["value"]["brushlabels"] for r in pre if r["type"] == "brushlabels"] == [[r] for r in REGIONS]
    name, back = parse_annotation({"result": pre}, ["a", "b"], 12, 10, brush_labels(c))
    assert name == "b" and np.array_equal(back, mask)
    name, answered = parse_annotation({"result": annotation_result(c, "a", mask)}, ["a", "b"], 12, 10,
                                      brush_labels(c))
    assert np.array_equal(answered, mask)
    partial = partial_label_map(answered, 3, 5)
    assert np.array_equal(partial[3], mask) and (np.delete(partial, 3, axis=0) == NOT_ANNOTATED).all()
    wrong = [dict(r, value={**r["value"], "brushlabels": ["Lesion"]}) if r["type"] == "brushlabels" else r
             for r in pre]
    with pytest.raises(BadAnnotation, match="expected one of 'oedema', 'core', 'enhancing'"):
        parse_annotation({"result": wrong}, ["a", "b"], 12, 10, brush_labels(c))


def test_unknown_region_labels_and_colour_masks_are_bad_files(tmp_path: Path) -> None:
    from PIL import Image

    from medloop.data.errors import IngestError

    write_phantom_folder(tmp_path / "data", n=6, size=16)
    two = _campaign(tmp_path / "two", tmp_path / "data")
    two = two.model_copy(update={"data": two.data.model_copy(update={"regions": ["oedema", "core"],
                                                                      "region_groups": None})})
    with pytest.raises(IngestError, match=r"mask holds label\(s\) \[3\]; data.regions names 2 region"):
        ingest(two, "generic")
    images = _disk_folder(tmp_path / "img", 4)
    Image.fromarray(np.zeros((24, 24, 3), np.uint8), "RGB").save(images / "masks" / "case1.png")
    c = tiny_campaign(tmp_path / "c2d", data={"source": "generic", "path": str(images), "regions": ["rim", "core"],
                                              "classes": ["small", "large"]})
    with pytest.raises(IngestError, match=r"case1.png.*a region mask must be one channel of labels"):
        ingest(c, "generic")


def _disk_folder(root: Path, n: int, size: int = 24) -> Path:
    """A 2D generic folder: grey images of a bright disk (rim, label 1) around a brighter core (label 2), label
    PNG masks, classes by the disk's size."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["image,label"]
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        r = int(rng.integers(5, 9))
        cy, cx = rng.integers(r + 1, size - r - 1, 2)
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        mask = np.where(d2 <= (r // 2) ** 2, 2, np.where(d2 <= r * r, 1, 0)).astype(np.uint8)
        image = np.clip(40 + 80 * (mask == 1) + 170 * (mask == 2) + rng.normal(0, 8, mask.shape), 0, 255)
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
        rows.append(f"case{i}.png,{'large' if r >= 7 else 'small'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_multi_region_round_on_images_and_the_export_round_trip(tmp_path: Path) -> None:
    """2D too: label PNG masks are ingested with their labels, a round trains a three-class head, pseudo-masks
    and predictions keep the regions, `medloop predict` writes label PNGs and export + re-ingest gives the
    same labels back."""
    from PIL import Image

    from medloop.export import export_campaign
    from medloop.predict import run_predict

    data = _disk_folder(tmp_path / "img", 40)
    c = tiny_campaign(tmp_path / "c2d", data={"source": "generic", "path": str(data), "regions": ["rim", "core"],
                                              "classes": ["small", "large"], "image_size": 24,
                                              "unlabeled_fraction": 0.3, "no_lesion_class": None},
                      model={"width": 8, "depth": 2}, uncertainty={"mc_passes": 3},
                      compute={"num_workers": 0, "epochs": 15, "batch_size": 8, "lr": 3e-3, "score_batch_size": 8},
                      selection={"budget": 2, "tau_c": 0.5, "tau_u": 0.5, "max_ece": 1.0, "min_val_dice": 0.0,
                                 "mask_gate": 1.0, "pixel_tau_u": 0.5})
    ingest(c, "generic")
    out = run_round_on_one_thread(c)
    assert out.status == "done", out
    assert {"dice_rim", "dice_core"} <= set(out.metrics)
    ledger, store = Ledger.open(c.ledger), ImageStore(c.store)
    with ledger.reading() as s:
        truth = [store.load_label_map(lab.mask_path) for lab in s.scalars(select(Label).where(Label.kind == "truth"))]
        preds = list(s.scalars(select(Prediction)))
        ckpt = s.get(Round, 1).checkpoint_path
    ledger.close()
    assert all(set(np.unique(t)) == {0, 1, 2} for t in truth)  # the labels, kept at ingest
    assert max(int(store.load_label_map(p.mask_path).max()) for p in preds) == 2
    assert all(store.path(region_prob_path(p.umap_path)).exists() for p in preds)

    run_predict(c, [data / "images"], model=ckpt, out=tmp_path / "pred", passes=1)
    from medloop.evaluation import run_evaluate

    run_evaluate(c, data, "generic", model=ckpt, out=tmp_path / "eval", n_boot=20, log_mlflow=False)
    import json

    regions = json.loads((tmp_path / "eval" / "report.json").read_text())["metrics"]["regions"]
    assert set(regions) == {"rim", "core"} and regions["rim"]["n"] == 40 and regions["rim"]["dice"] is not None
    lo, hi = regions["rim"]["dice_ci"]  # a bootstrap interval per region, as for the whole lesion
    report = (tmp_path / "eval" / "report.md").read_text()
    assert lo <= regions["rim"]["dice"] <= hi and f"[{lo:.3f}, {hi:.3f}]" in report
    assert "HD95 in px" in report
    written = [np.asarray(Image.open(f)) for f in sorted((tmp_path / "pred" / "masks").glob("*.png"))]
    assert len(written) == 40 and max(int(w.max()) for w in written) == 2  # label PNGs, not 0 / 255

    export_campaign(c, tmp_path / "export")
    again = tiny_campaign(tmp_path / "again", data={**c.data.model_dump(), "path": str(tmp_path / "export"),
                                                    "unlabeled_fraction": 0.0},
                          model={"width": 8, "depth": 2})
    ingest(again, "generic")
    led2, store2 = Ledger.open(again.ledger), ImageStore(again.store)
    with led2.reading() as s:
        back = sorted(store2.load_label_map(lab.mask_path).tobytes()
                      for lab in s.scalars(select(Label).where(Label.kind == "human", Label.mask_path.is_not(None))))
    led2.close()
    ledger = Ledger.open(c.ledger)
    with ledger.reading() as s:
        human = sorted(store.load_label_map(lab.mask_path).tobytes()
                       for lab in s.scalars(select(Label).where(Label.kind == "human", Label.active.is_(True),
                                                                Label.mask_path.is_not(None))))
    ledger.close()
    assert back == human and human


@pytest.mark.labelstudio
def test_a_multi_region_round_through_label_studio(labelstudio_server, tmp_path: Path) -> None:
    """A real Label Studio project with one brush label per region: the oracle paints the truth's regions on
    each pushed slice there, and sync brings back each slice's region labels as a partial label map."""
    from medloop.labeling.volume_slices import NOT_ANNOTATED

    write_phantom_folder(tmp_path / "data", n=16, size=16)
    c = on_labelstudio(labelstudio_server, "regions", _campaign(tmp_path / "unused", tmp_path / "data"),
                       selection={"budget": 4, "tau_c": 0.999, "tau_u": 0.0})  # no pseudo-label: the whole budget
    ingest(c, "generic")
    out = run_round_on_one_thread(c)
    assert out.status == "done", out
    rows, truth = synced_slice_labels(c)
    store = ImageStore(c.store)
    assert len(rows) >= 3  # the budget, annotated in Label Studio and synced
    labels_seen = set()
    for task, label in rows:
        partial = store.load_label_map(label.mask_path)
        k = task.slice_index
        assert (np.delete(partial, k, axis=0) == NOT_ANNOTATED).all()
        assert np.array_equal(partial[k], store.load_label_map(truth[task.sample_id])[k])  # regions, not 0/1
        labels_seen |= set(np.unique(partial[k]).tolist())
    assert labels_seen & {2, 3}  # a slice with core or enhancing tumour came back with its region
