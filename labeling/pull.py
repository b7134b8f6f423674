"""Sync: finished Label Studio annotations -> human labels in the ledger, validated.

:func:`sync` reads the project's tasks with their annotations (polling; the webhook receiver
only triggers the same call) and makes the ledger equal to the current state of each task:

* **no annotation** (none yet, or all deleted) -> pending (``AnnotationTask.state = "pushed"``);
* **skipped / cancelled** only -> ``AnnotationTask.state = "skipped"``, never a label;
* every other annotation is validated: exactly one class choice, from ``data.classes``; every
  brush region labelled ``labeling.lesion_label`` and decoding to the image's size. A bad
  annotation goes to the ``Quarantine`` table with a reason naming the task, the annotation, the
  annotator and what was wrong; the rest of the batch is unaffected (each task is committed in its
  own transaction);
* several valid annotations on one task are resolved by ``labeling.multi_annotation_policy``:
  ``latest`` takes the most recently updated one; ``agreement`` needs every valid annotation to
  choose the same class (else the task is quarantined as a disagreement) and merges the masks by
  pixel-wise vote (a pixel is lesion when at least half the annotators painted it);
* the result becomes a human label through :func:`medloop.ledger.add_human_label` (author =
  annotator email, ``ls_task_id``, ``ls_annotation_id``; the annotation's time is
  ``AnnotationTask.completed_at``); the mask is saved with ``ImageStore.put_mask`` (a volume's task: the
  annotated slice written into a label map of the volume, every other voxel 255 = not annotated,
  ``ImageStore.put_volume_mask``: a partial label that training ignores outside the slice); an updated
  annotation replaces the earlier human label, which stays as history;
* ``kept_prediction`` records whether the annotator kept the pre-annotated class.

The ledger follows later edits both ways. A task that no longer yields a label (its annotation was
edited to something invalid, deleted, cancelled, or annotators now disagree) loses its human label
from Label Studio: the row is made inactive (``superseded_at`` set), kept as history, and no longer
trained on. A quarantine row whose annotation was fixed, deleted or cancelled (or whose
disagreement ended) is resolved: kept, with ``resolved_at`` and a ``resolution`` saying what
happened; it is opened again if the annotation turns bad again.

Running sync twice changes nothing: a task whose chosen ``ls_annotation_id`` and annotation time
(``completed_at``) are already recorded is left alone, and quarantine rows are keyed by annotation.
Two syncs must not run at once (each would apply the same changes): ``medloop labelstudio sync``
and the webhook receiver call :func:`locked_sync`, which holds the campaign lock
(:func:`medloop.rounds.lock.round_lock`); a round's own sync step runs inside the round's lock.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
from sqlalchemy import CursorResult, func, or_, select, update
from sqlalchemy.orm import Session

from medloop.config import Campaign
from medloop.data.imagestore import ImageStore
from medloop.ledger import AnnotationTask, Label, Ledger, Prediction, Quarantine, Sample, add_human_label
from medloop.ledger.schema import utcnow

from .client import LSClient, connect
from .project import CLASS_FROM, brush_labels, ensure_project
from .rle import RLEError, rle_to_mask
from .volume_slices import partial_label_map


@dataclass
class SyncReport:
    project_id: int
    tasks_seen: int = 0
    labels_added: int = 0
    labels_updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    quarantined: int = 0  # new, changed or re-opened quarantine rows
    resolved: int = 0  # quarantine rows resolved (annotation fixed, deleted, cancelled; annotators agree)
    labels_retracted: int = 0  # human labels made inactive: their task no longer yields a label
    pending: int = 0  # tasks without annotations yet
    unknown: int = 0  # tasks in the project that the ledger does not know
    seconds: float = 0.0
    reasons: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return (self.labels_added + self.labels_updated + self.skipped + self.quarantined + self.resolved
                + self.labels_retracted)

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("project_id", "tasks_seen", "labels_added", "labels_updated",
                                           "unchanged", "skipped", "quarantined", "resolved", "labels_retracted",
                                           "pending", "unknown")}
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


def parse_annotation(ann: dict[str, Any], classes: list[str], height: int, width: int,
                     lesion_label: str | Sequence[str] = "Lesion") -> tuple[str, np.ndarray]:
    """(class name, (H, W) mask) of one annotation, or :class:`BadAnnotation` saying what is wrong.

    Every brush region must carry exactly one of the brush labels: ``lesion_label`` (``labeling.lesion_label``;
    mask value 1), or the labels of a multi-region campaign (``project.brush_labels``: label ``i`` paints
    value ``i + 1``; where two regions overlap the higher value wins). A region labelled otherwise is refused
    by name, never read as a lesion."""
    labels = [lesion_label] if isinstance(lesion_label, str) else list(lesion_label)
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
        value = r.get("value") or {}
        got_labels = [str(x) for x in value.get("brushlabels") or []]
        if len(got_labels) != 1 or got_labels[0] not in labels:
            got = f"labelled {', '.join(map(repr, got_labels))}" if got_labels else "has no label"
            want = (f"expected {labels[0]!r} (labeling.lesion_label)" if len(labels) == 1
                    else f"expected one of {', '.join(map(repr, labels))} (data.regions)")
            raise BadAnnotation(f"brush region {r.get('id')!r} {got}; {want}")
        ow, oh = r.get("original_width"), r.get("original_height")
        if ow is not None and oh is not None and (int(ow), int(oh)) != (width, height):
            raise BadAnnotation(f"brush mask is {ow}x{oh} (width x height), the image is {width}x{height}")
        if value.get("format", "rle") != "rle" or not value.get("rle"):
            raise BadAnnotation(f"brush region {r.get('id')!r} holds no RLE mask")
        try:
            painted = rle_to_mask(value["rle"], height, width) > 0
        except RLEError as err:
            raise BadAnnotation(str(err)) from None
        mask[painted] = np.maximum(mask[painted], labels.index(got_labels[0]) + 1)
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


QuarantineChange = tuple[int | None, str, Quarantine | None]  # (annotation id or None, reason, row to reuse)


def plan_quarantine(rows: list[Quarantine], bad: dict[int, str], task_reason: str | None
                    ) -> tuple[list[QuarantineChange], list[Quarantine]]:
    """What the task's quarantine rows must become: rows to open (new, changed or re-opened) and
    open rows to resolve. ``rows``: the task's rows (open and resolved); ``bad``: annotation id ->
    reason of its bad annotations now; ``task_reason``: the task-level reason now (disagreement)."""
    by_ann = {r.ls_annotation_id: r for r in rows if r.ls_annotation_id is not None}
    opens: list[QuarantineChange] = []
    for aid, reason in bad.items():
        r = by_ann.get(aid)
        if r is None or r.resolved_at is not None or r.reason != reason:
            opens.append((aid, reason, r))
    if task_reason is not None:
        match = next((r for r in rows if r.ls_annotation_id is None and r.reason == task_reason), None)
        if match is None or match.resolved_at is not None:
            opens.append((None, task_reason, match))
    resolve = [r for r in rows if r.resolved_at is None
               and (r.ls_annotation_id not in bad if r.ls_annotation_id is not None else r.reason != task_reason)]
    return opens, resolve


def _retract(s: Session, sample_id: int, task_id: int) -> int:
    """Make the sample's active human labels from Label Studio task ``task_id`` history."""
    result = s.execute(
        update(Label)
        .where(Label.sample_id == sample_id, Label.kind == "human", Label.active.is_(True),
               Label.ls_task_id == task_id)
        .values(active=False, superseded_at=utcnow())
    )
    return int(cast("CursorResult[Any]", result).rowcount or 0)  # an UPDATE's result is a CursorResult


