"""Push the annotation queue to Label Studio: one task per queued sample, pre-annotated (a volume as
its most informative axial slice, ``labeling/volume_slices.py``; the slice is recorded in
``AnnotationTask.slice_index``).

The rounds step writes :class:`AnnotationTask` rows in state ``intent``; :func:`push_queue` turns
them into Label Studio tasks with bulk imports (one call per chunk, predictions inline) and
records ``ls_task_id`` + state ``pushed`` in one transaction per chunk. ``labeling.push_concurrency``
chunks are imported at once (for a server of several workers, ``labeling.server_workers``).

A sample is never pushed twice, also across crashes: before importing, the project's tasks are
listed and matched on ``data.sample_uid``; intents already present in Label Studio (a crash
between the import and the ledger update) are marked pushed without a new import. When Label
Studio is unreachable :class:`LabelStudioUnavailable` is raised; every chunk committed before
stays committed and the next call pushes exactly what is left.
"""

from __future__ import annotations

import functools
import io
import math
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import numpy as np
from PIL import Image
from sqlalchemy import Table, bindparam, select, update

from medloop.config import Campaign
from medloop.data.imagestore import ImageStore, mask_at, prob_map_path, prob_mask
from medloop.ledger import AnnotationTask, Ledger, Prediction, Sample
from medloop.ledger.schema import utcnow

from . import server
from .client import LSClient, connect
from .errors import LabelStudioError
from .project import CLASS_FROM, CONTEXT_TO, IMAGE_TO, LESION_FROM, UNCERTAINTY_TO, brush_labels, ensure_project
from .rle import mask_to_rle


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


@functools.lru_cache(maxsize=64)
def _resolved(root: Path) -> Path:
    return root.resolve()


def image_url(store: ImageStore, rel: str, document_root: Path) -> str:
    """The Local Storage URL of a store file: its path below ``document_root`` (the store's folder is
    resolved once; the file's own path is only normalised, which is what Label Studio serves)."""
    path = Path(os.path.normpath(_resolved(store.root) / rel))
    try:
        inside = path.relative_to(document_root)
    except ValueError:
        raise LabelStudioError(
            f"image {path} is outside Label Studio's LOCAL_FILES_DOCUMENT_ROOT {document_root}; "
            "serve the image store from a folder below the document root"
        ) from None
    return "/data/local-files/?d=" + quote(inside.as_posix(), safe="/")


def preannotation_mask(store: ImageStore, pred: Prediction | None, height: int, width: int, *,
                       regions: bool = False) -> np.ndarray | None:
    """The brush pre-annotation at the image's native size (``height`` x ``width``), or None.

    Scoring writes the model-size lesion probability (``arrays/prob/<version>/<uid>.npy``, beside the
    pixel-uncertainty map): it is resized bilinearly to the native size, then thresholded at 0.5, so
    the mask follows the lesion boundary instead of the blocks of an upscaled model-size mask. The
    predicted mask decides whether there is a lesion at all (scoring empties it when the predicted
    class has none): an empty predicted mask gives no brush region. Its ``lesion_fraction``, which
    scoring records, says so without reading the mask (a push builds one payload per task). A
    prediction without a probability map (scored before the maps were written) falls back to its mask,
    nearest-resized. A multi-region prediction (``regions``: ``data.regions``) gives each lesion pixel its
    region (nearest)."""
    if pred is None or not pred.mask_path:
        return None
    ppath = prob_map_path(pred.umap_path) if pred.umap_path else None
    known = pred.lesion_fraction is not None and math.isfinite(pred.lesion_fraction)
    if known and not regions and ppath is not None:
        if pred.lesion_fraction == 0.0:
            return None
        if store.path(ppath).exists():
            return prob_mask(store.load_array(ppath), (height, width))
    if not store.path(pred.mask_path).exists():
        return None
    labels = store.load_label_map(pred.mask_path)
    if not labels.any():
        return None
    native = None
    if ppath is not None and store.path(ppath).exists():
        native = prob_mask(store.load_array(ppath), (height, width))
    if native is None:
        return mask_at(labels, (height, width))
    if int(labels.max()) > 1:  # a multi-region label map (data.regions): each lesion pixel keeps its region
        return np.where(native > 0, np.maximum(mask_at(labels, (height, width)), 1), 0).astype(np.uint8)
    return native


