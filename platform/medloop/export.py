"""``medloop export``: a campaign's labels, with their provenance, as a dataset people use elsewhere.

Two layouts:

* ``generic`` (default): ``images/<name>.png`` (the stored image, native size, bytes as stored),
  ``masks/<name>.png`` (0/255, the image's size), ``labels.csv`` whose first two columns are
  ``image,label`` (what ``medloop ingest generic`` reads) followed by the provenance columns of
  :data:`COLUMNS`, and ``export.json`` (what was exported, from which campaign, when).
  ``medloop ingest generic`` reads it back exactly: the same pixels, classes and masks.
* ``labelstudio``: ``tasks.json`` (Label Studio's import format: human labels as annotations, pseudo
  labels as predictions, class choice + brush RLE with the names of the campaign's labeling
  interface, see :mod:`medloop.labeling.export_tasks`), ``label_config.xml``, ``images/``, ``export.json``.

What is exported: the ACTIVE human label of every sample (history rows, superseded, are counted in
``earlier_versions``, not exported). ``include_pseudo`` adds the active pseudo-label of samples that
have no human label: a human label always wins. Hidden ``truth`` labels (benchmark oracles) are never
exported.

Read-only: the ledger is opened read-only (SQLite ``mode=ro``), nothing is created when the campaign
or its ledger is missing, and the store is only read. The export is written to a temporary folder
beside ``out`` and renamed into place at the end: an error leaves no half-written export, and an
existing ``out`` is replaced only with ``force``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import Engine, and_, func, select

from .config import Campaign
from .data.imagestore import ImageStore, binarise, mask_at, read_file, write_file
from .ledger import readonly
from .ledger.schema import SCHEMA_VERSION, AnnotationTask, Label, Meta, Sample
from .ledger.store import LedgerMissing, display_url, sqlite_file

FORMATS = ("generic", "labelstudio")
INCLUDES = ("pseudo",)

#: labels.csv columns: ``image,label`` first (``medloop ingest generic`` reads those), then provenance
COLUMNS: tuple[str, ...] = (
    "image",  # file name under images/
    "label",  # class name; blank: no class label (a mask-only label)
    "mask",  # file name under masks/; blank: the label has no mask
    "kind",  # human / pseudo
    "author",  # annotator (Label Studio e-mail), "dataset:<format>" for ingested labels, "round-N/<selector>"
    "round",  # pseudo: the round that made it
    "selector",  # pseudo: the selection policy (e.g. ups)
    "thresholds",  # pseudo: the thresholds it passed (JSON)
    "ls_task_id",  # the Label Studio task the label came from (or the audit task of a pseudo-label)
    "ls_annotation_id",
    "audit",  # blank, or the audit of a pseudo-label: pending / agreed / disagreed / answered / skipped / quarantined
    "audit_pseudo_class",  # the audited pseudo-label's class (what the human answer is compared with)
    "created_at",  # when the label was recorded (UTC, ISO 8601)
    "earlier_versions",  # superseded labels of the same kind for this sample (history kept in the ledger)
    "ignore_mask",  # pseudo: file under ignore/ (0/255, 255 = pixels without loss), blank otherwise
    "sample_uid",
    "split",
    "source",
    "original_path",
    "height",
    "width",
)

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ExportError(RuntimeError):
    """The export cannot be made; the message names the path, key or file and what was expected."""


def file_stem(uid: str, sample_id: int) -> str:
    """The exported file stem: the sample uid when it is a plain file name, else ``sample-<id>``."""
    return uid if _SAFE_NAME.fullmatch(uid) else f"sample-{sample_id}"


@dataclass
class ExportLabel:
    """One exported label: the ledger's row, its sample, and the provenance gathered around it."""

    label_id: int
    sample_id: int
    kind: str
    class_name: str | None
    mask_path: str | None
    ignore_path: str | None
    author: str | None
    round_id: int | None
    selector: str | None
    thresholds: dict[str, Any] | None
    ls_task_id: int | None
    ls_annotation_id: int | None
    created_at: datetime | None
    uid: str
    image_path: str
    split: str
    source: str
    original_path: str | None
    height: int
    width: int
    earlier_versions: int = 0
    audit: str = ""
    audit_pseudo_class: str | None = None

    name: str = ""  # the exported file stem (see :func:`file_stem`)

    def __post_init__(self) -> None:
        self.name = file_stem(self.uid, self.sample_id)


