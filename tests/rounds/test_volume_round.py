"""A round on a volume campaign, for real: NIfTI ingest, the 3D model trained in-process
(``compute.num_workers = 0``), the pool scored by Ray Data with MC dropout, UPS pseudo-labels per volume and
per voxel, the oracle answering the queue, the report and the MLflow model registered with a volume
signature; and a round whose queue goes to a real Label Studio as slice tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select
from support import on_labelstudio, run_round_on_one_thread, synced_slice_labels, tiny_campaign
from volume_files import lidc_like  # tests/ is on sys.path

from medloop.data.imagestore import ImageStore
from medloop.data.ingest import ingest
from medloop.ledger import AnnotationTask, Label, Ledger, Prediction, Round
from medloop.rounds.orchestrator import run_round

VOLUME = [8, 16, 16]


def _campaign(root: Path, data: Path, **sections):
    return tiny_campaign(
        root, data={"source": "generic", "path": str(data), "classes": ["benign", "malignant"], "volume_size": VOLUME,
                    "image_size": 16, "group_pattern": r"^(.+)_R_\d+$"},
        model={"width": 4, "depth": 3}, uncertainty={"mc_passes": 3},
        compute={"num_workers": 0, "epochs": 3, "batch_size": 4, "lr": 1e-2, "score_batch_size": 4},
        selection={"budget": 2, "tau_c": 0.5, "tau_u": 0.5, "max_ece": 1.0, "min_val_dice": 0.0, "mask_gate": 1.0,
                   "pixel_tau_u": 0.5}, **sections)


def test_a_volume_round_runs_end_to_end(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lidc_like(tmp_path / "data", n=24)
        c = _campaign(tmp_path / "camp", tmp_path / "data")
        ingest(c, "generic")
        out = run_round(c)
    finally:
        torch.set_num_threads(threads)
    assert out.status == "done", out
    ledger = Ledger.open(c.ledger)
    store = ImageStore(c.store)
    with ledger.reading() as s:
        rnd = s.get(Round, 1)
        preds = list(s.scalars(select(Prediction)))
        answered = s.scalar(select(func.count()).select_from(Label).where(Label.author == "oracle"))
        completed = s.scalar(select(func.count()).select_from(AnnotationTask)
                             .where(AnnotationTask.state == "completed"))
        pseudo = list(s.scalars(select(Label).where(Label.kind == "pseudo")))
    ledger.close()
    assert rnd is not None and rnd.model_version == "round-1"
    assert preds and all(p.mask_path.endswith(".npy") for p in preds)
    assert store.load_mask(preds[0].mask_path).shape == tuple(VOLUME)
    assert store.load_array(preds[0].umap_path).shape == tuple(VOLUME)
    assert all(0.0 <= p.seg_uncertainty for p in preds if p.seg_uncertainty is not None)
    assert answered == completed >= 2  # the budget (+ audit cases), answered from the dataset's labels
    for label in pseudo:  # provenance, and voxel pseudo-masks on the model's grid
        assert label.author.startswith("round-1/") and label.round_id == 1
        if label.mask_path:
            assert store.load_mask(label.mask_path).shape == tuple(VOLUME)
    assert {"dice", "accuracy", "seg_ece"} <= set(out.metrics)

    import mlflow

    mlflow.set_tracking_uri(c.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/medloop-{c.name}/1")
    x = np.random.default_rng(0).random((2, 1, *VOLUME)).astype(np.float32)
    served = model.predict(x, params={"mc_passes": 3, "seed": 0})
    assert served["mask"].shape == (2, *VOLUME) and served["class_probs"].shape == (2, 2)
    np.testing.assert_allclose(served["class_probs"].sum(1), 1.0, atol=1e-5)
    with pytest.raises(Exception, match=r"does not match expected shape \(-1, 1, 8, 16, 16\)"):  # the signature
        model.predict(np.zeros((1, 1, 16, 16), np.float32))

    from medloop.trainers.inference import VolumeModelError, load_inference_model

    with pytest.raises(VolumeModelError, match=r"is a volume model \(input \[8, 16, 16\].*ML backend takes 2D"):
        load_inference_model(rnd.checkpoint_path, device=torch.device("cpu"), classes=c.data.classes,
                             image_size=16, channels=1, no_lesion_class=None)  # as the ML backend loads it
    volume_model = load_inference_model(rnd.checkpoint_path, device=torch.device("cpu"), classes=c.data.classes,
                                        image_size=16, channels=1, no_lesion_class=None, volumes=True)
    assert volume_model.volume_size == tuple(VOLUME)  # medloop predict / evaluate take its volume files


@pytest.mark.labelstudio
def test_a_volume_round_through_label_studio(labelstudio_server, tmp_path: Path) -> None:
    """The queue goes to a real Label Studio as slice tasks; the oracle annotates them there, as an annotator
    would (the truth on the pushed slice), and sync brings each back as a partial label of its volume."""
    from medloop.labeling.volume_slices import NOT_ANNOTATED

    lidc_like(tmp_path / "data", n=16)
    c = on_labelstudio(labelstudio_server, "volround", _campaign(tmp_path / "unused", tmp_path / "data"))
    ingest(c, "generic")
    out = run_round_on_one_thread(c)
    assert out.status == "done", out
    rows, truth = synced_slice_labels(c)
    store = ImageStore(c.store)
    assert len(rows) >= 2  # the budget, annotated in Label Studio and synced
    for task, label in rows:
        assert task.state == "completed" and task.slice_index is not None
        partial = store.load_label_map(label.mask_path)
        k = task.slice_index
        assert (np.delete(partial, k, axis=0) == NOT_ANNOTATED).all()
        assert np.array_equal(partial[k], store.load_mask(truth[task.sample_id])[k])  # the truth on that slice