def _num(v: Any, digits: int) -> float | None:
    """A finite float rounded for the task data (a JSON number the Data Manager sorts), else None."""
    if v is None:
        return None
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


# the colour scale of the uncertainty image: 0 black -> purple -> red -> orange -> pale yellow (like magma),
# as a 256-entry palette: the PNG is one byte per pixel (fast to write, small to serve)
_ANCHORS = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], np.float32)
_PALETTE = np.stack([np.interp(np.linspace(0, len(_ANCHORS) - 1, 256), np.arange(len(_ANCHORS)), _ANCHORS[:, c])
                     for c in range(3)], axis=1).round().astype(np.uint8)


def uncertainty_png(umap: np.ndarray, height: int, width: int, vmax: float, max_side: int = 512) -> np.ndarray:
    """The model's pixel-uncertainty map as palette indices (uint8, see ``_PALETTE``) for annotators:
    0 dark, ``vmax`` bright, resized bilinearly to the image's aspect (its native size, the longer side
    at most ``max_side``). The map is put on the 0-255 scale at the model's size and resized in 8 bits
    (within 1.5 of the 255 levels of resizing the floats, measured: one rounding before the resize and one
    after; at a fraction of the cost: the push builds one per task)."""
    scale = min(1.0, max_side / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    u = np.nan_to_num(np.asarray(umap, np.float32), nan=0.0)
    index = (np.clip(u * (255.0 / vmax if vmax > 0 else 255.0), 0.0, 255.0) + 0.5).astype(np.uint8)
    if index.shape == (h, w):
        return index
    return np.asarray(Image.fromarray(index).resize((w, h), Image.Resampling.BILINEAR))


def _put_palette_png(store: ImageStore, rel: str, index: np.ndarray) -> None:
    index = np.ascontiguousarray(index, dtype=np.uint8)
    im = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
    im.putpalette(_PALETTE.tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)
    store.put_bytes(rel, buf.getvalue())  # atomic: a temporary name of its own, then renamed


def uncertainty_image(campaign: Campaign, store: ImageStore, pred: Prediction | None, sample: Sample) -> str:
    """Store path of the PNG annotators see beside the image (written once per model version and
    sample, below ``images/`` so the Local Storage serves it); a grey placeholder without a map."""
    if pred is not None and pred.umap_path and store.path(pred.umap_path).exists():
        rel = f"images/uncertainty/{pred.model_version}/{sample.uid}.png"
        if not store.path(rel).exists():
            umap = store.load_array(pred.umap_path)
            vmax = max(float(np.nanmax(umap)) if umap.size else 0.0, 2 * campaign.selection.pixel_tau_u)
            _put_palette_png(store, rel, uncertainty_png(umap, sample.height, sample.width, vmax))
        return rel
    rel = "images/uncertainty/none.png"
    if not store.path(rel).exists():
        store.put_png(rel, np.full((8, 8), 128, np.uint8))
    return rel


def summary(pred_class: str | None, confidence: float | None, lesion_uncertainty: float | None,
            has_mask: bool, is_audit: bool, mask_gate: float) -> str:
    """The plain sentence annotators read first, e.g. ``model: malignant, 62 % confident; lesion
    boundary uncertain``. The lesion part uses the threshold of pseudo-masks (``selection.mask_gate``
    on the lesion uncertainty): above it the boundary is "uncertain"."""
    if pred_class is None:
        text = "no model prediction for this image"
    else:
        text = f"model: {pred_class}"
        if confidence is not None and math.isfinite(confidence):
            text += f", {round(100 * confidence)} % confident"
        if not has_mask:
            text += "; no lesion drawn"
        elif lesion_uncertainty is None or not math.isfinite(lesion_uncertainty):
            text += "; lesion drawn"
        elif lesion_uncertainty > mask_gate:
            text += "; lesion boundary uncertain"
        else:
            text += "; lesion boundary fairly certain"
    if is_audit:
        text = "AUDIT (checks an automatic label): " + text
    return text


def task_fields(task: AnnotationTask, pred: Prediction | None) -> dict[str, Any]:
    """The typed, sortable task fields of the Data Manager (JSON numbers and booleans, not text)."""
    def get(name: str) -> Any:
        return getattr(pred, name) if pred is not None else None

    return {
        "round": int(task.round_id),
        "audit": bool(task.is_audit),
        "acquisition_score": _num(task.score, 3),
        "confidence": _num(get("confidence"), 3),
        "entropy": _num(get("entropy"), 3),
        "mutual_info": _num(get("mutual_info"), 4),
        "lesion_uncertainty": _num(get("seg_uncertainty"), 4),
        "model_version": get("model_version"),
    }


def prediction_results(
    pred_class: str | None,
    mask: np.ndarray | None,
    lesion_label: str | Sequence[str],
    key: int | str,
    *,
    class_from: str = CLASS_FROM,
    lesion_from: str = LESION_FROM,
    image_to: str = IMAGE_TO,
) -> list[dict[str, Any]]:
    """The regions of a medloop pre-annotation: the class as a ``choices`` region and the native-size
    lesion mask (``mask`` (H, W), None or empty: no brush region) as ``brushlabels`` RLE regions: one labelled
    ``lesion_label``, or, given the brush labels of a multi-region campaign (``project.brush_labels``), one per
    region present (mask value ``i`` -> label ``i - 1``). ``key`` makes the region ids (``c<key>``, ``m<key>``,
    ``m<key>-<value>`` for a further region); the names default to medloop's labeling interface. Shared by
    the pushed tasks and the ML backend (``labeling/ml_backend.py``)."""
    labels = [lesion_label] if isinstance(lesion_label, str) else list(lesion_label)
    result: list[dict[str, Any]] = []
    if pred_class is not None:
        result.append({"id": f"c{key}", "from_name": class_from, "to_name": image_to, "type": "choices",
                       "value": {"choices": [pred_class]}})
    if mask is None or not mask.any():
        return result
    values = [1] if len(labels) == 1 else [int(v) for v in np.unique(mask) if 0 < v <= len(labels)]
    for v in values:
        part = mask > 0 if len(labels) == 1 else mask == v
        result.append({
            "id": f"m{key}" if v == 1 else f"m{key}-{v}", "from_name": lesion_from, "to_name": image_to,
            "type": "brushlabels", "original_width": int(mask.shape[1]), "original_height": int(mask.shape[0]),
            "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(part), "brushlabels": [labels[v - 1]]},
        })
    return result


@dataclass
class TaskView:
    """What annotators see of a sample: the image and uncertainty image (store paths), the pre-annotated
    mask at the image's size, a line before the summary and extra task fields."""

    image: str
    uncertainty: str
    mask: np.ndarray | None
    note: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    context: list[str] | None = None  # volumes: the pages to scroll through (a slice each, every sequence)


def image_view(campaign: Campaign, store: ImageStore, pred: Prediction | None, sample: Sample) -> TaskView:
    """A 2D image's task: the stored native image, its uncertainty image, the native-size pre-annotation."""
    return TaskView(sample.image_path, uncertainty_image(campaign, store, pred, sample),
                    preannotation_mask(store, pred, sample.height, sample.width, regions=bool(campaign.data.regions)))


def _volume_maps(store: ImageStore, pred: Prediction | None,
                 shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(voxel uncertainty, predicted mask, lesion probability) of a scored volume on its stored grid."""
    from medloop.data.imagestore import mask_at

    from .volume_slices import resize_map

    if pred is None or not pred.umap_path or not pred.mask_path or not store.path(pred.umap_path).exists():
        return None
    umap = resize_map(store.load_array(pred.umap_path), shape)
    mask = mask_at(store.load_label_map(pred.mask_path), shape)  # region labels kept (data.regions)
    ppath = prob_map_path(pred.umap_path)
    prob = resize_map(store.load_array(ppath), shape) if store.path(ppath).exists() else mask.astype(np.float32)
    return umap, mask, prob


def volume_slice(campaign: Campaign, store: ImageStore, pred: Prediction | None, sample: Sample,
                 maps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> int:
    """The axial slice of a queued volume that annotators get (stored grid): the most informative one
    (``labeling/volume_slices.py``), the middle slice when the volume has no scores. ``maps``: the volume's
    :func:`_volume_maps` when the caller has read them already."""
    from .volume_slices import most_informative_slice

    depth = int(sample.depth or 1)
    if maps is None:
        maps = _volume_maps(store, pred, (depth, sample.height, sample.width))
    if maps is None:
        return depth // 2
    umap, mask, prob = maps
    return most_informative_slice(umap, (mask > 0).astype(np.uint8), prob, campaign.uncertainty.boundary_band)


def sequence_name(campaign: Campaign, seq: int) -> str:
    """How the task's sentence names 0-based sequence ``seq``: its number, and its name when
    ``data.sequences`` gives one (``4 (flair)``)."""
    names = campaign.data.sequences
    return f"{seq + 1} ({names[seq]})" if names and seq < len(names) else str(seq + 1)


def volume_view(campaign: Campaign, store: ImageStore, pred: Prediction | None, sample: Sample,
                index: int | None = None) -> TaskView:
    """A volume's task: slice ``index`` (default :func:`volume_slice`) of sequence ``labeling.slice_sequence``
    (default the first), the slice of its uncertainty map, the model's mask on that slice (lesion probability
    >= 0.5 where the prediction has a lesion), and the pages to scroll through below (``labeling.context_slices``
    slices on each side, every sequence; a page per slice, written once per volume and shared by its tasks).
    The model's maps are read and resized once for all of them."""
    from medloop.config import slice_sequence_index

    from .volume_slices import context_page, context_span, slice_image

    depth = int(sample.depth or 1)
    channels = int(sample.channels or 1)
    seq = slice_sequence_index(campaign, channels, sample.uid)
    shape = (depth, sample.height, sample.width)
    maps = _volume_maps(store, pred, shape)
    if index is None:
        index = volume_slice(campaign, store, pred, sample, maps)
    image = f"images/slices/{sample.uid}/seq{seq + 1}/z{index:04d}.png"
    span = context_span(index, depth, campaign.labeling.context_slices)
    pages = [f"images/slices/{sample.uid}/context/z{k:04d}.png" for k in span]
    missing = [(k, page) for k, page in zip(span, pages) if not store.path(page).exists()]
    if missing or not store.path(image).exists():
        volume = store.load_volume(sample.image_path)
        store.put_png(image, slice_image(volume, index, seq))
        for k, page in missing:
            store.put_png(page, context_page(volume, k))
    mask = None
    uncertainty = "images/uncertainty/none.png"
    if maps is None:
        if not store.path(uncertainty).exists():
            store.put_png(uncertainty, np.full((8, 8), 128, np.uint8))
    else:
        umap, pred_mask, prob = maps
        if pred_mask.any():  # the lesion where its probability is >= 0.5, each voxel with its predicted region
            mask = np.where(prob[index] >= 0.5, np.maximum(pred_mask[index], 1), 0).astype(np.uint8)
        assert pred is not None
        uncertainty = f"images/uncertainty/{pred.model_version}/{sample.uid}-z{index:04d}.png"
        if not store.path(uncertainty).exists():
            vmax = max(float(np.nanmax(umap)) if umap.size else 0.0, 2 * campaign.selection.pixel_tau_u)
            _put_palette_png(store, uncertainty, uncertainty_png(umap[index], sample.height, sample.width, vmax))
    note = (f"axial slice {index + 1} of {depth}"
            + (f", sequence {sequence_name(campaign, seq)} of {channels}" if channels > 1 else "")
            + f" (page {index - span.start + 1} of {len(span)} below); ")
    fields = {"slice_index": int(index), "slices": depth, "context_first_slice": span.start}
    return TaskView(image, uncertainty, mask, note, fields, pages)


def build_task(
    campaign: Campaign,
    store: ImageStore,
    document_root: Path,
    task: AnnotationTask,
    sample: Sample,
    pred: Prediction | None,
    slice_index: int | None = None,
) -> dict[str, Any]:
    """The Label Studio task (data + inline prediction) for one queued sample.

    Data: the native image (a volume: its slice ``slice_index``, default :func:`volume_slice`), the
    uncertainty image beside it, the sentence annotators read, and the typed fields of :func:`task_fields`.
    Prediction: ``score`` = the model's confidence in [0, 1] (Label Studio shows it as a percentage), the
    predicted class and the native-size brush mask."""
    classes = campaign.data.classes
    pred_class = None
    if pred is not None and 0 <= pred.pred_class < len(classes):
        pred_class = classes[pred.pred_class]
    if sample.depth is not None:
        view = volume_view(campaign, store, pred, sample, slice_index)
    else:
        view = image_view(campaign, store, pred, sample)
    mask = view.mask
    has_mask = mask is not None and bool(mask.any())
    data: dict[str, Any] = {
        IMAGE_TO: image_url(store, view.image, document_root),
        UNCERTAINTY_TO: image_url(store, view.uncertainty, document_root),
        "sample_uid": sample.uid,
        "summary": view.note + summary(pred_class, None if pred is None else pred.confidence,
                                       None if pred is None else pred.seg_uncertainty, has_mask,
                                       bool(task.is_audit), campaign.selection.mask_gate),
        "predicted_class": pred_class,
        **task_fields(task, pred),
        **view.fields,
    }
    if view.context is not None:
        data[CONTEXT_TO] = [image_url(store, page, document_root) for page in view.context]
    out: dict[str, Any] = {"data": data}
    result = prediction_results(pred_class, mask if has_mask else None, brush_labels(campaign), sample.id)
    if result:
        prediction: dict[str, Any] = {"model_version": f"round-{task.round_id}", "result": result}
        confidence = None if pred is None else _num(pred.confidence, 4)
        if confidence is not None:
            prediction["score"] = min(1.0, max(0.0, confidence))
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


def _mark_pushed(ledger: Ledger, pairs: list[tuple[int, int]], slices: dict[int, int] | None = None) -> None:
    """(annotation task row id, ls task id) -> state pushed, in one transaction (one executemany);
    ``slices``: row id -> the volume slice pushed (None for images)."""
    if not pairs:
        return
    now = utcnow()
    table = cast(Table, AnnotationTask.__table__)
    stmt = (
        update(table)
        .where(table.c.id == bindparam("row_id"), table.c.state == "intent")
        .values(state="pushed", ls_task_id=bindparam("ls_id"), pushed_at=now, slice_index=bindparam("slice"))
    )
    slices = slices or {}
    with ledger.transaction() as s:
        s.connection().execute(stmt, [{"row_id": r, "ls_id": i, "slice": slices.get(r)} for r, i in pairs])


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
        # a volume's slice is a function of its scores: the one the lost import pushed
        slices = {t.id: volume_slice(campaign, store, pred, smp) for t, smp, pred in intents
                  if smp.uid in present and smp.depth is not None}
        _mark_pushed(ledger, done, slices)
        report.reconciled = len(done)
        for _, smp, _ in intents:
            if smp.uid in present:
                report.task_ids[smp.uid] = present[smp.uid]
    todo = [row for row in intents if row[1].uid not in present]
    report.remaining = len(todo)
    chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]

    def build(chunk: list) -> list[dict[str, Any]]:
        return [build_task(campaign, store, root, t, smp, pred) for t, smp, pred in chunk]

    # pipeline: the next chunk's payload is built while Label Studio imports the ones in flight
    # (labeling.push_concurrency imports at once; more than one pays with a server of several workers)
    concurrency = max(1, int(campaign.labeling.push_concurrency))
    in_flight: deque[tuple[list, list[dict[str, Any]], Future[list[int]]]] = deque()

    def record(chunk: list, payload_sent: list[dict[str, Any]], ids: list[int]) -> None:
        slices = {t.id: int(sent["data"]["slice_index"]) for (t, _, _), sent in zip(chunk, payload_sent)
                  if "slice_index" in sent["data"]}
        _mark_pushed(ledger, [(t.id, ls_id) for (t, _, _), ls_id in zip(chunk, ids)], slices)
        for (_, smp, _), ls_id in zip(chunk, ids):
            report.task_ids[smp.uid] = ls_id
        report.pushed += len(chunk)
        report.remaining -= len(chunk)
        report.chunks += 1

    def finish_oldest() -> None:
        chunk, sent, future = in_flight.popleft()
        record(chunk, sent, future.result())  # raises LabelStudioUnavailable

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ls-import") as pool:
        try:
            for chunk in chunks:
                payload = build(chunk)
                if len(in_flight) >= concurrency:
                    finish_oldest()
                in_flight.append((chunk, payload, pool.submit(import_tasks, client, pid, payload)))
            while in_flight:
                finish_oldest()
        except BaseException:
            # every import that did succeed is recorded before the error goes up (the rest stay intents)
            while in_flight:
                try:
                    finish_oldest()
                except Exception:  # noqa: BLE001 - the first error is the one raised
                    pass
            raise
    report.seconds = time.perf_counter() - t0
    return report