@dataclass
class ExportReport:
    """What an export wrote."""

    out: str
    format: str
    kinds: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    masks: int = 0
    resized_masks: int = 0  # model-size pseudo-masks (or older masks) resized to the image's size
    pseudo_left_out: int = 0  # active pseudo-labels not exported (no --include pseudo, or a human label wins)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> int:
        return sum(self.kinds.values())

    def as_dict(self) -> dict[str, Any]:
        return {"out": self.out, "format": self.format, "labels": self.labels, "kinds": self.kinds,
                "classes": self.classes, "masks": self.masks, "resized_masks": self.resized_masks,
                "pseudo_left_out": self.pseudo_left_out, "seconds": round(self.seconds, 3), "notes": self.notes}

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items())) or "none"
        lines = [f"exported {self.labels} label(s) ({kinds}; {self.masks} with a mask) as {self.format} to {self.out}"
                 f" in {self.seconds:.1f} s"]
        if self.classes:
            lines.append("  classes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.classes.items())))
        if self.pseudo_left_out:
            lines.append(f"  {self.pseudo_left_out} active pseudo-label(s) not exported"
                         + ("" if "pseudo" in self.kinds else " (add --include pseudo)"))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---- reading the campaign (read-only) ----------------------------------------------------------------


def open_readonly(campaign: Campaign) -> Engine:
    """An engine that can only read the campaign's ledger; :class:`ExportError` when the campaign or
    its ledger does not exist (nothing is created) or is not a medloop ledger this version reads."""
    url = campaign.ledger
    path = sqlite_file(url)
    if path is not None:
        if not campaign.folder.is_dir():
            raise ExportError(f"campaign {campaign.name!r}: folder {campaign.folder} not found; nothing to export "
                              "(ingest a dataset first, or pass the campaign's --config)")
        if not path.is_file():
            raise ExportError(f"campaign {campaign.name!r}: no ledger at {path}; nothing to export "
                              "(ingest a dataset first, or pass the campaign's --config)")
    try:
        engine = readonly.open_readonly(url, tables=("samples", "labels", "meta"))
    except LedgerMissing as err:
        raise ExportError(str(err)) from None
    try:
        with engine.connect() as conn:
            version = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
    except Exception as err:  # noqa: BLE001 - any driver error becomes a message naming the ledger
        engine.dispose()
        raise ExportError(f"{display_url(url)}: the ledger cannot be read ({err})") from None
    if version is not None and int(version) > SCHEMA_VERSION:
        engine.dispose()
        raise ExportError(f"{display_url(url)}: ledger schema version {version} is newer than this medloop "
                          f"(reads {SCHEMA_VERSION}); upgrade medloop")
    return engine


def _audit_result(kind: str, class_name: str | None, state: str, pseudo_class: str | None) -> str:
    """The audit column: the task's state until answered, then whether the human kept the pseudo class."""
    if kind == "human" and state == "completed":
        if pseudo_class is None or class_name is None:
            return "answered"
        return "agreed" if class_name == pseudo_class else "disagreed"
    return "pending" if state in ("intent", "pushed") else state


def load_labels(engine: Engine, include_pseudo: bool) -> tuple[list[ExportLabel], int]:
    """The labels to export (see the module docstring), in sample order, and the number of active
    pseudo-labels left out. A few bulk queries, whatever the campaign's size."""
    lab, smp = Label.__table__, Sample.__table__
    tasks = AnnotationTask.__table__
    kinds = ("human", "pseudo")
    with engine.connect() as conn:
        rows = conn.execute(
            select(lab.c.id, lab.c.sample_id, lab.c.kind, lab.c.class_name, lab.c.mask_path, lab.c.ignore_path,
                   lab.c.author, lab.c.round_id, lab.c.selector, lab.c.thresholds, lab.c.ls_task_id,
                   lab.c.ls_annotation_id, lab.c.created_at, smp.c.uid, smp.c.image_path, smp.c.split,
                   smp.c.source, smp.c.original_path, smp.c.height, smp.c.width)
            .join(smp, smp.c.id == lab.c.sample_id)
            .where(lab.c.active.is_(True), lab.c.kind.in_(kinds))
            .order_by(lab.c.sample_id, lab.c.id)
        ).all()
        history = {(sid, kind): int(n) for sid, kind, n in conn.execute(
            select(lab.c.sample_id, lab.c.kind, func.count())
            .where(lab.c.active.is_(False), lab.c.kind.in_(kinds))
            .group_by(lab.c.sample_id, lab.c.kind))}
        task_of = {r.sample_id: r for r in conn.execute(
            select(tasks.c.sample_id, tasks.c.round_id, tasks.c.state, tasks.c.is_audit, tasks.c.ls_task_id))}
        audited = {(sid, rid): cls for sid, rid, cls in conn.execute(
            select(lab.c.sample_id, lab.c.round_id, lab.c.class_name)
            .join(tasks, and_(tasks.c.sample_id == lab.c.sample_id, tasks.c.round_id == lab.c.round_id))
            .where(tasks.c.is_audit.is_(True), lab.c.kind == "pseudo"))}
    chosen: dict[int, Any] = {}
    pseudo_active = 0
    for r in rows:  # ordered by label id: a (rule-breaking) second active label of a kind: the newest
        pseudo_active += r.kind == "pseudo"
        have = chosen.get(r.sample_id)
        if have is None or have.kind == r.kind or r.kind == "human":
            chosen[r.sample_id] = r
    out: list[ExportLabel] = []
    for sid, r in chosen.items():
        if r.kind == "pseudo" and not include_pseudo:
            continue
        item = ExportLabel(
            label_id=r.id, sample_id=sid, kind=r.kind, class_name=r.class_name, mask_path=r.mask_path,
            ignore_path=r.ignore_path if r.kind == "pseudo" else None, author=r.author, round_id=r.round_id,
            selector=r.selector, thresholds=r.thresholds, ls_task_id=r.ls_task_id,
            ls_annotation_id=r.ls_annotation_id, created_at=r.created_at, uid=r.uid, image_path=r.image_path,
            split=r.split, source=r.source, original_path=r.original_path, height=int(r.height),
            width=int(r.width), earlier_versions=history.get((sid, r.kind), 0),
        )
        task = task_of.get(sid)
        if task is not None:
            if item.ls_task_id is None:
                item.ls_task_id = task.ls_task_id
            if task.is_audit:
                item.audit_pseudo_class = audited.get((sid, task.round_id))
                item.audit = _audit_result(item.kind, item.class_name, task.state, item.audit_pseudo_class)
        out.append(item)
    left_out = pseudo_active - sum(1 for x in out if x.kind == "pseudo")
    return out, left_out


# ---- files ---------------------------------------------------------------------------------------------


def png_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG's IHDR chunk, or None when ``data`` is not a PNG."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")


def _encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _read(store: ImageStore, rel: str, what: str, item: ExportLabel) -> bytes:
    try:
        return read_file(os.path.join(store.root, rel))  # plain strings and os calls: this runs per file
    except OSError as err:
        raise ExportError(f"sample {item.uid}: {what} {store.path(rel)} cannot be read ({err.strerror or err}); "
                          "the store does not match the ledger") from None


def image_bytes(store: ImageStore, item: ExportLabel) -> tuple[bytes, tuple[int, int]]:
    """The stored image as PNG bytes (as stored: no decode, no re-encode) and its (height, width)."""
    data = _read(store, item.image_path, "image", item)
    size = png_size(data)
    if size is None:  # not a PNG (never written by medloop's store): decode and re-encode losslessly
        try:
            with Image.open(io.BytesIO(data)) as im:
                array = np.asarray(im)
        except Exception as err:  # noqa: BLE001 - any decoder error names the file
            raise ExportError(f"sample {item.uid}: image {store.path(item.image_path)} cannot be decoded ({err})"
                              ) from None
        data, size = _encode_png(array), (int(array.shape[0]), int(array.shape[1]))
    return data, size


def load_mask(store: ImageStore, rel: str, size: tuple[int, int], item: ExportLabel, what: str,
              data: bytes | None = None, labels: bool = False) -> tuple[np.ndarray, bool]:
    """A stored mask (PNG, or a ``.npy`` ignore map) as uint8 {0, 1} at ``size`` = (height, width), the
    image's (nearest; pseudo-masks are stored at the model's size), and whether it was resized. ``labels``:
    a multi-region label map keeps its labels (255, the binary masks' lesion, reads as 1)."""
    data = _read(store, rel, what, item) if data is None else data
    try:
        if rel.endswith(".npy"):
            mask = binarise(np.load(io.BytesIO(data), allow_pickle=False))
        else:
            with Image.open(io.BytesIO(data)) as im:
                raw = np.asarray(im)
            mask = np.where(raw == 255, 1, raw).astype(np.uint8) if labels and raw.ndim == 2 else binarise(raw)
    except Exception as err:  # noqa: BLE001 - any decoder error names the file
        raise ExportError(f"sample {item.uid}: {what} {store.path(rel)} cannot be decoded ({err})") from None
    if mask.ndim != 2:
        raise ExportError(f"sample {item.uid}: {what} {store.path(rel)} has shape {mask.shape}, expected (H, W)")
    return mask_at(mask, size), mask.shape != size


def mask_bytes(store: ImageStore, rel: str, size: tuple[int, int], item: ExportLabel, what: str) -> tuple[bytes, bool]:
    """A stored mask as a PNG at ``size`` (the image's): the stored bytes when they already are a PNG of
    that size (human and dataset masks: 0/255, or region labels), else decoded, resized (nearest) and encoded
    as 0/255, or as its region labels 1..R (``data.regions``). Returns (PNG bytes, resized)."""
    data = _read(store, rel, what, item)
    if png_size(data) == size:
        return data, False
    mask, resized = load_mask(store, rel, size, item, what, data, labels=True)
    return _encode_png(mask if int(mask.max(initial=0)) > 1 else mask * np.uint8(255)), resized


@dataclass
class _Written:
    item: ExportLabel
    mask: bool
    resized: bool
    ignore: bool
    size: tuple[int, int]


def _write_files(store: ImageStore, tmp: Path, item: ExportLabel, masks: bool) -> _Written:
    """Write one label's image (and, for the generic layout, its mask and ignore map) under ``tmp``."""
    data, size = image_bytes(store, item)
    file = f"{item.name}.png"
    write_file(os.path.join(tmp, "images", file), data)
    wrote_mask = resized = ignore = False
    if masks and item.mask_path:
        mdata, resized = mask_bytes(store, item.mask_path, size, item, "mask")
        write_file(os.path.join(tmp, "masks", file), mdata)
        wrote_mask = True
    if masks and item.ignore_path:
        idata, _ = mask_bytes(store, item.ignore_path, size, item, "ignore map")
        write_file(os.path.join(tmp, "ignore", file), idata)
        ignore = True
    return _Written(item, wrote_mask, resized, ignore, size)


def _each(fn: Any, items: Sequence[ExportLabel], progress: Any, description: str) -> Iterator[Any]:
    """``fn(item)`` for every item, in order. One thread: the work is creating small files, and threads
    creating files in one folder wait on each other (measured: slower, wall and CPU, on ext4)."""
    task = None if progress is None else progress.add_task(description, total=len(items))
    for item in items:
        yield fn(item)
        if task is not None:
            progress.advance(task)


def _csv_row(w: _Written) -> list[str]:
    x = w.item

    def s(v: Any) -> str:
        return "" if v is None else str(v)

    return [
        f"{x.name}.png", s(x.class_name), f"{x.name}.png" if w.mask else "", x.kind, s(x.author), s(x.round_id),
        s(x.selector), "" if x.thresholds is None else json.dumps(x.thresholds, sort_keys=True), s(x.ls_task_id),
        s(x.ls_annotation_id), x.audit, s(x.audit_pseudo_class),
        "" if x.created_at is None else x.created_at.isoformat(), str(x.earlier_versions),
        f"{x.name}.png" if w.ignore else "", x.uid, x.split, x.source, s(x.original_path), str(w.size[0]),
        str(w.size[1]),
    ]


def write_generic(store: ImageStore, tmp: Path, items: Sequence[ExportLabel], progress: Any = None) -> list[_Written]:
    """images/, masks/, ignore/ and labels.csv (``COLUMNS``) under ``tmp``."""
    for sub in ("images", "masks") + (("ignore",) if any(x.ignore_path for x in items) else ()):
        (tmp / sub).mkdir()
    written = list(_each(lambda x: _write_files(store, tmp, x, True), items, progress, "exporting labels"))
    with (tmp / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(_csv_row(w) for w in written)
    return written


def write_labelstudio(
    campaign: Campaign, store: ImageStore, tmp: Path, items: Sequence[ExportLabel], image_url: str,
    progress: Any = None,
) -> list[_Written]:
    """tasks.json (Label Studio's import format), label_config.xml and images/ under ``tmp``."""
    from medloop.labeling.export_tasks import NO_UNCERTAINTY, export_task
    from medloop.labeling.project import label_config

    (tmp / "images").mkdir()
    (tmp / "images" / NO_UNCERTAINTY).write_bytes(_encode_png(np.full((8, 8), 128, np.uint8)))
    written = list(_each(lambda x: _write_files(store, tmp, x, False), items, progress, "copying images"))

    def task(w: _Written) -> dict[str, Any]:
        x = w.item
        mask = None
        if x.mask_path:
            mask, w.resized = load_mask(store, x.mask_path, w.size, x, "mask")
            w.mask = True
        return export_task(campaign, kind=x.kind, class_name=x.class_name, mask=mask,
                           image=image_url + f"{x.name}.png", data=_provenance(x), author=x.author,
                           region_id=f"{x.kind[0]}{x.label_id}", uncertainty_image=image_url + NO_UNCERTAINTY)

    tasks = [task(w) for w in _track(progress, written, "encoding tasks")]
    with (tmp / "tasks.json").open("w", encoding="utf-8") as fh:
        json.dump(tasks, fh)
    (tmp / "label_config.xml").write_text(label_config(campaign), encoding="utf-8")
    return written


def _track(progress: Any, items: Sequence[_Written], description: str) -> Iterator[_Written]:
    task = None if progress is None else progress.add_task(description, total=len(items))
    for w in items:
        yield w
        if task is not None:
            progress.advance(task)


def _provenance(x: ExportLabel) -> dict[str, Any]:
    """The provenance columns of one label, as typed values (the task data of the labelstudio layout)."""
    return {
        "kind": x.kind, "author": x.author, "round": x.round_id, "selector": x.selector, "thresholds": x.thresholds,
        "ls_task_id": x.ls_task_id, "ls_annotation_id": x.ls_annotation_id, "audit": x.audit or None,
        "audit_pseudo_class": x.audit_pseudo_class,
        "created_at": None if x.created_at is None else x.created_at.isoformat(),
        "earlier_versions": x.earlier_versions, "sample_uid": x.uid, "split": x.split, "source": x.source,
        "original_path": x.original_path,
    }


# ---- the export as a whole ------------------------------------------------------------------------------


def _is_within(path: Path, other: Path) -> bool:
    return path == other or path.is_relative_to(other)


def check_target(campaign: Campaign, out: Path, force: bool) -> Path:
    """The resolved target; :class:`ExportError` when it exists (without ``force``) or would replace or
    write into the campaign's own files (its folder or an ancestor, the store, the ledger)."""
    target = out.expanduser().resolve()
    folder, store = campaign.folder.resolve(), campaign.store.resolve()
    ledger_file = sqlite_file(campaign.ledger)
    guarded = [folder, store] + ([ledger_file.resolve()] if ledger_file is not None else [])
    for g in guarded:
        if _is_within(g, target):
            raise ExportError(f"--out {out}: holds the campaign's own files ({g}); choose another folder")
    if _is_within(target, store):
        raise ExportError(f"--out {out}: lies inside the campaign's image store {store}; choose another folder")
    if (target.exists() or target.is_symlink()) and not force:
        raise ExportError(f"--out {target}: already exists (use --force to replace it)")
    return target


def default_image_url(campaign: Campaign, target: Path) -> tuple[str, str | None]:
    """Where Label Studio finds the exported images: a Local Storage URL when ``target`` lies below its
    document root (``labeling.document_root``, else the campaign folder), else a path relative to the
    export (with a note saying how to serve them)."""
    from urllib.parse import quote

    from medloop.labeling.server import document_root

    root = document_root(campaign)
    if target.is_relative_to(root):
        rel = (target / "images").relative_to(root).as_posix()
        return "/data/local-files/?d=" + quote(rel, safe="/") + "/", None
    return "images/", (f"the export is outside Label Studio's document root {root}: data.image holds paths "
                       "relative to the export (images/<name>.png); export below the document root, or pass "
                       "--image-url with the address the images are served from")


def _manifest(campaign: Campaign, report: ExportReport, include_pseudo: bool, image_url: str | None) -> dict:
    return {
        "medloop_export": 1,
        "campaign": campaign.name,
        "ledger": display_url(campaign.ledger),
        "format": report.format,
        "include": ["human"] + (["pseudo"] if include_pseudo else []),
        "classes": list(campaign.data.classes),
        "channels": campaign.data.channels,
        "labels": report.labels,
        "kinds": report.kinds,
        "masks": report.masks,
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "columns": list(COLUMNS) if report.format == "generic" else None,
        "image_url": image_url,
        "reingest": "medloop ingest generic <this folder> (first two labels.csv columns: image,label)"
        if report.format == "generic" else None,
    }


def export_campaign(
    campaign: Campaign,
    out: str | Path,
    *,
    fmt: str = "generic",
    include_pseudo: bool = False,
    force: bool = False,
    image_url: str | None = None,
    progress: bool = False,
) -> ExportReport:
    """Export the campaign's labels to ``out`` (see the module docstring); returns what was written."""
    from medloop.data.ingest import _progress

    t0 = time.perf_counter()
    if fmt not in FORMATS:
        raise ExportError(f"--format: expected one of {', '.join(FORMATS)} (got {fmt!r})")
    target = check_target(campaign, Path(out), force)
    engine = open_readonly(campaign)
    try:
        items, left_out = load_labels(engine, include_pseudo)
    finally:
        engine.dispose()
    report = ExportReport(out=str(target), format=fmt, pseudo_left_out=left_out)
    store = ImageStore(campaign.store)
    names = Counter(x.name for x in items)
    if any(n > 1 for n in names.values()):  # sample uids are unique; only sanitised names could clash
        raise ExportError(f"two samples export to the same file name: {[k for k, n in names.items() if n > 1][:3]}")
    tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as err:
        raise ExportError(f"--out {target}: cannot write there ({err.strerror or err})") from None
    try:
        with _progress(progress) as bar:
            if fmt == "generic":
                written = write_generic(store, tmp, items, bar)
            else:
                if image_url is None:
                    image_url, note = default_image_url(campaign, target)
                    if note:
                        report.notes.append(note)
                written = write_labelstudio(campaign, store, tmp, items, image_url, bar)
        report.kinds = dict(Counter(x.kind for x in items))
        report.classes = dict(Counter(x.class_name or "(mask only)" for x in items))
        report.masks = sum(w.mask for w in written)
        report.resized_masks = sum(w.resized for w in written)
        (tmp / "export.json").write_text(json.dumps(_manifest(campaign, report, include_pseudo, image_url),
                                                    indent=2) + "\n")
        _replace(tmp, target, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - t0
    return report


def _replace(tmp: Path, target: Path, force: bool) -> None:
    """Rename the finished export into place; an existing target (``force``) is moved aside first and
    removed only once the new export is in place."""
    if not (target.exists() or target.is_symlink()):
        os.rename(tmp, target)
        return
    if not force:
        raise ExportError(f"--out {target}: already exists (use --force to replace it)")
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    os.rename(target, old)
    os.rename(tmp, target)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
