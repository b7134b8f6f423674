"""An oracle annotator for the demo and benchmarks: it answers queued cases from hidden truth.

Directly (labeling disabled): each open task whose sample has a ``truth`` label gets a human label
with author ``"oracle"`` and the task becomes ``completed``, in the caller's transaction.
Through Label Studio (labeling enabled): the oracle posts an annotation on every pushed task via
the SDK, as an annotator would; the labels then arrive through ``medloop.labeling.sync``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from medloop.config import Campaign
from medloop.ledger.schema import AnnotationTask, Label, Prediction, utcnow
from medloop.ledger.store import active_label, add_human_label

ORACLE_AUTHOR = "oracle"


def _latest_prediction(session: Session, sample_id: int) -> Prediction | None:
    return session.scalars(
        select(Prediction).where(Prediction.sample_id == sample_id).order_by(Prediction.round_id.desc())
    ).first()


def open_tasks(session: Session, states: tuple[str, ...] = ("intent", "pushed")) -> list[AnnotationTask]:
    query = select(AnnotationTask).where(AnnotationTask.state.in_(states)).order_by(AnnotationTask.id)
    return list(session.scalars(query))


def answer_directly(session: Session, campaign: Campaign) -> dict[str, Any]:
    """Answer every open task from the hidden truth, in ``session`` (idempotent: completed tasks are skipped)."""
    classes = campaign.data.classes
    answered = no_truth = kept = 0
    for task in open_tasks(session):
        truth = active_label(session, task.sample_id, "truth")
        if truth is None:
            no_truth += 1
            continue
        add_human_label(
            session, task.sample_id, class_name=truth.class_name, mask_path=truth.mask_path,
            author=ORACLE_AUTHOR, ls_task_id=task.ls_task_id,
        )
        pred = _latest_prediction(session, task.sample_id)
        if pred is not None and truth.class_name in classes:
            task.kept_prediction = classes.index(truth.class_name) == pred.pred_class
            kept += int(bool(task.kept_prediction))
        task.state, task.completed_at = "completed", utcnow()
        answered += 1
    return {"oracle_answered": answered, "oracle_no_truth": no_truth, "oracle_kept_prediction": kept}


def truth_answers(session: Session, tasks: list[AnnotationTask]) -> list[tuple[AnnotationTask, Label]]:
    """(task, truth label) pairs for the tasks that have hidden truth."""
    out = []
    for task in tasks:
        truth = active_label(session, task.sample_id, "truth")
        if truth is not None:
            out.append((task, truth))
    return out


def annotation_result(campaign: Campaign, class_name: str | None, mask: Any | None) -> list[dict[str, Any]]:
    """A Label Studio annotation result (class choice + brush mask), as the labeling UI would send: one brush
    region labelled ``labeling.lesion_label``, or one per region of a multi-region campaign (``data.regions``;
    mask value ``i`` is label ``i - 1``)."""
    from medloop.labeling.project import CLASS_FROM, IMAGE_TO, LESION_FROM, brush_labels
    from medloop.labeling.rle import mask_to_rle

    labels = brush_labels(campaign)
    result: list[dict[str, Any]] = []
    if class_name is not None:  # a mask-only truth: no choice (sync then quarantines it: no class)
        result.append({"from_name": CLASS_FROM, "to_name": IMAGE_TO, "type": "choices",
                       "value": {"choices": [class_name]}})
    if mask is None or not mask.any():
        return result
    values = [1] if len(labels) == 1 else [int(v) for v in np.unique(mask) if 0 < v <= len(labels)]
    for v in values:
        part = (mask > 0) if len(labels) == 1 else (mask == v)
        result.append({"from_name": LESION_FROM, "to_name": IMAGE_TO, "type": "brushlabels",
                       "original_width": int(mask.shape[1]), "original_height": int(mask.shape[0]),
                       "image_rotation": 0,
                       "value": {"format": "rle", "rle": mask_to_rle(part), "brushlabels": [labels[v - 1]]}})
    return result


def answer_via_labelstudio(campaign: Campaign, ledger: Any, store: Any) -> dict[str, Any]:
    """Post the truth as annotations on pushed tasks (Label Studio API, as an annotator), then sync."""
    from medloop.labeling.client import connect
    from medloop.labeling.pull import sync

    with ledger.reading() as s:
        pairs = [(t.ls_task_id, truth.class_name, truth.mask_path, t.slice_index)
                 for t, truth in truth_answers(s, open_tasks(s, ("pushed",))) if t.ls_task_id is not None]
    client = connect(campaign)
    posted = 0
    for ls_task_id, class_name, mask_path, slice_index in pairs:
        existing = client.get(f"/api/tasks/{ls_task_id}/annotations/")
        if existing:  # answered already (a resumed push): never annotate twice
            continue
        mask = store.load_label_map(mask_path) if mask_path else None  # region labels kept (data.regions)
        if mask is not None and mask.ndim == 3:  # a volume's task shows one slice: the truth on that slice
            mask = np.where(mask == 255, 0, mask)[int(slice_index if slice_index is not None else len(mask) // 2)]
        client.post(f"/api/tasks/{ls_task_id}/annotations/",
                    json={"result": annotation_result(campaign, class_name, mask), "was_cancelled": False})
        posted += 1
    synced = sync(campaign, ledger, store, client=client)
    return {"oracle_posted": posted, "sync": _as_dict(synced)}


def _as_dict(obj: Any) -> Any:
    if obj is None or isinstance(obj, (dict, int, float, str)):
        return obj
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return {k: v for k, v in asdict(obj).items() if isinstance(v, (int, float, str, bool, type(None)))}
    return str(obj)
