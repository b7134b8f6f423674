"""Volumes in Label Studio: the most informative axial slice of a queued volume is pushed as a 2D task
(slice image, uncertainty slice, the model's class and mask on that slice), and the annotated slice comes
back as a partial label of the volume (that slice annotated, every other voxel 255), which training reads
with the other slices ignored. The round trip runs against a real Label Studio server."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from sqlalchemy import select
from volume_files import lidc_like  # tests/ is on sys.path

from medloop.data.imagestore import ImageStore, prob_map_path
from medloop.data.ingest import ingest
from medloop.labeling.pull import sync
from medloop.labeling.push import push_queue
from medloop.labeling.rle import rle_to_mask
from medloop.labeling.volume_slices import (
    NOT_ANNOTATED,
    annotated_slice,
    context_montage,
    most_informative_slice,
    partial_label_map,
    slice_image,
)
from medloop.ledger import AnnotationTask, Label, Ledger, Prediction, Sample
from medloop.rounds.oracle import annotation_result  # what the labeling UI sends

MODEL = (8, 16, 16)


def test_the_slice_with_the_most_uncertain_lesion_is_chosen() -> None:
    umap = np.full((6, 8, 8), 0.01, np.float32)
    pred = np.zeros((6, 8, 8), np.uint8)
    pred[1:5, 2:5, 2:5] = 1
    fg = pred.astype(np.float32)
    umap[3, 2:5, 2:5] = 0.4  # slice 3's lesion is the uncertain one
    assert most_informative_slice(umap, pred, fg, band=1) == 3
    fg_only = np.zeros((6, 8, 8), np.float32)
    fg_only[5, 4, 4] = 0.05  # no possible lesion anywhere (< 0.1): the likeliest slice
    assert most_informative_slice(umap, np.zeros_like(pred), fg_only, band=1) == 5


def test_partial_label_maps_and_slice_images() -> None:
    m = np.zeros((4, 5), np.uint8)
    m[1:3, 2:4] = 1
    lab = partial_label_map(m, 2, 6)
    assert lab.shape == (6, 4, 5) and (lab[[0, 1, 3, 4, 5]] == NOT_ANNOTATED).all()
    assert np.array_equal(lab[2], m) and np.array_equal(annotated_slice(lab, 2), m)
    assert not annotated_slice(lab, 0).any()
    with pytest.raises(ValueError, match="slice 6 is outside a volume of 6 slices"):
        partial_label_map(m, 6, 6)
    ct = np.linspace(0, 1, 2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    assert np.array_equal(slice_image(ct, 1), (ct[0, 1] * 255 + 0.5).astype(np.uint8))
    z = np.array([[[[-4.0, -3.0, 0.0, 3.0, 5.0]]]], np.float32)  # a z-scored MRI slice: [-3, 3] -> 0..255
    assert slice_image(z, 0).tolist() == [[0, 0, 128, 255, 255]]
    # the context: slices k-1, k, k+1 side by side (black beyond the volume), one row per sequence, 2 px gaps
    montage = context_montage(ct, 0)
    assert montage.shape == (2 * 4 + 2, 3 * 5 + 4)
    assert (montage[:4, :5] == 0).all()  # slice -1 does not exist
    assert np.array_equal(montage[:4, 7:12], slice_image(ct, 0, 0))
    assert np.array_equal(montage[6:10, 14:19], slice_image(ct, 1, 1))
    assert (montage[4:6] == 96).all()


@pytest.mark.labelstudio
def test_volume_slice_round_trip(labelstudio_server, tmp_path: Path) -> None:
    from medloop.trainers.dataset import IGNORE, load_arrays

    name = f"vol-{np.random.default_rng().integers(1 << 30)}"
    data = tmp_path / "nodules"
    lidc_like(data, n=8, shape=(10, 12, 6))  # stored (D, H, W) = (6, 12, 10)
    campaign = labelstudio_server.campaign(name, data={
        "source": "generic", "classes": ["benign", "malignant"], "volume_size": list(MODEL),
        "unlabeled_fraction": 0.5, "split": [0.5, 0.25, 0.25]})
    ingest(campaign, "generic", data)
    ledger, store = Ledger.open(campaign.ledger), ImageStore(campaign.store)
    with ledger.reading() as s:
        smp = s.scalars(select(Sample).where(Sample.split == "pool").order_by(Sample.id)).first()
    assert smp is not None and (smp.depth, smp.height, smp.width) == (6, 12, 10)

    # what scoring writes on the model grid (8, 16, 16): a lesion on model slices 5-6, uncertain there
    prob = np.zeros(MODEL, np.float32)
    prob[5:7, 6:10, 6:10] = 0.9
    umap = np.where(prob > 0, 0.3, 0.01).astype(np.float32)
    umap_rel = store.put_array(f"umap/round-1/{smp.uid}", umap)
    store.put_array(prob_map_path(f"umap/round-1/{smp.uid}"), prob.astype(np.float16))
    with ledger.transaction() as s:
        s.add(Prediction(round_id=1, sample_id=smp.id, model_version="round-1", probs=[0.3, 0.7], pred_class=1,
                         confidence=0.7, std=0.1, entropy=0.6, mutual_info=0.02, seg_uncertainty=0.3,
                         mask_path=store.put_mask(f"pred/round-1/{smp.uid}", (prob >= 0.5).astype(np.uint8)),
                         umap_path=umap_rel))
        s.add(AnnotationTask(sample_id=smp.id, round_id=1, state="intent", is_audit=False, score=1.0))

    push = push_queue(campaign, ledger, store)
    assert push.pushed == 1
    from medloop.labeling.client import connect

    client = connect(campaign)
    tid = push.task_ids[smp.uid]
    task_data = client.get(f"/api/tasks/{tid}")["data"]
    # model slices 5-6 of 8 are stored slices 3.75-5.25 of 6: the chosen slice holds the lesion
    k = task_data["slice_index"]
    assert k in (4, 5) and task_data["slices"] == 6
    assert task_data["summary"].startswith(f"axial slice {k + 1} of 6; model: malignant, 70 % confident")
    with ledger.reading() as s:
        row = s.scalars(select(AnnotationTask).where(AnnotationTask.sample_id == smp.id)).one()
    assert (row.state, row.slice_index) == ("pushed", k)
    headers = {"Authorization": f"Token {labelstudio_server.token}"}
    for key, size in (("image", (10, 12)), ("uncertainty_map", (10, 12)), ("context", (3 * 10 + 4, 12))):
        r = requests.get(campaign.labeling.url + task_data[key], headers=headers, timeout=60)
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == size, key
    project = client.get(f"/api/projects/{client.get(f'/api/tasks/{tid}')['project']}")
    assert '<Image name="context" value="$context"' in project["label_config"]  # a volume campaign's interface
    (pred,) = client.get("/api/predictions", params={"task": tid})
    brush = next(r for r in pred["result"] if r["type"] == "brushlabels")
    assert (brush["original_width"], brush["original_height"]) == (10, 12)
    assert rle_to_mask(brush["value"]["rle"], 12, 10).any()

    drawn = np.zeros((12, 10), np.uint8)
    drawn[4:9, 3:7] = 1
    client.post(f"/api/tasks/{tid}/annotations", json={"result": annotation_result(campaign, "benign", drawn)})
    report = sync(campaign, ledger, store)
    assert report.labels_added == 1 and report.quarantined == 0, report
    with ledger.reading() as s:
        label = s.scalars(select(Label).where(Label.sample_id == smp.id, Label.kind == "human",
                                              Label.active.is_(True))).one()
    assert label.class_name == "benign" and label.mask_path.endswith(".npy")
    stored = store.load_label_map(label.mask_path)
    assert stored.shape == (6, 12, 10) and np.array_equal(stored[k], drawn)
    assert (np.delete(stored, k, axis=0) == NOT_ANNOTATED).all()
    arrays = load_arrays(campaign, ledger, "train")  # training: the other slices are ignored
    i = arrays.uids.index(smp.uid)
    assert (arrays.masks[i] == IGNORE).mean() > 0.6 and (arrays.masks[i] == 1).any()
    assert arrays.labels[i] == 0
    ledger.close()
