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
from volume_files import lidc_like, queue_scored_volume  # tests/ is on sys.path

from medloop.data.imagestore import ImageStore
from medloop.data.ingest import ingest
from medloop.labeling.pull import sync
from medloop.labeling.push import push_queue
from medloop.labeling.rle import rle_to_mask
from medloop.labeling.volume_slices import (
    NOT_ANNOTATED,
    annotated_slice,
    context_page,
    context_span,
    most_informative_slice,
    partial_label_map,
    slice_image,
)
from medloop.ledger import AnnotationTask, Label, Ledger, Sample
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
    # a context page: one slice of every sequence side by side, 2 grey columns between
    page = context_page(ct, 2)
    assert page.shape == (4, 2 * 5 + 2)
    assert np.array_equal(page[:, :5], slice_image(ct, 2, 0)) and np.array_equal(page[:, 7:], slice_image(ct, 2, 1))
    assert (page[:, 5:7] == 96).all()


def test_the_context_spans_the_radius_around_the_slice_cut_at_the_volume_ends() -> None:
    assert list(context_span(5, 20, 3)) == [2, 3, 4, 5, 6, 7, 8]
    assert list(context_span(1, 20, 3)) == [0, 1, 2, 3, 4]  # cut at the first slice
    assert list(context_span(19, 20, 3)) == [16, 17, 18, 19]  # and at the last
    assert list(context_span(4, 6, 0)) == [4]  # radius 0: the slice alone
    assert list(context_span(0, 1, 5)) == [0]
    with pytest.raises(ValueError, match="slice 6 is outside a volume of 6 slices"):
        context_span(6, 6, 2)


@pytest.mark.labelstudio
def test_volume_slice_round_trip(labelstudio_server, tmp_path: Path) -> None:
    from medloop.trainers.dataset import IGNORE, load_arrays

    name = f"vol-{np.random.default_rng().integers(1 << 30)}"
    data = tmp_path / "nodules"
    lidc_like(data, n=8, shape=(10, 12, 6))  # stored (D, H, W) = (6, 12, 10)
    campaign = labelstudio_server.campaign(name, data={
        "source": "generic", "classes": ["benign", "malignant"], "volume_size": list(MODEL),
        "unlabeled_fraction": 0.5, "split": [0.5, 0.25, 0.25]}, labeling={"context_slices": 2})
    ingest(campaign, "generic", data)
    # what scoring writes on the model grid (8, 16, 16): a lesion on model slices 5-6, uncertain there
    ledger, store, smp = queue_scored_volume(campaign, np.s_[5:7, 6:10, 6:10])
    assert (smp.depth, smp.height, smp.width) == (6, 12, 10)

    push = push_queue(campaign, ledger, store)
    assert push.pushed == 1
    from medloop.labeling.client import connect
    from medloop.labeling.project import ensure_project

    client = connect(campaign)
    tid = push.task_ids[smp.uid]
    task_data = client.get(f"/api/tasks/{tid}")["data"]
    # model slices 5-6 of 8 are stored slices 3.75-5.25 of 6: the chosen slice holds the lesion
    k = task_data["slice_index"]
    assert k in (4, 5) and task_data["slices"] == 6
    # the context: slices k-2 .. k+2 (labeling.context_slices = 2), cut at the last slice (5)
    first = task_data["context_first_slice"]
    assert first == k - 2 and len(task_data["context"]) == min(5, 6 - first)
    assert task_data["summary"].startswith(f"axial slice {k + 1} of 6 (page 3 of {len(task_data['context'])} "
                                           "below); model: malignant, 70 % confident")
    with ledger.reading() as s:
        row = s.scalars(select(AnnotationTask).where(AnnotationTask.sample_id == smp.id)).one()
    assert (row.state, row.slice_index) == ("pushed", k)
    headers = {"Authorization": f"Token {labelstudio_server.token}"}
    def served(url: str) -> np.ndarray:
        r = requests.get(campaign.labeling.url + url, headers=headers, timeout=60)
        assert r.status_code == 200, url
        return np.asarray(Image.open(io.BytesIO(r.content)))

    assert served(task_data["image"]).shape == served(task_data["uncertainty_map"]).shape == (12, 10)
    volume = store.load_volume(smp.image_path)
    for page, url in enumerate(task_data["context"]):  # each page is its slice, as Label Studio serves it
        assert np.array_equal(served(url), slice_image(volume, first + page)), page
    pid = client.get(f"/api/tasks/{tid}")["project"]
    assert '<Image name="context" valueList="$context"' in client.get(f"/api/projects/{pid}")["label_config"]
    assert ensure_project(campaign, ledger, client) == pid  # found again (the next push): the interface is kept
    assert '<Image name="context" valueList="$context"' in client.get(f"/api/projects/{pid}")["label_config"]
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


def test_a_slice_task_is_painted_on_the_chosen_sequence_with_every_sequence_in_its_pages(tmp_path: Path) -> None:
    """Four-sequence phantoms (T1, T1ce, T2, FLAIR as one 4D file each): with ``labeling.slice_sequence = 4``
    the slice to paint is FLAIR's, the sentence says so, and each page holds that slice of all four."""
    from medloop.config import parse_campaign
    from medloop.data.phantoms3d import write_phantom_folder
    from medloop.labeling.push import volume_view

    write_phantom_folder(tmp_path / "data", n=6, size=16)
    campaign = parse_campaign({
        "name": "seq", "root": str(tmp_path / "c"),
        "data": {"source": "generic", "path": str(tmp_path / "data"), "classes": ["idh_mutant", "idh_wildtype"],
                 "volume_size": [16, 16, 16], "unlabeled_fraction": 0.5},
        "labeling": {"slice_sequence": 4, "context_slices": 1}}, "<test>")
    ingest(campaign, "generic")
    ledger, store = Ledger.open(campaign.ledger), ImageStore(campaign.store)
    with ledger.reading() as s:
        smp = s.scalars(select(Sample).where(Sample.split == "pool").order_by(Sample.id)).first()
    assert smp is not None and smp.channels == 4
    volume = store.load_volume(smp.image_path)
    view = volume_view(campaign, store, None, smp)  # not scored: the middle slice
    k = int(smp.depth or 0) // 2
    assert view.fields == {"slice_index": k, "slices": smp.depth, "context_first_slice": k - 1}
    assert view.note == f"axial slice {k + 1} of {smp.depth}, sequence 4 of 4 (page 2 of 3 below); "
    assert np.array_equal(np.asarray(Image.open(store.path(view.image))), slice_image(volume, k, 3))
    assert not np.array_equal(slice_image(volume, k, 3), slice_image(volume, k, 0))  # FLAIR, not T1
    assert view.context is not None and len(view.context) == 3
    for j, page in zip(range(k - 1, k + 2), view.context):
        assert np.array_equal(np.asarray(Image.open(store.path(page))), context_page(volume, j))
    assert context_page(volume, k).shape == (smp.height, 4 * int(smp.width or 0) + 3 * 2)  # all four sequences
    five = campaign.model_copy(update={"labeling": campaign.labeling.model_copy(update={"slice_sequence": 5})})
    with pytest.raises(ValueError, match=f"labeling.slice_sequence = 5: case {smp.uid} has 4 sequence"):
        volume_view(five, store, None, smp)
    ledger.close()
