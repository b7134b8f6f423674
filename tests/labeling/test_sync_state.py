"""Sync keeps the ledger equal to the current state of each Label Studio annotation (real server).

* edits both ways: a label whose annotation turns bad, is deleted or cancelled is retracted (kept as
  history); a quarantine row whose annotation is fixed is resolved (kept, with a record);
* a brush region labelled other than ``labeling.lesion_label`` is refused by name;
* two ``medloop labelstudio sync`` processes at once apply each change once (campaign lock).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from sqlalchemy import select

from medloop.labeling.pull import sync
from medloop.labeling.push import push_queue
from medloop.labeling.rle import mask_to_rle
from medloop.ledger import AnnotationTask, Label, Quarantine
from medloop.ledger.queries import quarantine_summary, training_composition
from medloop.rounds.triggers import new_human_labels

pytestmark = pytest.mark.labelstudio
_users = itertools.count()


# ---- what an annotator does in the UI, through the API (as in test_labelstudio.py) ----------------
def make_annotator(client, name: str) -> tuple[int, str]:
    email = f"{name}-{next(_users)}-{np.random.default_rng().integers(1 << 30)}@example.org"
    row = client.post("/api/users", json={"email": email, "username": email.split("@")[0], "first_name": name})
    return int(row["id"]), email


def annotate(client, task_id: int, result: list, *, user: int | None = None) -> dict:
    body: dict = {"result": result, "was_cancelled": False}
    if user is not None:
        body["completed_by"] = user
    return client.post(f"/api/tasks/{task_id}/annotations", json=body)


def cls(*names: str) -> dict:
    return {"from_name": "class", "to_name": "image", "type": "choices", "value": {"choices": list(names)}}


def brush(mask: np.ndarray, label: str = "Lesion") -> dict:
    return {"from_name": "lesion", "to_name": "image", "type": "brushlabels", "original_width": int(mask.shape[1]),
            "original_height": int(mask.shape[0]), "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}}


def _labels(ledger, sample_id: int) -> list[Label]:
    with ledger.reading() as s:
        rows = s.scalars(select(Label).where(Label.sample_id == sample_id, Label.kind == "human")
                         .order_by(Label.id)).all()
        s.expunge_all()
    return list(rows)


def _task(ledger, sample_id: int) -> AnnotationTask:
    with ledger.reading() as s:
        row = s.scalars(select(AnnotationTask).where(AnnotationTask.sample_id == sample_id)).one()
        s.expunge(row)
    return row


def _quarantine(ledger) -> dict[int | None, Quarantine]:
    with ledger.reading() as s:
        rows = s.scalars(select(Quarantine)).all()
        s.expunge_all()
    return {r.ls_annotation_id: r for r in rows}


def _trained_on(ledger) -> int:
    with ledger.reading() as s:
        return training_composition(s, semi=False)["human"]


def test_ledger_follows_annotation_edits_both_ways(make_queue):
    q = make_queue(4, audit_every=0)
    push = push_queue(q.campaign, q.ledger, q.store)
    client = q.client()
    user, _ = make_annotator(client, "editor")
    u, tid, sid = q.uids, push.task_ids, q.sample_ids
    drawn = np.zeros((64, 64), np.uint8)
    drawn[10:30, 20:44] = 1
    a0 = annotate(client, tid[u[0]], [cls("benign"), brush(drawn)], user=user)  # good, edited to no class later
    a1 = annotate(client, tid[u[1]], [brush(drawn)], user=user)  # no class: quarantined, fixed later
    a2 = annotate(client, tid[u[2]], [cls("malignant")], user=user)  # good, deleted later
    annotate(client, tid[u[3]], [cls("benign")], user=user)  # good, stays

    first = sync(q.campaign, q.ledger, q.store)
    assert first.labels_added == 3 and first.quarantined == 1, first.as_dict()
    assert _trained_on(q.ledger) == 3

    # in Label Studio: a0 loses its class, a1 gets one, a2 is deleted
    client.patch(f"/api/annotations/{a0['id']}", json={"result": [brush(drawn)]})
    client.patch(f"/api/annotations/{a1['id']}", json={"result": [cls("malignant"), brush(drawn)]})
    client.delete(f"/api/annotations/{a2['id']}")
    second = sync(q.campaign, q.ledger, q.store)

    # a0: quarantined and no longer trained on; its label is history (inactive, superseded_at set)
    hist0 = _labels(q.ledger, sid[u[0]])
    assert [h.active for h in hist0] == [False] and hist0[0].superseded_at is not None
    assert _task(q.ledger, sid[u[0]]).state == "quarantined"
    qrows = _quarantine(q.ledger)
    assert "no class chosen" in qrows[a0["id"]].reason and qrows[a0["id"]].resolved_at is None
    # a1: a label now; its quarantine row is resolved, with a record of why
    hist1 = _labels(q.ledger, sid[u[1]])
    assert [(h.active, h.class_name, h.ls_annotation_id) for h in hist1] == [(True, "malignant", a1["id"])]
    assert np.array_equal(q.store.load_mask(hist1[0].mask_path), drawn)
    r1 = qrows[a1["id"]]
    assert r1.resolved_at is not None and f"annotation {a1['id']} is valid now" in r1.resolution
    assert "labelled 'malignant'" in r1.resolution and "no class chosen" in r1.reason  # the reason stays
    assert _task(q.ledger, sid[u[1]]).state == "completed"
    # a2: deleted in Label Studio -> the label is history, the task waits for an annotation again
    assert [h.active for h in _labels(q.ledger, sid[u[2]])] == [False]
    t2 = _task(q.ledger, sid[u[2]])
    assert (t2.state, t2.ls_annotation_id, t2.completed_at) == ("pushed", None, None)
    assert [h.active for h in _labels(q.ledger, sid[u[3]])] == [True]
    assert _trained_on(q.ledger) == 2  # u1 and u3
    with q.ledger.reading() as s:
        assert quarantine_summary(s)[0] == 1  # open rows only: a0
    assert (second.labels_retracted, second.labels_added, second.quarantined, second.resolved) == (2, 1, 1, 1), \
        second.as_dict()
    assert sync(q.campaign, q.ledger, q.store).changed == 0  # idempotent

    # a0 fixed again: a label again (history kept, with its own mask file), its row resolved;
    # a1 turns bad again: its row re-opened with the new reason, its label retracted
    client.patch(f"/api/annotations/{a0['id']}", json={"result": [cls("normal")]})
    client.patch(f"/api/annotations/{a1['id']}", json={"result": [cls("cyst")]})
    third = sync(q.campaign, q.ledger, q.store)
    assert (third.labels_added, third.resolved, third.quarantined, third.labels_retracted) == (1, 1, 1, 1), \
        third.as_dict()
    hist0 = _labels(q.ledger, sid[u[0]])
    assert [(h.active, h.class_name) for h in hist0] == [(False, "benign"), (True, "normal")]
    assert hist0[0].mask_path != hist0[1].mask_path
    assert np.array_equal(q.store.load_mask(hist0[0].mask_path), drawn)  # history's mask untouched
    assert not q.store.load_mask(hist0[1].mask_path).any()
    qrows = _quarantine(q.ledger)
    assert qrows[a0["id"]].resolved_at is not None and "labelled 'normal'" in qrows[a0["id"]].resolution
    assert qrows[a1["id"]].resolved_at is None and "unknown class 'cyst'" in qrows[a1["id"]].reason
    assert [h.active for h in _labels(q.ledger, sid[u[1]])] == [False]
    assert _task(q.ledger, sid[u[1]]).state == "quarantined"
    assert _trained_on(q.ledger) == 2  # u0 and u3
    assert sync(q.campaign, q.ledger, q.store).changed == 0


def test_agreement_lost_retracts_and_regained_resolves(make_queue):
    q = make_queue(1, audit_every=0, overrides={"labeling": {"multi_annotation_policy": "agreement"}})
    push = push_queue(q.campaign, q.ledger, q.store)
    client = q.client()
    (a, _), (b, _) = make_annotator(client, "a"), make_annotator(client, "b")
    t, sid = push.task_ids[q.uids[0]], q.sample_ids[q.uids[0]]
    annotate(client, t, [cls("benign")], user=a)
    second = annotate(client, t, [cls("benign")], user=b)
    assert sync(q.campaign, q.ledger, q.store).labels_added == 1
    client.patch(f"/api/annotations/{second['id']}", json={"result": [cls("malignant")]})
    r = sync(q.campaign, q.ledger, q.store)
    assert [h.active for h in _labels(q.ledger, sid)] == [False]  # disagreement: not trained on
    assert r.labels_retracted == 1 and r.quarantined == 1, r.as_dict()
    client.patch(f"/api/annotations/{second['id']}", json={"result": [cls("benign")]})
    r = sync(q.campaign, q.ledger, q.store)
    assert r.labels_added == 1 and r.resolved == 1, r.as_dict()
    row = _quarantine(q.ledger)[None]
    assert "disagree" in row.reason and row.resolved_at is not None and "labelled 'benign'" in row.resolution


def test_brush_label_other_than_lesion_label_is_refused_by_name(make_queue):
    q = make_queue(2, audit_every=0)
    push = push_queue(q.campaign, q.ledger, q.store)
    client = q.client()
    user, _ = make_annotator(client, "brush")
    drawn = np.zeros((64, 64), np.uint8)
    drawn[5:25, 5:25] = 1
    wrong = annotate(client, push.task_ids[q.uids[0]], [cls("benign"), brush(drawn, label="Cyst")], user=user)
    right = annotate(client, push.task_ids[q.uids[1]], [cls("benign"), brush(drawn)], user=user)
    report = sync(q.campaign, q.ledger, q.store)
    assert report.labels_added == 1 and report.quarantined == 1, report.as_dict()
    assert _labels(q.ledger, q.sample_ids[q.uids[0]]) == []  # never read as a lesion
    reason = _quarantine(q.ledger)[wrong["id"]].reason
    assert "labelled 'Cyst'" in reason and "expected 'Lesion'" in reason and "labeling.lesion_label" in reason
    assert f"annotation {wrong['id']}" in reason
    lab = _labels(q.ledger, q.sample_ids[q.uids[1]])
    assert [h.ls_annotation_id for h in lab] == [right["id"]]
    assert np.array_equal(q.store.load_mask(lab[0].mask_path), drawn)


def _has_open(pid: int, path: str) -> bool:
    """Whether process ``pid`` holds ``path`` open (Linux /proc)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if str(fd.readlink()) == path:
                return True
        except OSError:
            continue
    return False


