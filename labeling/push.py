"""Push the annotation queue to Label Studio: one task per queued sample, pre-annotated.

The rounds step writes :class:`AnnotationTask` rows in state ``intent``; :func:`push_queue` turns
them into Label Studio tasks with bulk imports (one call per chunk, predictions inline) and
records ``ls_task_id`` + state ``pushed`` in one transaction per chunk.

A sample is never pushed twice, also across crashes: before importing, the project's tasks are
listed and matched on ``data.sample_uid``; intents already present in Label Studio (a crash
between the import and the ledger update) are marked pushed without a new import. When Label
Studio is unreachable :class:`LabelStudioUnavailable` is raised; every chunk committed before
stays committed and the next call pushes exactly what is left.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import numpy as np
from sqlalchemy import Table, bindparam, select, update

from medloop.config import Campaign
from medloop.data.imagestore import ImageStore, prob_map_path, prob_mask
from medloop.ledger import AnnotationTask, Ledger, Prediction, Sample
from medloop.ledger.schema import utcnow

from . import server
from .client import LSClient, connect
from .errors import LabelStudioError
from .project import CLASS_FROM, IMAGE_TO, LESION_FROM, ensure_project
from .rle import mask_to_rle

UNCERTAINTY_FIELDS = (
    "confidence", "std", "entropy", "mutual_info", "vacuity", "margin", "seg_uncertainty",
    "seg_uncertainty_image", "lesion_fraction",
)


@dataclass
class PushReport:
    project_id: int
    pushed: int = 0  # imported by this call
    reconciled: int = 0  # found already in Label Studio (earlier crash) and marked pushed
    remaining: int = 0  # intents still waiting
    chunks: int = 0
    seconds: float = 0.0
    task_ids: dict[str, int] = field(default_factory=dict)  # sample uid -> ls task id

    def as_dict(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "pushed": self.pushed, "reconciled": self.reconciled,
                "remaining": self.remaining, "chunks": self.chunks, "seconds": round(self.seconds, 3)}


def image_url(store: ImageStore, rel: str, document_root: Path) -> str:
    path = (store.root / rel).resolve()
    try:
        inside = path.relative_to(document_root)
    except ValueError:
        raise LabelStudioError(
            f"image {path} is outside Label Studio's LOCAL_FILES_DOCUMENT_ROOT {document_root}; "
            "serve the image store from a folder below the document root"
        ) from None
    return "/data/local-files/?d=" + quote(inside.as_posix(), safe="/")


def preannotation_mask(store: ImageStore, pred: Prediction | None, height: int, width: int) -> np.ndarray | None:
    """The brush pre-annotation at the image's native size (``height`` x ``width``), or None.

    Scoring writes the model-size lesion probability (``arrays/prob/<version>/<uid>.npy``, beside the
    pixel-uncertainty map): it is resized bilinearly to the native size, then thresholded at 0.5, so
    the mask follows the lesion boundary instead of the blocks of an upscaled model-size mask. The
    predicted mask decides whether there is a lesion at all (scoring empties it when the predicted
    class has none): an empty predicted mask gives no brush region. A prediction without a
    probability map (scored before the maps were written) falls back to its mask, nearest-resized."""
    if pred is None or not pred.mask_path or not store.path(pred.mask_path).exists():
        return None
    mask = store.load_mask(pred.mask_path)
    if not mask.any():
        return None
    if pred.umap_path:
        ppath = prob_map_path(pred.umap_path)
        if store.path(ppath).exists():
            return prob_mask(store.load_array(ppath), (height, width))
    return store.load_mask_at(pred.mask_path, (height, width))


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _uncertainty(pred: Prediction | None) -> dict[str, Any]:
    if pred is None:
        return {}
    out = {k: _finite(getattr(pred, k)) for k in UNCERTAINTY_FIELDS if getattr(pred, k) is not None}
    out["probs"] = [round(float(p), 4) for p in (pred.probs or [])]
    out["model_version"] = pred.model_version
    return out


def _info(round_id: int, is_audit: bool, score: float | None, unc: dict[str, Any], pred_class: str | None) -> str:
    parts = [f"round {round_id}"]
    if is_audit:
        parts.insert(0, "AUDIT")
    if pred_class is not None:
        parts.append(f"model says {pred_class}")
    if score is not None:
        parts.append(f"acquisition score {score:.3f}")
    for key in ("confidence", "entropy", "mutual_info", "std", "vacuity", "seg_uncertainty"):
        if unc.get(key) is not None:
            parts.append(f"{key} {unc[key]:.3f}")
    return " | ".join(parts)


def build_task(
    campaign: Campaign,
    store: ImageStore,
    document_root: Path,
    task: AnnotationTask,
    sample: Sample,
    pred: Prediction | None,
) -> dict[str, Any]:
    """The Label Studio task (data + inline prediction) for one queued sample."""
    classes = campaign.data.classes
    unc = _uncertainty(pred)
    pred_class = None
    if pred is not None and 0 <= pred.pred_class < len(classes):
        pred_class = classes[pred.pred_class]
    data = {
        IMAGE_TO: image_url(store, sample.image_path, document_root),
        "sample_uid": sample.uid,
        "round": task.round_id,
        "is_audit": bool(task.is_audit),
        "acquisition_score": _finite(task.score),
        "uncertainty": unc,
        "info": _info(task.round_id, bool(task.is_audit), task.score, unc, pred_class),
    }
    out: dict[str, Any] = {"data": data}
    result: list[dict[str, Any]] = []
    if pred_class is not None:
        result.append({"id": f"c{sample.id}", "from_name": CLASS_FROM, "to_name": IMAGE_TO, "type": "choices",
                       "value": {"choices": [pred_class]}})
    mask = preannotation_mask(store, pred, sample.height, sample.width)
    if mask is not None and mask.any():
        result.append({
            "id": f"m{sample.id}", "from_name": LESION_FROM, "to_name": IMAGE_TO, "type": "brushlabels",
            "original_width": int(mask.shape[1]), "original_height": int(mask.shape[0]), "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [campaign.labeling.lesion_label]},
        })
    if result:
        score = task.score if task.score is not None else (pred.confidence if pred is not None else None)
        prediction: dict[str, Any] = {"model_version": f"round-{task.round_id}", "result": result}
        if score is not None and math.isfinite(score):
            prediction["score"] = float(score)
        out["predictions"] = [prediction]
    return out


def _load_intents(ledger: Ledger) -> list[tuple[AnnotationTask, Sample, Prediction | None]]:
    with ledger.reading() as s:
        rows = s.execute(
            select(AnnotationTask, Sample)
            .join(Sample, Sample.id == AnnotationTask.sample_id)
            .where(AnnotationTask.state == "intent")
            .order_by(AnnotationTask.id)
        ).all()
        if not rows:
            return []
        ids = [t.sample_id for t, _ in rows]
        preds: dict[tuple[int, int], Prediction] = {}
        for i in range(0, len(ids), 500):
            for p in s.scalars(select(Prediction).where(Prediction.sample_id.in_(ids[i:i + 500]))):
                key = (p.sample_id, p.round_id)
                # prefer the round's own model version
                if key not in preds or p.model_version == f"round-{p.round_id}":
                    preds[key] = p
        s.expunge_all()
        return [(t, smp, preds.get((t.sample_id, t.round_id))) for t, smp in rows]


def _mark_pushed(ledger: Ledger, pairs: list[tuple[int, int]]) -> None:
    """(annotation task row id, ls task id) -> state pushed, in one transaction (one executemany)."""
    if not pairs:
        return
    now = utcnow()
    table = cast(Table, AnnotationTask.__table__)
    stmt = (
        update(table)
        .where(table.c.id == bindparam("row_id"), table.c.state == "intent")
        .values(state="pushed", ls_task_id=bindparam("ls_id"), pushed_at=now)
    )
    with ledger.transaction() as s:
        s.connection().execute(stmt, [{"row_id": r, "ls_id": i} for r, i in pairs])


def existing_tasks(client: LSClient, project_id: int) -> dict[str, int]:
    """sample uid -> Label Studio task id, for the tasks already in the project."""
    out: dict[str, int] = {}
    for t in client.iter_tasks(project_id, include="id,data"):
        uid = (t.get("data") or {}).get("sample_uid")
        if uid is not None:
            out.setdefault(str(uid), int(t["id"]))
    return out


def import_tasks(client: LSClient, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
    """One bulk import; returns the new task ids in the order of ``tasks``."""
    out = client.post(
        f"/api/projects/{project_id}/import",
        params={"return_task_ids": "true", "commit_to_project": "true"},
        json=tasks,
    )
    ids = [int(i) for i in (out or {}).get("task_ids", [])]
    if len(ids) != len(tasks):
        raise LabelStudioError(
            f"{client.url}: import into project {project_id} created {len(ids)} tasks for {len(tasks)} sent"
        )
    return ids


def push_queue(
    campaign: Campaign,
    ledger: Ledger,
    store: ImageStore,
    *,
    client: LSClient | None = None,
    project_id: int | None = None,
    document_root: str | Path | None = None,
    chunk_size: int = 500,
) -> PushReport:
    """Push every ``intent`` AnnotationTask to Label Studio (see the module docstring)."""
    t0 = time.perf_counter()
    client = client or connect(campaign)
    pid = project_id or ensure_project(campaign, ledger, client, store_root=store.root)
    root = Path(document_root).resolve() if document_root is not None else server.document_root(campaign)
    report = PushReport(project_id=pid)
    intents = _load_intents(ledger)
    if not intents:
        report.seconds = time.perf_counter() - t0
        return report
    # reconcile: a crash between an import and its ledger update leaves tasks in LS but intents here
    present = existing_tasks(client, pid)
    done = [(t.id, present[smp.uid]) for t, smp, _ in intents if smp.uid in present]
    if done:
        _mark_pushed(ledger, done)
        report.reconciled = len(done)
        for _, smp, _ in intents:
            if smp.uid in present:
                report.task_ids[smp.uid] = present[smp.uid]
    todo = [row for row in intents if row[1].uid not in present]
    report.remaining = len(todo)
    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]

    def build(chunk: list) -> list[dict[str, Any]]:
        return [build_task(campaign, store, root, t, smp, pred) for t, smp, pred in chunk]

    # pipeline: the next chunk's payload is built while Label Studio imports the current one
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ls-import") as pool:
        payload = build(chunks[0]) if chunks else []
        for k, chunk in enumerate(chunks):
            future = pool.submit(import_tasks, client, pid, payload)
            payload = build(chunks[k + 1]) if k + 1 < len(chunks) else []
            ids = future.result()  # raises LabelStudioUnavailable: earlier chunks stay committed
            _mark_pushed(ledger, [(t.id, ls_id) for (t, _, _), ls_id in zip(chunk, ids)])
            for (_, smp, _), ls_id in zip(chunk, ids):
                report.task_ids[smp.uid] = ls_id
            report.pushed += len(chunk)
            report.remaining -= len(chunk)
            report.chunks += 1
    report.seconds = time.perf_counter() - t0
    return report
