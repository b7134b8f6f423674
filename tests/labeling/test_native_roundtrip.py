"""Annotators work on the original image: a 500x380 image with a lesion goes ingest (generic layout)
-> push -> annotation through the Label Studio API with a native-size brush mask -> sync. The stored
human mask equals the drawn one pixel for pixel and training reads it at the campaign size; the
pre-annotation is the model's lesion probability resized to 500x380 (Dice >= 0.99 against the
model's own 128x128 mask resized); task data fields are typed; the prediction score is in [0, 1]."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from sqlalchemy import select

from medloop.data.imagestore import ImageStore, mask_at, prob_map_path, prob_mask
from medloop.data.ingest import ingest
from medloop.labeling.pull import sync
from medloop.labeling.push import push_queue
from medloop.labeling.rle import mask_to_rle, rle_to_mask
from medloop.ledger import AnnotationTask, Label, Ledger, Prediction, Sample

pytestmark = pytest.mark.labelstudio

H, W, MODEL = 380, 500, 128


def ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return ((((yy + 0.5) / h - cy) / ry) ** 2 + (((xx + 0.5) / w - cx) / rx) ** 2 <= 1.0).astype(np.uint8)


def write_generic(root: Path) -> Path:
    """images/: the 500x380 case with a bright lesion (unlabeled: it goes to the pool) and a few
    labeled cases of other sizes with masks."""
    rng = np.random.default_rng(7)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img = rng.integers(20, 120, (H, W), dtype=np.uint8)
    img[ellipse(H, W, 0.5, 0.45, 0.2, 0.3) > 0] = 230
    Image.fromarray(img).save(root / "images" / "case.png")
    rows = ["image,label", "case.png,"]
    for i, (w, h) in enumerate([(300, 240), (256, 200), (320, 320), (200, 150), (280, 210), (240, 240)]):
        other = rng.integers(0, 256, (h, w), dtype=np.uint8)
        Image.fromarray(other).save(root / "images" / f"o{i}.png")
        Image.fromarray(ellipse(h, w, 0.5, 0.5, 0.2, 0.2) * 255).save(root / "masks" / f"o{i}.png")
        rows.append(f"o{i}.png,{['benign', 'malignant'][i % 2]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def model_probability() -> np.ndarray:
    """A smooth 128x128 lesion probability where the lesion is (what scoring would store, float16)."""
    yy, xx = np.mgrid[:MODEL, :MODEL]
    d = np.sqrt(((yy + 0.5) / MODEL - 0.5) ** 2 / 0.2 ** 2 + ((xx + 0.5) / MODEL - 0.45) ** 2 / 0.3 ** 2)
    return (1.0 / (1.0 + np.exp((d - 1.0) * 10.0))).astype(np.float16)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_native_round_trip(labelstudio_server, tmp_path: Path) -> None:
    from medloop.trainers.dataset import load_arrays

    name = f"native-{np.random.default_rng().integers(1 << 30)}"
    campaign = labelstudio_server.campaign(name, data={"image_size": 64, "unlabeled_fraction": 0.5})
    ingest(campaign, "generic", write_generic(tmp_path / "data"))
    ledger, store = Ledger.open(campaign.ledger), ImageStore(campaign.store)
    with ledger.reading() as s:
        smp = s.scalars(select(Sample).where(Sample.original_path.like("%case.png"))).one()
    assert (smp.height, smp.width) == (H, W) and smp.split == "pool"

    # what scoring at 128 px writes: probability, predicted mask (>= 0.5), pixel-uncertainty map
    prob = model_probability()
    model_mask = (prob.astype(np.float32) >= 0.5).astype(np.uint8)
    umap_rel = store.put_array(f"umap/round-1/{smp.uid}", 0.3 * (1 - np.abs(2 * prob.astype(np.float32) - 1)))
    store.put_array(prob_map_path(f"umap/round-1/{smp.uid}"), prob)
    with ledger.transaction() as s:
        s.add(Prediction(round_id=1, sample_id=smp.id, model_version="round-1", probs=[0.1, 0.28, 0.62],
                         pred_class=2, confidence=0.62, std=0.08, entropy=0.88, mutual_info=0.031,
                         seg_uncertainty=0.12, mask_path=store.put_mask(f"pred/round-1/{smp.uid}", model_mask),
                         umap_path=umap_rel))
        s.add(AnnotationTask(sample_id=smp.id, round_id=1, state="intent", is_audit=False, score=1.7345678))

    push = push_queue(campaign, ledger, store)
    assert push.pushed == 1
    client = campaign_client(campaign)
    tid = push.task_ids[smp.uid]
    task = client.get(f"/api/tasks/{tid}")
    data = task["data"]
    # typed, sortable fields
    assert data["round"] == 1 and type(data["round"]) is int and data["audit"] is False
    assert data["acquisition_score"] == 1.735 and data["confidence"] == 0.62
    assert data["entropy"] == 0.88 and data["mutual_info"] == 0.031 and data["lesion_uncertainty"] == 0.12
    assert data["summary"] == "model: malignant, 62 % confident; lesion boundary uncertain"
    # the image annotators see is the original, at 500x380; the uncertainty image has its aspect
    headers = {"Authorization": f"Token {labelstudio_server.token}"}
    for key in ("image", "uncertainty_map"):
        r = requests.get(campaign.labeling.url + data[key], headers=headers, timeout=60)
        assert r.status_code == 200, key
        assert Image.open(io.BytesIO(r.content)).size == (W, H), key
    # the pre-annotation: the probability resized to 500x380, then >= 0.5; score = confidence in [0, 1]
    (pred,) = client.get("/api/predictions", params={"task": tid})
    assert 0.0 <= pred["score"] <= 1.0 and pred["score"] == pytest.approx(0.62)
    brush = next(r for r in pred["result"] if r["type"] == "brushlabels")
    assert (brush["original_width"], brush["original_height"]) == (W, H)
    pre = rle_to_mask(brush["value"]["rle"], H, W)
    assert np.array_equal(pre, prob_mask(prob, (H, W)))
    assert dice(pre, mask_at(model_mask, (H, W))) >= 0.99
    assert next(r for r in pred["result"] if r["type"] == "choices")["value"]["choices"] == ["malignant"]

    # the annotator corrects the mask on the native image: a native-size brush mask
    drawn = ellipse(H, W, 0.52, 0.46, 0.21, 0.27)
    drawn[150:160, 100:400] = 1  # a detail only a native-size mask can hold: a 10 px band
    assert not np.array_equal(drawn, pre)
    client.post(f"/api/tasks/{tid}/annotations", json={"result": [
        {"from_name": "class", "to_name": "image", "type": "choices", "value": {"choices": ["benign"]}},
        {"from_name": "lesion", "to_name": "image", "type": "brushlabels", "original_width": W,
         "original_height": H, "image_rotation": 0,
         "value": {"format": "rle", "rle": mask_to_rle(drawn), "brushlabels": ["Lesion"]}}]})
    report = sync(campaign, ledger, store)
    assert report.labels_added == 1 and report.quarantined == 0, report
    with ledger.reading() as s:
        label = s.scalars(select(Label).where(Label.sample_id == smp.id, Label.kind == "human",
                                              Label.active.is_(True))).one()
    stored = store.load_mask(label.mask_path)
    assert stored.shape == (H, W) and np.array_equal(stored, drawn)  # pixel for pixel, never resized
    arrays = load_arrays(campaign, ledger, "train")  # training reads it at the campaign size
    i = arrays.uids.index(smp.uid)
    assert arrays.masks.shape[1:] == (64, 64) and np.array_equal(arrays.masks[i], mask_at(drawn, (64, 64)))
    assert arrays.labels[i] == campaign.data.classes.index("benign")
    ledger.close()


def campaign_client(campaign):
    from medloop.labeling.client import connect

    return connect(campaign)


def test_data_manager_sorts_and_filters_the_typed_fields(make_queue) -> None:
    """The medloop tab orders by acquisition score as numbers (10.25 before 9.75, which text order
    would reverse) and filters on the boolean audit field."""
    from medloop.labeling.project import VIEW_TITLE

    q = make_queue(4, audit_every=2)
    scores = [0.5, 10.25, 9.75, 2.0]
    with q.ledger.transaction() as s:
        for t in s.scalars(select(AnnotationTask).order_by(AnnotationTask.id)):
            t.score = scores[q.uids.index(next(u for u, sid in q.sample_ids.items() if sid == t.sample_id))]
    push = push_queue(q.campaign, q.ledger, q.store)
    client = q.client()
    (view,) = [v for v in client.get("/api/dm/views/", params={"project": push.project_id})
               if v["data"].get("title") == VIEW_TITLE]
    out = client.get("/api/tasks", params={"project": push.project_id, "view": view["id"], "fields": "all"})
    got = [t["data"]["acquisition_score"] for t in out["tasks"]]
    assert got == [10.25, 9.75, 2.0, 0.5]
    audit_only = client.post("/api/dm/views/", json={"project": push.project_id, "data": {
        "title": "audit only", "filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:data.audit", "operator": "equal", "type": "Boolean", "value": True}]}}})
    out = client.get("/api/tasks", params={"project": push.project_id, "view": audit_only["id"]})
    assert sorted(t["data"]["sample_uid"] for t in out["tasks"]) == sorted(q.audit)