def test_two_sync_processes_at_once_apply_each_change_once(make_queue, tmp_path: Path):
    """Two real ``medloop labelstudio sync`` processes started together. To make them overlap for
    certain (not by luck of timing), the test holds a write lock on the ledger (a real SQLite
    ``BEGIN IMMEDIATE``; readers go on) until both processes have opened the ledger and a while after:
    without the campaign lock both read the ledger, fetch the same annotations and then both write
    every label once the write lock is released (two label rows per change, the new-label trigger
    counting 2n); with it the second waits for the first and finds nothing left to do."""
    n = 4
    q = make_queue(n, audit_every=0)
    push = push_queue(q.campaign, q.ledger, q.store)
    client = q.client()
    user, _ = make_annotator(client, "race")
    for uid in q.uids:
        annotate(client, push.task_ids[uid], [cls("benign")], user=user)
    cfg = tmp_path / "campaign.toml"
    cfg.write_text(tomli_w.dumps(q.campaign.model_dump(exclude_none=True, mode="json")))
    db = str(Path(q.campaign.ledger.removeprefix("sqlite:///")).resolve())
    hold = sqlite3.connect(db, timeout=30)
    hold.execute("BEGIN IMMEDIATE")
    cmd = [sys.executable, "-m", "medloop.cli", "labelstudio", "sync", "-c", str(cfg)]  # --wait: 60 s
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 240
        while not all(_has_open(p.pid, db) for p in procs):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the sync processes never opened the ledger"
            time.sleep(0.2)
        time.sleep(15)  # then: the project and the export fetched, the ledger read (under 30 s: busy_timeout)
    finally:
        hold.rollback()
        hold.close()
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for uid in q.uids:  # one history row per change
        assert [h.active for h in _labels(q.ledger, q.sample_ids[uid])] == [True], (uid, outs)
    with q.ledger.reading() as s:
        assert new_human_labels(s)[0] == n  # the new-label trigger counts each label once
    added = sorted(json.loads(out.strip().splitlines()[-1])["labels_added"] for out, _ in outs)
    assert added == [0, n]
