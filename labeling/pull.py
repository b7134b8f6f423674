"""Sync: finished Label Studio annotations -> human labels in the ledger, validated.

:func:`sync` reads the project's tasks with their annotations (polling; the webhook receiver
only triggers the same call) and, per task:

* **skipped / cancelled** only -> ``AnnotationTask.state = "skipped"``, never a label;
* every other annotation is validated: exactly one class choice, from ``data.classes``; every
  brush region decodes to the image's size. A bad annotation goes to the ``Quarantine`` table
  with a reason naming the task, the annotation, the annotator and what was wrong; the rest of
  the batch is unaffected (each task is committed in its own transaction);
* several valid annotations on one task are resolved by ``labeling.multi_annotation_policy``:
  ``latest`` takes the most recently updated one; ``agreement`` needs every valid annotation to
  choose the same class (else the task is quarantined as a disagreement) and merges the masks by
  pixel-wise vote (a pixel is lesion when at least half the annotators painted it);
* the result becomes a human label through :func:`medloop.ledger.add_human_label` (author =
  annotator email, ``ls_task_id``, ``ls_annotation_id``; the annotation's time is
  ``AnnotationTask.completed_at``); the mask is saved with ``ImageStore.put_mask``; an updated
  annotation replaces the earlier human label, which stays as history;
* ``kept_prediction`` records whether the annotator kept the pre-annotated class.

Running sync twice changes nothing: a task whose chosen ``ls_annotation_id`` and annotation time
(``completed_at``) are already recorded is left alone, and quarantine rows are keyed by annotation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from medloop.config import Campaign
from medloop.data.imagestore import ImageStore
from medloop.ledger import AnnotationTask, Ledger, Prediction, Quarantine, Sample, add_human_label

from .client import LSClient, connect
from .project import CLASS_FROM, ensure_project
from .rle import RLEError, rle_to_mask


@dataclass
class SyncReport:
    project_id: int
    tasks_seen: int = 0
    labels_added: int = 0
    labels_updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    quarantined: int = 0  # new or changed quarantine rows
    pending: int = 0  # tasks without annotations yet
    unknown: int = 0  # tasks in the project that the ledger does not know
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return self.labels_added + self.labels_updated + self.skipped + self.quarantined

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("project_id", "tasks_seen", "labels_added", "labels_updated",
                                           "unchanged", "skipped", "quarantined", "pending", "unknown")}
        d["seconds"] = round(self.seconds, 3)
        d["reasons"] = list(self.reasons)
        return d


class BadAnnotation(ValueError):
    pass


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt


def parse_annotation(ann: dict[str, Any], classes: list[str], height: int, width: int) -> tuple[str, np.ndarray]:
    """(class name, (H, W) mask) of one annotation, or :class:`BadAnnotation` saying what is wrong."""
    results = ann.get("result") or []
    chosen: list[str] = []
    for r in results:
        if r.get("type") == "choices" and r.get("from_name", CLASS_FROM) == CLASS_FROM:
            chosen.extend((r.get("value") or {}).get("choices") or [])
    if not chosen:
        raise BadAnnotation("no class chosen (exactly one is required)")
    if len(chosen) > 1:
        raise BadAnnotation(f"{len(chosen)} classes chosen ({', '.join(map(str, chosen))}); exactly one is required")
    name = chosen[0]
    if name not in classes:
        raise BadAnnotation(f"unknown class {name!r} (known: {', '.join(classes)})")
    mask = np.zeros((height, width), dtype=np.uint8)
    for r in results:
        if r.get("type") != "brushlabels":
            continue
        ow, oh = r.get("original_width"), r.get("original_height")
        if ow is not None and oh is not None and (int(ow), int(oh)) != (width, height):
            raise BadAnnotation(f"brush mask is {ow}x{oh} (width x height), the image is {width}x{height}")
        value = r.get("value") or {}
        if value.get("format", "rle") != "rle" or not value.get("rle"):
            raise BadAnnotation(f"brush region {r.get('id')!r} holds no RLE mask")
        try:
            mask |= rle_to_mask(value["rle"], height, width)
        except RLEError as err:
            raise BadAnnotation(str(err)) from None
    return name, mask


def _predicted_class(task: dict[str, Any], round_id: int) -> str | None:
    """The class of the task's pre-annotation of that round (predictions or the annotations' parent)."""
    candidates = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
    candidates += [a["prediction"] for a in task.get("annotations") or [] if isinstance(a.get("prediction"), dict)]
    for p in candidates:
        if p.get("model_version") in (None, f"round-{round_id}"):
            for r in p.get("result") or []:
                if r.get("type") == "choices":
                    got = (r.get("value") or {}).get("choices") or []
                    return got[0] if got else None
    return None


def fetch_tasks(client: LSClient, project_id: int) -> list[dict[str, Any]]:
    """Every task of the project with its annotations and predictions (JSON export)."""
    out = client.get(f"/api/projects/{project_id}/export",
                     params={"exportType": "JSON", "download_all_tasks": "true"})
    return list(out or [])


def _upsert_quarantine(ledger: Ledger, *, sample_id: int | None, task_id: int, annotation_id: int | None,
                       reason: str, mark_task: int | None) -> bool:
    """Record a bad annotation; returns True when something changed."""
    with ledger.transaction() as s:
        if annotation_id is not None:
            row = s.scalars(select(Quarantine).where(Quarantine.ls_annotation_id == annotation_id)).first()
        else:
            row = s.scalars(select(Quarantine).where(Quarantine.ls_task_id == task_id,
                                                     Quarantine.ls_annotation_id.is_(None),
                                                     Quarantine.reason == reason)).first()
        changed = False
        if row is None:
            s.add(Quarantine(sample_id=sample_id, ls_task_id=task_id, ls_annotation_id=annotation_id, reason=reason))
            changed = True
        elif row.reason != reason:
            row.reason = reason
            changed = True
        if mark_task is not None:
            t = s.get(AnnotationTask, mark_task)
            if t is not None and t.state != "quarantined":
                t.state = "quarantined"
                changed = True
        return changed


def sync(
    campaign: Campaign,
    ledger: Ledger,
    store: ImageStore,
    *,
    client: LSClient | None = None,
    project_id: int | None = None,
    policy: str | None = None,
) -> SyncReport:
    """Pull finished annotations into the ledger (see the module docstring)."""
    t0 = time.perf_counter()
    client = client or connect(campaign)
    pid = project_id or ensure_project(campaign, ledger, client, store_root=store.root)
    policy = policy or campaign.labeling.multi_annotation_policy
    if policy not in ("latest", "agreement"):
        raise ValueError(f"labeling.multi_annotation_policy: expected 'latest' or 'agreement', got {policy!r}")
    classes = list(campaign.data.classes)
    report = SyncReport(project_id=pid)
    tasks = fetch_tasks(client, pid)
    users: dict[int, str] | None = None

    with ledger.reading() as s:
        rows = s.execute(
            select(AnnotationTask, Sample).join(Sample, Sample.id == AnnotationTask.sample_id)
            .where(AnnotationTask.ls_task_id.is_not(None))
        ).all()
        s.expunge_all()
        preds = s.execute(
            select(Prediction.sample_id, Prediction.round_id, Prediction.pred_class, Prediction.model_version)
        ).all()
    by_ls = {t.ls_task_id: (t, smp) for t, smp in rows}
    predicted_classes: dict[tuple[int, int], str] = {}
    for sid, rid, pc, mv in preds:
        if 0 <= pc < len(classes) and ((sid, rid) not in predicted_classes or mv == f"round-{rid}"):
            predicted_classes[(sid, rid)] = classes[pc]

    def who(ann: dict[str, Any]) -> str:
        nonlocal users
        cb = ann.get("completed_by")
        if isinstance(cb, dict):
            return str(cb.get("email") or cb.get("id"))
        if cb is None:
            return "unknown"
        if users is None:
            users = client.users()
        return users.get(int(cb), f"user-{cb}")

    for task in tasks:
        report.tasks_seen += 1
        tid = int(task["id"])
        if tid not in by_ls:
            report.unknown += 1
            continue
        row, smp = by_ls[tid]
        anns = task.get("annotations") or []
        if not anns:
            report.pending += 1
            continue
        done = [a for a in anns if not a.get("was_cancelled")]
        if not done:  # skipped / cancelled: recorded as such, never a label
            last = max(anns, key=lambda a: (a.get("updated_at") or "", a["id"]))
            when = parse_time(last.get("updated_at"))
            if row.state == "skipped" and row.ls_annotation_id == last["id"]:
                report.unchanged += 1
                continue
            with ledger.transaction() as s:
                t = s.get_one(AnnotationTask, row.id)
                t.state, t.ls_annotation_id, t.completed_at = "skipped", int(last["id"]), when
            report.skipped += 1
            continue

        good: list[tuple[dict[str, Any], str, np.ndarray]] = []
        for a in done:
            try:
                name, mask = parse_annotation(a, classes, smp.height, smp.width)
            except BadAnnotation as err:
                reason = f"task {tid}, annotation {a['id']} by {who(a)} (sample {smp.uid}): {err}"
                if _upsert_quarantine(ledger, sample_id=smp.id, task_id=tid, annotation_id=int(a["id"]),
                                      reason=reason, mark_task=None):
                    report.quarantined += 1
                    report.reasons.append(reason)
                continue
            good.append((a, name, mask))

        if not good:
            changed = False
            with ledger.transaction() as s:
                t = s.get_one(AnnotationTask, row.id)
                if t.state != "quarantined":
                    t.state, changed = "quarantined", True
            if not changed:
                report.unchanged += 1
            continue

        good.sort(key=lambda g: (g[0].get("updated_at") or "", g[0]["id"]))
        latest = good[-1][0]
        when = max(parse_time(g[0].get("updated_at")) or datetime.min for g in good)
        if policy == "latest":
            _, name, mask = good[-1]
            author = who(latest)
        else:
            names = {g[1] for g in good}
            if len(names) > 1:
                votes = ", ".join(f"{who(g[0])}: {g[1]}" for g in good)
                reason = (f"task {tid} (sample {smp.uid}): annotators disagree on the class ({votes}); "
                          "policy 'agreement'")
                if _upsert_quarantine(ledger, sample_id=smp.id, task_id=tid, annotation_id=None,
                                      reason=reason, mark_task=row.id):
                    report.quarantined += 1
                    report.reasons.append(reason)
                else:
                    report.unchanged += 1
                continue
            name = good[0][1]
            stack = np.stack([g[2] for g in good]).astype(np.float32)
            mask = (stack.mean(axis=0) >= 0.5).astype(np.uint8)
            author = "+".join(dict.fromkeys(who(g[0]) for g in good))

        if row.state == "completed" and row.ls_annotation_id == latest["id"] and row.completed_at == when:
            report.unchanged += 1
            continue
        mask_rel = store.put_mask(f"human/{smp.uid}-ls{latest['id']}", mask)
        predicted = _predicted_class(task, row.round_id)
        if predicted is None:
            predicted = predicted_classes.get((smp.id, row.round_id))
        with ledger.transaction() as s:
            add_human_label(s, smp.id, class_name=name, mask_path=mask_rel, author=author[:128],
                            ls_task_id=tid, ls_annotation_id=int(latest["id"]))
            t = s.get_one(AnnotationTask, row.id)
            first = t.state != "completed"
            t.state = "completed"
            t.ls_annotation_id = int(latest["id"])
            t.completed_at = when
            t.kept_prediction = None if predicted is None else (predicted == name)
        if first:
            report.labels_added += 1
        else:
            report.labels_updated += 1

    report.seconds = time.perf_counter() - t0
    return report