def fetch_tasks(client: LSClient, project_id: int) -> list[dict[str, Any]]:
    """Every task of the project with its annotations and predictions (JSON export)."""
    out = client.get(f"/api/projects/{project_id}/export",
                     params={"exportType": "JSON", "download_all_tasks": "true"})
    return list(out or [])


def locked_sync(campaign: Campaign, ledger: Ledger, store: ImageStore, *, wait_s: float = 60.0,
                **kwargs: Any) -> SyncReport:
    """:func:`sync` holding the campaign lock (waiting up to ``wait_s`` s for a round or another
    sync to finish; then :class:`medloop.rounds.lock.RoundLocked`), so two syncs never apply the
    same changes twice."""
    from medloop.rounds.lock import round_lock

    with round_lock(campaign, wait_s=wait_s, purpose="Label Studio sync"):
        return sync(campaign, ledger, store, **kwargs)


def sync(
    campaign: Campaign,
    ledger: Ledger,
    store: ImageStore,
    *,
    client: LSClient | None = None,
    project_id: int | None = None,
    policy: str | None = None,
) -> SyncReport:
    """Pull finished annotations into the ledger (see the module docstring). The caller holds the
    campaign lock (:func:`locked_sync`, or a round)."""
    t0 = time.perf_counter()
    client = client or connect(campaign)
    pid = project_id or ensure_project(campaign, ledger, client, store_root=store.root)
    policy = policy or campaign.labeling.multi_annotation_policy
    if policy not in ("latest", "agreement"):
        raise ValueError(f"labeling.multi_annotation_policy: expected 'latest' or 'agreement', got {policy!r}")
    classes = list(campaign.data.classes)
    lesion_label = brush_labels(campaign)
    report = SyncReport(project_id=pid)
    tasks = fetch_tasks(client, pid)
    users: dict[int, str] | None = None

    with ledger.reading() as s:
        rows = s.execute(
            select(AnnotationTask, Sample).join(Sample, Sample.id == AnnotationTask.sample_id)
            .where(AnnotationTask.ls_task_id.is_not(None))
        ).all()
        qrows = s.scalars(select(Quarantine).where(Quarantine.ls_task_id.is_not(None))).all()
        labelled = s.execute(
            select(Label.sample_id, Label.ls_task_id)
            .where(Label.kind == "human", Label.active.is_(True), Label.ls_task_id.is_not(None))
        ).all()
        s.expunge_all()
        preds = s.execute(
            select(Prediction.sample_id, Prediction.round_id, Prediction.pred_class, Prediction.model_version)
        ).all()
    by_ls = {t.ls_task_id: (t, smp) for t, smp in rows}
    q_by_task: dict[int, list[Quarantine]] = {}
    for qr in qrows:
        q_by_task.setdefault(int(qr.ls_task_id or 0), []).append(qr)
    label_from = {(sid, tid) for sid, tid in labelled}  # (sample, task) with an active human label from it
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
        by_id = {int(a["id"]): a for a in anns}
        done = [a for a in anns if not a.get("was_cancelled")]
        bad: dict[int, str] = {}
        task_reason: str | None = None
        good: list[tuple[dict[str, Any], str, np.ndarray]] = []
        for a in done:
            try:
                cname, cmask = parse_annotation(a, classes, smp.height, smp.width, lesion_label)
            except BadAnnotation as err:
                bad[int(a["id"])] = f"task {tid}, annotation {a['id']} by {who(a)} (sample {smp.uid}): {err}"
                continue
            good.append((a, cname, cmask))

        # what the task is now: pending / skipped / quarantined / a label
        outcome: str
        name, author = "", ""
        mask: np.ndarray | None = None
        latest: dict[str, Any] | None = None
        when: datetime | None = None
        if not anns:
            outcome = "pending"
        elif not done:
            outcome = "skipped"
            latest = max(anns, key=lambda a: (a.get("updated_at") or "", a["id"]))
            when = parse_time(latest.get("updated_at"))
        elif not good:
            outcome = "quarantined"
        else:
            good.sort(key=lambda g: (g[0].get("updated_at") or "", g[0]["id"]))
            latest = good[-1][0]
            when = max(parse_time(g[0].get("updated_at")) or datetime.min for g in good)
            outcome = "label"
            if policy == "latest":
                _, name, mask = good[-1]
                author = who(latest)
            elif len({g[1] for g in good}) > 1:
                votes = ", ".join(f"{who(g[0])}: {g[1]}" for g in good)
                task_reason = (f"task {tid} (sample {smp.uid}): annotators disagree on the class ({votes}); "
                               "policy 'agreement'")
                outcome = "quarantined"
            else:
                name = good[0][1]
                stack = np.stack([g[2] for g in good]).astype(np.float32)
                mask = (stack.mean(axis=0) >= 0.5).astype(np.uint8)
                author = "+".join(dict.fromkeys(who(g[0]) for g in good))

        latest_id = None if latest is None else int(latest["id"])
        if outcome == "label":
            task_same = row.state == "completed" and row.ls_annotation_id == latest_id and row.completed_at == when
        elif outcome == "skipped":
            task_same = row.state == "skipped" and row.ls_annotation_id == latest_id
        elif outcome == "quarantined":
            task_same = row.state == "quarantined"
        else:
            task_same = row.state not in ("completed", "skipped", "quarantined")
        retract = outcome != "label" and (smp.id, tid) in label_from
        opens, resolve = plan_quarantine(q_by_task.get(tid, []), bad, task_reason)
        if outcome == "pending":
            report.pending += 1
        if task_same and not retract and not opens and not resolve:
            if outcome != "pending":
                report.unchanged += 1
            continue

        with ledger.transaction() as s:
            fresh = list(s.scalars(select(Quarantine).where(
                or_(Quarantine.ls_task_id == tid, Quarantine.ls_annotation_id.in_(list(bad))))))
            opens, resolve = plan_quarantine(fresh, bad, task_reason)
            now = utcnow()
            for aid, reason, qrow in opens:
                if qrow is None:
                    s.add(Quarantine(sample_id=smp.id, ls_task_id=tid, ls_annotation_id=aid, reason=reason))
                else:
                    qrow.reason, qrow.ls_task_id, qrow.resolved_at, qrow.resolution = reason, tid, None, None
                report.reasons.append(reason)
            if outcome == "label":
                now_is = f"the task is labelled {name!r} from annotation {latest_id}"
            else:
                now_is = {"pending": "the task has no annotation", "skipped": "the task is skipped",
                          "quarantined": "the task is quarantined"}[outcome]
            for qrow in resolve:
                aid = qrow.ls_annotation_id
                if aid is None:
                    what = "the annotations changed"
                elif aid not in by_id:
                    what = f"annotation {aid} was deleted in Label Studio"
                elif by_id[aid].get("was_cancelled"):
                    what = f"annotation {aid} was cancelled (skipped)"
                else:
                    what = f"annotation {aid} is valid now"
                qrow.resolved_at, qrow.resolution = now, f"{what}; {now_is}"
            report.quarantined += len(opens)
            report.resolved += len(resolve)

            t = s.get_one(AnnotationTask, row.id)
            if outcome != "label":
                report.labels_retracted += _retract(s, smp.id, tid)
            if outcome == "pending":
                t.state, t.ls_annotation_id, t.completed_at, t.kept_prediction = "pushed", None, None, None
            elif outcome == "skipped":
                if not task_same:
                    report.skipped += 1
                t.state, t.ls_annotation_id, t.completed_at = "skipped", latest_id, when
            elif outcome == "quarantined":
                t.state = "quarantined"
            elif not task_same:
                assert latest is not None and mask is not None and latest_id is not None
                n = s.scalar(select(func.count()).select_from(Label).where(
                    Label.sample_id == smp.id, Label.ls_annotation_id == latest_id)) or 0
                # an annotation edited again keeps its earlier mask file (the history row points at it)
                name_rel = f"human/{smp.uid}-ls{latest_id}" + (f"-v{n + 1}" if n else "")
                if smp.depth is not None:  # a volume: the annotated slice, every other voxel not annotated
                    index = t.slice_index if t.slice_index is not None else int(task["data"]["slice_index"])
                    mask_rel = store.put_volume_mask(name_rel, partial_label_map(mask, index, smp.depth))
                else:
                    mask_rel = store.put_mask(name_rel, mask)
                predicted = _predicted_class(task, row.round_id)
                if predicted is None:
                    predicted = predicted_classes.get((smp.id, row.round_id))
                add_human_label(s, smp.id, class_name=name, mask_path=mask_rel, author=author[:128],
                                ls_task_id=tid, ls_annotation_id=latest_id)
                if t.state != "completed":
                    report.labels_added += 1
                else:
                    report.labels_updated += 1
                t.state = "completed"
                t.ls_annotation_id = latest_id
                t.completed_at = when
                t.kept_prediction = None if predicted is None else (predicted == name)

    report.seconds = time.perf_counter() - t0
    return report
