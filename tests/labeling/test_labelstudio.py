"""Against a real Label Studio server (session fixture ``labelstudio_server``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import requests
from sqlalchemy import select

from medloop.labeling import server as ls_server
from medloop.labeling.client import LSClient, connect
from medloop.labeling.errors import LabelStudioUnavailable
from medloop.labeling.project import (
    INSTRUCTIONS,
    META_KEY,
    VIEW_TITLE,
    ensure_project,
    label_config,
    project_title,
)
from medloop.labeling.pull import sync
from medloop.labeling.push import build_task, existing_tasks, import_tasks, push_queue
from medloop.labeling.rle import mask_to_rle, rle_to_mask
from medloop.ledger import AnnotationTask, Label, Ledger, Quarantine, Sample

pytestmark = pytest.mark.labelstudio
_users = itertools.count()


# ---- helpers: what an annotator does in the UI, through the API ----------------------------------
def make_annotator(client: LSClient, name: str) -> tuple[int, str]:
    email = f"{name}-{next(_users)}-{np.random.default_rng().integers(1 << 30)}@example.org"
    row = client.post("/api/users", json={"email": email, "username": email.split("@")[0], "first_name": name})
    return int(row["id"]), email


def annotate(client: LSClient, task_id: int, result: list, *, user: int | None = None, cancelled: bool = False) -> dict:
    body = {"result": result, "was_cancelled": cancelled}
    if user is not None:
        body["completed_by"] = user
    return client.post(f"/api/tasks/{task_id}/annotations", json=body)


def cls(*names):
    return {"from_name": "class", "to_name": "image", "type": "choices", "value": {"choices": list(names)}}


def brush(mask, label="Lesion"):
    return {"from_name": "lesion", "to_name": "image", "type": "brushlabels", "original_width": int(mask.shape[1]),
            "original_height": int(mask.shape[0]), "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}}


def tasks_of(ledger: Ledger) -> dict[int, AnnotationTask]:
    with ledger.reading() as s:
        rows = s.scalars(select(AnnotationTask)).all()
        s.expunge_all()
    return {t.sample_id: t for t in rows}


def human_labels(ledger: Ledger, active_only=True) -> list[Label]:
    with ledger.reading() as s:
        q = select(Label).where(Label.kind == "human")
        if active_only:
            q = q.where(Label.active.is_(True))
        rows = s.scalars(q.order_by(Label.id)).all()
        s.expunge_all()
    return list(rows)


def quarantine(ledger: Ledger) -> list[Quarantine]:
    with ledger.reading() as s:
        rows = s.scalars(select(Quarantine).order_by(Quarantine.id)).all()
        s.expunge_all()
    return list(rows)


# ---- server --------------------------------------------------------------------------------------
def test_server_token_kept_secret(labelstudio_server):
    f = ls_server.files(labelstudio_server.server_campaign)
    assert (f.token.stat().st_mode & 0o777) == 0o600
    assert labelstudio_server.token not in f.log.read_text(errors="replace")
    st = ls_server.status(labelstudio_server.server_campaign)
    assert st.running and st.healthy and st.url == labelstudio_server.url
    assert labelstudio_server.token not in repr(connect(labelstudio_server.campaign("tok")))


# ---- project -------------------------------------------------------------------------------------
def test_project_created_then_found_again(make_queue):
    q = make_queue(1)
    client = q.client()
    pid = ensure_project(q.campaign, q.ledger, client)
    assert q.ledger.get_meta(META_KEY) == str(pid)
    assert ensure_project(q.campaign, q.ledger, client) == pid
    # a fresh ledger finds it again by title
    other = Ledger.open(f"sqlite:///{q.campaign.folder.resolve()}/other.db")
    assert ensure_project(q.campaign, other, client) == pid
    proj = client.get(f"/api/projects/{pid}")
    assert proj["title"] == project_title(q.campaign)
    cfg = proj["label_config"]
    for c in q.campaign.data.classes:
        assert f'value="{c}"' in cfg
    assert 'choice="single"' in cfg and 'required="true"' in cfg and 'zoom="true"' in cfg
    assert "BrushLabels" in cfg and q.campaign.labeling.lesion_label in cfg and "$summary" in cfg
    assert '<Image name="uncertainty_map" value="$uncertainty_map"' in cfg
    # the class choices come before the images: seen without scrolling
    assert cfg.index('<Choices name="class"') < cfg.index('<Image name="image"')
    views = client.get("/api/dm/views/", params={"project": pid})
    mine = [v for v in views if v["data"].get("title") == VIEW_TITLE]
    assert len(mine) == 1  # created once, found again
    assert mine[0]["data"]["columnsDisplayType"]["tasks:data.acquisition_score"] == "Number"
    assert mine[0]["data"]["columnsDisplayType"]["tasks:data.audit"] == "Boolean"
    assert proj["expert_instruction"] == INSTRUCTIONS and "acquisition_score" in INSTRUCTIONS
    storages = client.get("/api/storages/localfiles", params={"project": pid})
    assert [s["path"] for s in storages] == [str((q.campaign.store / "images").resolve())]
    assert label_config(q.campaign).strip() == cfg.strip()


# ---- push ----------------------------------------------------------------------------------------
def test_push_with_preannotations_and_image_served(make_queue):
    q = make_queue(6)
    report = push_queue(q.campaign, q.ledger, q.store)
    assert report.pushed == 6 and report.remaining == 0
    client = q.client()
    rows = tasks_of(q.ledger)
    assert {t.state for t in rows.values()} == {"pushed"}
    assert len({t.ls_task_id for t in rows.values()}) == 6
    for uid in q.uids:
        t = rows[q.sample_ids[uid]]
        task = client.get(f"/api/tasks/{t.ls_task_id}")
        data = task["data"]
        assert data["sample_uid"] == uid
        # typed fields: JSON numbers and booleans, not text
        assert data["round"] == 1 and type(data["round"]) is int
        assert data["audit"] is (uid in q.audit)
        assert data["acquisition_score"] == round(t.score, 3) and isinstance(data["acquisition_score"], float)
        assert (data["confidence"], data["entropy"], data["mutual_info"], data["lesion_uncertainty"]) == (
            0.5, 1.0, 0.2, 0.3)
        assert data["predicted_class"] == q.pred_class[uid]
        assert data["summary"].endswith(f"model: {q.pred_class[uid]}, 50 % confident; lesion boundary uncertain")
        assert data["summary"].startswith("AUDIT") == (uid in q.audit)
        assert "uncertainty" not in data and "info" not in data  # no raw-JSON or long text column
        preds = client.get("/api/predictions", params={"task": t.ls_task_id})
        assert len(preds) == 1
        p = preds[0]
        # the score is the model's confidence in [0, 1], not the acquisition score
        assert p["model_version"] == "round-1" and p["score"] == pytest.approx(0.5)
        by_type = {r["type"]: r for r in p["result"]}
        assert by_type["choices"]["value"]["choices"] == [q.pred_class[uid]]
        b = by_type["brushlabels"]
        assert np.array_equal(rle_to_mask(b["value"]["rle"], 64, 64), q.pred_masks[uid])
    # the image is really served from the store (no copy)
    t = rows[q.sample_ids[q.uids[0]]]
    url = client.get(f"/api/tasks/{t.ls_task_id}")["data"]["image"]
    r = requests.get(q.campaign.labeling.url + url, headers={"Authorization": f"Token {client._token}"}, timeout=30)
    assert r.status_code == 200
    assert r.content == q.store.path(f"images/{q.uids[0]}.png").read_bytes()
    # pushing again pushes nothing
    again = push_queue(q.campaign, q.ledger, q.store)
    assert again.pushed == 0 and again.reconciled == 0
    assert len(existing_tasks(client, report.project_id)) == 6


def test_push_never_duplicates_after_crash(make_queue):
    """Import done but the ledger transaction lost: the next push reconciles by sample uid."""
    q = make_queue(5)
    client = q.client()
    pid = ensure_project(q.campaign, q.ledger, client)
    root = ls_server.document_root(q.campaign)
    with q.ledger.reading() as s:
        rows = s.execute(select(AnnotationTask, Sample).join(Sample).order_by(AnnotationTask.id)).all()
        s.expunge_all()
    # "crash": the first 3 are imported, but the ledger update never commits
    with pytest.raises(RuntimeError):
        with q.ledger.transaction() as s:
            ids = import_tasks(client, pid,
                               [build_task(q.campaign, q.store, root, t, smp, None) for t, smp in rows[:3]])
            for (t, _), _ls_id in zip(rows[:3], ids):
                s.get(AnnotationTask, t.id).state = "pushed"
            raise RuntimeError("killed before commit")
    assert {t.state for t in tasks_of(q.ledger).values()} == {"intent"}
    report = push_queue(q.campaign, q.ledger, q.store)
    assert report.reconciled == 3 and report.pushed == 2
    present = existing_tasks(client, pid)
    assert sorted(present) == sorted(q.uids)  # one task per sample, no duplicate
    tasks = client.get("/api/tasks", params={"project": pid, "page_size": 100})["total"]
    assert tasks == 5
    rows_after = tasks_of(q.ledger)
    assert all(rows_after[q.sample_ids[u]].ls_task_id == present[u] for u in q.uids)


class _DropsAfter(LSClient):
    """A real client whose connection goes away after ``n`` imports (the server dying mid-push)."""

    def __init__(self, url, token, n):
        super().__init__(url, token)
        self.n = n

    def request(self, method, path, **kw):
        if path.endswith("/import"):
            if self.n <= 0:
                raise LabelStudioUnavailable(f"Label Studio at {self.url} is unreachable (simulated)")
            self.n -= 1
        return super().request(method, path, **kw)


def test_unreachable_is_a_clear_error_and_nothing_is_lost(make_queue, labelstudio_server):
    q = make_queue(7)
    dead_url = f"http://127.0.0.1:{ls_server.free_port()}"
    with pytest.raises(LabelStudioUnavailable, match=dead_url.replace(".", r"\.")):
        push_queue(q.campaign, q.ledger, q.store, client=connect(q.campaign, url=dead_url))
    assert {t.state for t in tasks_of(q.ledger).values()} == {"intent"}
    with pytest.raises(LabelStudioUnavailable):
        sync(q.campaign, q.ledger, q.store, client=connect(q.campaign, url=dead_url))
    # dies after the first chunk of 3: those stay pushed, the rest stay intents
    flaky = _DropsAfter(labelstudio_server.url, labelstudio_server.token, 1)
    with pytest.raises(LabelStudioUnavailable):
        push_queue(q.campaign, q.ledger, q.store, client=flaky, chunk_size=3)
    states = [t.state for t in tasks_of(q.ledger).values()]
    assert states.count("pushed") == 3 and states.count("intent") == 4
    report = push_queue(q.campaign, q.ledger, q.store)
    assert report.pushed == 4 and report.reconciled == 0
    assert sorted(existing_tasks(q.client(), report.project_id)) == sorted(q.uids)


# ---- sync ----------------------------------------------------------------------------------------
def test_sync_round_trip_validation_and_idempotence(make_queue, ledger_url):
    """Runs with the ledger in SQLite and in a real PostgreSQL database (tests/ledger_backends.py)."""
    q = make_queue(8, audit_every=0, overrides={"ledger_url": ledger_url})
    push = push_queue(q.campaign, q.ledger, q.store)
    client = q.client()
    ann_id, email = make_annotator(client, "ann")
    tid = {u: push.task_ids[u] for u in q.uids}
    drawn = np.zeros((64, 64), np.uint8)
    drawn[30:50, 10:40] = 1
    u = q.uids
    other = {c for c in q.campaign.data.classes if c != q.pred_class[u[0]]}.pop()
    good = annotate(client, tid[u[0]], [cls(other), brush(drawn)], user=ann_id)  # corrected class + mask
    kept = annotate(client, tid[u[1]], [cls(q.pred_class[u[1]]), brush(q.pred_masks[u[1]])], user=ann_id)
    no_mask = annotate(client, tid[u[2]], [cls("normal")], user=ann_id)
    bad = {
        u[3]: (annotate(client, tid[u[3]], [brush(drawn)], user=ann_id), "no class"),
        u[4]: (annotate(client, tid[u[4]], [cls("benign", "malignant")], user=ann_id), "2 classes"),
        u[5]: (annotate(client, tid[u[5]], [cls("cyst")], user=ann_id), "unknown class 'cyst'"),
        u[6]: (annotate(client, tid[u[6]], [cls("benign"), brush(np.ones((32, 32), np.uint8))], user=ann_id),
               "32x32"),
    }
    skipped = annotate(client, tid[u[7]], [], user=ann_id, cancelled=True)

    report = sync(q.campaign, q.ledger, q.store)
    assert report.labels_added == 3 and report.quarantined == 4 and report.skipped == 1, report.as_dict()
    labels = {lab.sample_id: lab for lab in human_labels(q.ledger)}
    assert set(labels) == {q.sample_ids[x] for x in u[:3]}
    lab = labels[q.sample_ids[u[0]]]
    assert lab.class_name == other and lab.ls_task_id == tid[u[0]] and lab.ls_annotation_id == good["id"]
    assert lab.author == email
    assert labels[q.sample_ids[u[1]]].ls_annotation_id == kept["id"]
    assert labels[q.sample_ids[u[2]]].ls_annotation_id == no_mask["id"]
    assert np.array_equal(q.store.load_mask(lab.mask_path), drawn)  # mask equal after the round trip
    assert np.array_equal(q.store.load_mask(labels[q.sample_ids[u[1]]].mask_path), q.pred_masks[u[1]])
    assert not q.store.load_mask(labels[q.sample_ids[u[2]]].mask_path).any()
    rows = tasks_of(q.ledger)
    assert rows[q.sample_ids[u[0]]].kept_prediction is False
    assert rows[q.sample_ids[u[1]]].kept_prediction is True
    assert rows[q.sample_ids[u[0]]].state == "completed" and rows[q.sample_ids[u[0]]].completed_at is not None
    assert rows[q.sample_ids[u[7]]].state == "skipped"
    qrows = {r.ls_annotation_id: r for r in quarantine(q.ledger)}
    for uid, (ann, what) in bad.items():
        r = qrows[ann["id"]]
        assert what in r.reason and f"task {tid[uid]}" in r.reason and f"annotation {ann['id']}" in r.reason
        assert r.sample_id == q.sample_ids[uid]
        assert rows[q.sample_ids[uid]].state == "quarantined"
    assert skipped["id"] not in qrows

    # running sync twice changes nothing
    n_labels = len(human_labels(q.ledger, active_only=False))
    again = sync(q.campaign, q.ledger, q.store)
    assert again.changed == 0 and again.unchanged == 8
    assert len(human_labels(q.ledger, active_only=False)) == n_labels
    assert len(quarantine(q.ledger)) == 4

    # an updated annotation replaces the earlier label; history kept
    client.patch(f"/api/annotations/{good['id']}", json={"result": [cls(q.pred_class[u[0]]), brush(drawn)]})
    upd = sync(q.campaign, q.ledger, q.store)
    assert upd.labels_updated == 1 and upd.labels_added == 0
    with q.ledger.reading() as s:
        hist = s.scalars(select(Label).where(Label.sample_id == q.sample_ids[u[0]], Label.kind == "human")
                         .order_by(Label.id)).all()
        assert [h.active for h in hist] == [False, True]
        assert [h.class_name for h in hist] == [other, q.pred_class[u[0]]]
    assert tasks_of(q.ledger)[q.sample_ids[u[0]]].kept_prediction is True
    assert sync(q.campaign, q.ledger, q.store).changed == 0

    # a quarantined task fixed by a new annotation becomes a label
    annotate(client, tid[u[5]], [cls("benign")], user=ann_id)
    fixed = sync(q.campaign, q.ledger, q.store)
    assert fixed.labels_added == 1
    assert {lab.sample_id for lab in human_labels(q.ledger)} >= {q.sample_ids[u[5]]}


def test_multi_annotation_policies(make_queue):
    q = make_queue(3, audit_every=0, overrides={"labeling": {"multi_annotation_policy": "agreement"}})
    push = push_queue(q.campaign, q.ledger, q.store)
    client = q.client()
    (a, ea), (b, eb) = make_annotator(client, "a"), make_annotator(client, "b")
    u = q.uids
    m1 = np.zeros((64, 64), np.uint8)
    m1[10:30, 10:30] = 1
    m2 = np.zeros((64, 64), np.uint8)
    m2[20:40, 20:40] = 1
    annotate(client, push.task_ids[u[0]], [cls("benign"), brush(m1)], user=a)
    annotate(client, push.task_ids[u[0]], [cls("benign"), brush(m2)], user=b)
    annotate(client, push.task_ids[u[1]], [cls("benign")], user=a)
    annotate(client, push.task_ids[u[1]], [cls("malignant")], user=b)
    report = sync(q.campaign, q.ledger, q.store)
    assert report.labels_added == 1 and report.quarantined == 1
    labels = {lab.sample_id: lab for lab in human_labels(q.ledger)}
    agreed = labels[q.sample_ids[u[0]]]
    assert agreed.class_name == "benign" and set(agreed.author.split("+")) == {ea, eb}
    assert np.array_equal(q.store.load_mask(agreed.mask_path), m1 | m2)  # 2 annotators: at least half
    assert q.sample_ids[u[1]] not in labels
    reasons = [r.reason for r in quarantine(q.ledger)]
    assert len(reasons) == 1 and "disagree" in reasons[0]
    assert sync(q.campaign, q.ledger, q.store).changed == 0
    # the same Label Studio data under "latest": the most recent annotation wins
    latest = q.campaign.model_copy(update={"labeling": q.campaign.labeling.model_copy(
        update={"multi_annotation_policy": "latest"})})
    r2 = sync(latest, q.ledger, q.store)
    labels = {lab.sample_id: lab for lab in human_labels(q.ledger)}
    assert labels[q.sample_ids[u[1]]].class_name == "malignant" and labels[q.sample_ids[u[1]]].author == eb
    assert r2.labels_added == 1


def test_audit_flags_in_task_data(make_queue):
    q = make_queue(6, audit_every=2)
    push = push_queue(q.campaign, q.ledger, q.store)
    client = q.client()
    flagged = {t["data"]["sample_uid"] for t in client.iter_tasks(push.project_id) if t["data"]["audit"] is True}
    assert flagged == q.audit and len(flagged) == 3
