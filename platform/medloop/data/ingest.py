"""``ingest(campaign, fmt, path)``: validate a dataset, then register it in the ledger and the image store.

Order of work: walk the folder, read every file (bad ones collected with the reason), and only
then write. Without ``skip_bad`` a single bad file stops everything before anything is written.
Cases are deduplicated by the hash of their pixels and mask, so ingesting twice changes nothing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
from PIL import Image
from sqlalchemy import Table, func, insert, select
from sqlalchemy.orm import Session

from ..config import Campaign
from ..ledger import Label, Ledger, Sample
from ..ledger.schema import utcnow
from .cpus import usable_cpus
from .errors import BadFile, DataError, FileError, IngestError
from .imagestore import ImageStore, content_hash
from .records import Item, Record, SamePNG, is_deep

FORMATS = ("synthetic", "busi", "generic")


@dataclass
class Prepared:
    """A record normalised for the store: image (campaign channels) and mask at the image's native
    size, and its case hash. From a reader process, the image and mask arrays are None where their
    PNG's bytes stand for them (``image_png.data``, ``mask_png.data``: what the store writes)."""

    uid: str
    case_hash: str
    image_hash: str
    image: np.ndarray | None
    mask: np.ndarray | None
    class_name: str | None
    original_path: str | None
    mode: str = "L"  # the file's PIL mode (deeper than 8 bits: rescaled, see records.decode_image)
    notes: list[str] = field(default_factory=list)  # warnings about this case, each naming the file
    image_png: SamePNG | None = None  # a PNG file holding ``image`` exactly: stored by copying its bytes
    mask_png: SamePNG | None = None  # a 0/255 grey PNG file holding ``mask`` exactly
    thumb: np.ndarray | None = None  # the near-duplicate thumbnail (float32), when a reader worker made it
    shape: tuple[int, ...] = ()  # the image's (height, width[, channels])

    @property
    def pixels(self) -> np.ndarray:
        """The image array (always held when read in this process; see :meth:`as_bytes`)."""
        return _array(self.image, self)

    @property
    def has_mask(self) -> bool:
        return self.mask is not None or self.mask_png is not None

    def as_bytes(self) -> None:
        """Drop the arrays whose PNG bytes are held (a reader process sends the smaller, cheaper-to-unpickle
        bytes; the store writes them as they are)."""
        if self.image_png is not None and self.image_png.data is not None:
            self.image = None
        if self.mask_png is not None and self.mask_png.data is not None:
            self.mask = None


#: below this many files ingest reads in its own process (starting workers costs about half a second each)
PARALLEL_MIN_FILES = 2000


def default_workers() -> int:
    """Reader processes ``medloop ingest`` uses: the CPUs this process may run on, at most 8."""
    return min(8, usable_cpus())


@dataclass
class IngestReport:
    """What an ingest did: counts by split and class, duplicates, and the files left out."""

    source: str
    path: str | None
    found: int = 0
    added: int = 0
    duplicates: int = 0
    bad: list[BadFile] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    duplicate_groups: int = 0  # near-duplicate groups (>= 2 images) among the added cases and their matches
    duplicate_images: int = 0  # images in those groups
    volumes: bool = False  # the dataset holds volumes (NIfTI / DICOM series), see volume_ingest
    patient_groups: int = 0  # volumes with data.group_pattern: patients with several added cases
    patient_cases: int = 0  # the cases of those patients

    def summary(self) -> str:
        what = "volume(s)" if self.volumes else "case(s)"
        lines = [
            f"{self.source}: {self.found} {what} found, {self.added} added, {self.duplicates} already present, "
            f"{len(self.bad)} bad"
        ]
        if self.splits:
            lines.append("  splits: " + ", ".join(f"{k} {v}" for k, v in sorted(self.splits.items())))
        if self.classes:
            lines.append("  classes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.classes.items())))
        if self.duplicate_groups:
            lines.append(
                f"  near-duplicates: {self.duplicate_groups} groups, {self.duplicate_images} images, "
                "each kept inside one split"
            )
        if self.patient_groups:
            lines.append(f"  patients with several cases: {self.patient_groups} ({self.patient_cases} cases), "
                         "each patient inside one split")
        lines += [f"  skipped {b}" for b in self.bad]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _resize(array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """A square ``size`` copy (bilinear; nearest for masks). Ingest no longer resizes (the store keeps
    native sizes); benchmarks use this to build model-size arrays directly."""
    if array.shape[:2] == (size, size):
        return array
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(array).resize((size, size), resample))


def prepare(record: Record, source: str, size: int | None, channels: int) -> Prepared:
    """Hash the original pixels (+ mask) and convert to the campaign's channels.

    The image and its mask keep the image's own size and aspect: the model's input size
    (``data.image_size``) is derived when training and scoring decode a sample, so changing it
    later needs no new ingest and no re-annotation. ``size`` is unused (kept for callers)."""
    image = record.image
    image_png = record.image_png
    if channels == 3 and image.ndim == 2:
        image, image_png = np.repeat(image[..., None], 3, axis=2), None
    elif channels == 1 and image.ndim == 3:
        image, image_png = np.asarray(Image.fromarray(image).convert("L")), None
    image_hash = content_hash(image)
    mask_hash = "-" if record.mask is None else content_hash(record.mask)
    case_hash = hashlib.sha256(f"{image_hash}:{mask_hash}".encode()).hexdigest()
    mask = None if record.mask is None else record.mask.astype(np.uint8)
    return Prepared(
        uid=f"{source}-{case_hash[:16]}",
        case_hash=case_hash,
        image_hash=image_hash,
        image=np.ascontiguousarray(image),
        mask=mask,
        class_name=record.class_name,
        original_path=record.original_path,
        mode=record.mode,
        notes=list(record.notes),
        image_png=image_png,
        mask_png=record.mask_png if mask is not None else None,
        shape=tuple(int(n) for n in image.shape),
    )


def _synthetic_records(campaign: Campaign) -> Iterator[Record]:
    from .synthetic import generate

    d = campaign.data
    try:
        ph = generate(d.n_samples, d.image_size, d.seed, d.class_mix, d.difficulty, d.classes)
    except ValueError as err:
        raise DataError(f"synthetic: {err}") from None
    for i, (img, msk, lab) in enumerate(zip(ph.images, ph.masks, ph.labels)):
        yield Record(original_path=f"synthetic:seed={d.seed}/{i}", image=img, mask=msk, class_name=lab)


def _scan(campaign: Campaign, fmt: str, path: str | Path | None) -> tuple[list[Item], list[BadFile]]:
    if path is None:
        raise DataError(f"ingest {fmt}: a dataset path is needed (argument PATH or data.path in the campaign)")
    if not Path(path).exists():
        raise DataError(f"{path}: dataset folder not found")
    if fmt == "busi":
        from .busi import scan_busi

        return scan_busi(path, campaign.data.classes)
    from .generic import scan_generic

    return scan_generic(path, campaign.data.classes)


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def _track(progress, items: Iterable, total: int, description: str) -> Iterator:
    if progress is None:
        yield from items
        return
    task = progress.add_task(description, total=total)
    for x in items:
        yield x
        progress.advance(task)


def _read_item(item: Item, *, fmt: str, channels: int, window: tuple[float, float] | None, min_size: int,
               image_size: int, regions: int | None = None, keep_bytes: bool = False) -> Prepared | BadFile:
    """One case read and normalised (:func:`prepare`), or the bad file with its reason (``keep_bytes``:
    see :meth:`Item.load`)."""
    try:
        rec = item.load(channels, window, regions, keep_bytes)
    except FileError as err:
        return err.as_bad()
    h, w = rec.image.shape[:2]
    if min(h, w) < min_size:
        rec.notes.append(
            f"{item.image}: image {w}x{h} is smaller than data.min_image_size = {min_size} px on its "
            f"short side; stored as it is, the model sees it upscaled to {image_size}x{image_size}"
        )
    return prepare(rec, fmt, image_size, channels)


def read_dataset(
    campaign: Campaign, fmt: str, path: str | Path | None, progress=None, workers: int = 1
) -> tuple[list[Prepared], list[BadFile]]:
    """Read and normalise every case; nothing is written. Bad files are returned with their reason.
    ``workers`` > 1 reads a folder of at least :data:`PARALLEL_MIN_FILES` files in that many processes
    (same results, same order)."""
    if fmt not in FORMATS:
        raise DataError(f"unknown dataset format {fmt!r} (expected one of {', '.join(FORMATS)})")
    d = campaign.data
    prepared: list[Prepared] = []
    if fmt == "synthetic":
        for rec in _track(progress, _synthetic_records(campaign), d.n_samples, "generating phantoms"):
            prepared.append(prepare(rec, fmt, d.image_size, d.channels))
        return prepared, []
    items, bad = _scan(campaign, fmt, path)
    window = None if d.intensity_window is None else (d.intensity_window[0], d.intensity_window[1])
    read = partial(_read_item, fmt=fmt, channels=d.channels, window=window, min_size=d.min_image_size,
                   image_size=d.image_size, regions=None if d.regions is None else len(d.regions))
    if workers > 1 and len(items) >= PARALLEL_MIN_FILES:
        results: Iterable[Prepared | BadFile] = _read_in_workers(items, partial(read, keep_bytes=True), workers,
                                                                 progress, fmt)
    else:
        # One thread. Decoding a small PNG is mostly Python code in PIL: reader threads contending for the GIL
        # measured 2.2x slower than one (10,000 64x48 images + masks, 2-core machine: 5.7 s on 4 threads, 2.5 s
        # on one; BUSI's 624 images: 0.53 s vs 0.62 s).
        results = _track(progress, map(read, items), len(items), f"reading {fmt}")
    for out in results:
        if isinstance(out, BadFile):
            bad.append(out)
        else:
            prepared.append(out)
    return prepared, bad


def _read_chunk(items: list[Item], read: Callable[[Item], Prepared | BadFile], thumb_size: int
                ) -> list[Prepared | BadFile]:
    """A reader worker's share: each case read (:func:`_read_item`) with its near-duplicate thumbnail, sent
    back as PNG bytes where those are what the store keeps (:meth:`Prepared.as_bytes`)."""
    from .duplicates import thumbnails

    out = [read(item) for item in items]
    for p in out:
        if isinstance(p, Prepared):
            p.thumb = thumbnails([p.pixels], thumb_size)[0]
            p.as_bytes()
    return out


def _read_in_workers(items: list[Item], read: Callable[[Item], Prepared | BadFile], workers: int, progress,
                     fmt: str) -> Iterator[Prepared | BadFile]:
    """The cases read by ``workers`` processes (``spawn``: nothing of this process is inherited), in order.
    The caller's main module must be import-safe (``if __name__ == "__main__"``), as the ``medloop``
    command is; the Python API reads in one process unless asked (``workers``)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from .duplicates import THUMB_SIZE

    size = max(64, min(1000, len(items) // (workers * 8) or 1))
    chunks = [items[i:i + size] for i in range(0, len(items), size)]
    task = progress.add_task(f"reading {fmt} ({workers} processes)", total=len(items)) if progress else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for chunk, out in zip(chunks, pool.map(partial(_read_chunk, read=read, thumb_size=THUMB_SIZE), chunks)):
            yield from out
            if progress is not None:
                progress.advance(task, len(chunk))


def _depth_warning(campaign: Campaign, prepared: list[Prepared]) -> list[str]:
    """One line for the images deeper than 8 bits that were rescaled, and the rule used."""
    deep = Counter(p.mode for p in prepared if is_deep(p.mode))
    if not deep:
        return []
    window = campaign.data.intensity_window
    rule = (f"data.intensity_window [{window[0]:g}, {window[1]:g}] -> 0..255" if window is not None
            else "min-max per image -> 0..255 (set data.intensity_window for a fixed window)")
    modes = ", ".join(f"{m} x{n}" for m, n in sorted(deep.items()))
    return [f"{sum(deep.values())} image(s) deeper than 8 bits ({modes}) rescaled to 8 bits: {rule}"]


def ingest(
    campaign: Campaign,
    fmt: str,
    path: str | Path | None = None,
    skip_bad: bool = False,
    progress: bool = False,
    workers: int = 1,
) -> IngestReport:
    """Register a dataset in the campaign's ledger and image store (see module docstring). ``workers``:
    reader processes for a large folder (:func:`read_dataset`; ``medloop ingest`` uses
    :func:`default_workers`)."""
    if path is None and campaign.data.path:
        path = campaign.resolve_path(campaign.data.path)  # relative: from the campaign file's folder
    report = IngestReport(source=fmt, path=None if path is None else str(path))
    if fmt == "generic" and path is not None and Path(path).is_dir():
        from .generic import is_volume_folder

        if is_volume_folder(path):
            from .volume_ingest import ingest_volumes  # nibabel and the volume readers: only for volumes

            report.volumes = True
            return ingest_volumes(campaign, path, source=fmt, skip_bad=skip_bad, report=report)
    with _progress(progress) as bar:
        prepared, bad = read_dataset(campaign, fmt, path, bar, workers=workers)
        report.found = len(prepared) + len(bad)
        report.bad = bad
        report.warnings += _depth_warning(campaign, prepared) + [n for p in prepared for n in p.notes]
        if bad and not skip_bad:
            raise IngestError(bad, f"{fmt} {path}")
        ledger = Ledger.open(campaign.ledger)
        try:
            _write(campaign, ledger, prepared, report, bar)
        finally:
            ledger.close()
    return report


def _write(campaign: Campaign, ledger: Ledger, prepared: list[Prepared], report: IngestReport, bar) -> None:
    if report.source == "synthetic":
        _check_synthetic(campaign, ledger, prepared)
    with ledger.reading() as s:
        known = set(s.scalars(select(Sample.content_hash)))
        if prepared and s.scalar(select(Sample.id).where(Sample.depth.is_not(None)).limit(1)) is not None:
            raise DataError("the campaign already holds volumes; 2D images need a campaign of their own "
                            "(another campaign name or root)")
    new: dict[str, Prepared] = {}
    by_image: dict[str, Prepared] = {}
    for p in prepared:
        if p.case_hash in known or p.case_hash in new:
            report.duplicates += 1
            continue
        other = by_image.get(p.image_hash)
        if other is not None:
            report.warnings.append(f"{p.original_path}: same pixels as {other.original_path} (kept: masks differ)")
        by_image[p.image_hash] = p
        new[p.case_hash] = p
    cases = sorted(new.values(), key=lambda p: p.case_hash)  # file order never changes the split
    splits = _split_store_insert(campaign, ledger, ImageStore(campaign.store), cases, report, bar)
    report.added = len(cases)
    report.splits = dict(Counter(splits))
    report.classes = dict(Counter(p.class_name or "(unlabeled)" for p in cases))


def _split_store_insert(campaign: Campaign, ledger: Ledger, store: ImageStore, cases: list[Prepared],
                        report: IngestReport, bar) -> list[str]:
    """The new cases' splits (:func:`_split_cases`), their files in the store and their ledger rows, the three
    overlapped: one writer thread creates the store's files (system calls, in the kernel) while this thread
    finds near-duplicates and splits (numpy and scipy release the GIL), then inserts the rows. The rows are
    committed only after every file was written, so no committed row names a missing file. One writer, as
    creating files from two threads measured slower on ext4 (their creations wait on each other). Nothing is
    written before every file was read; when the split or the insert fails, the writer stops at the next case
    and the files it wrote are new names no ledger row points to (as after a crash, see ``put_bytes``)."""
    stop = threading.Event()

    def store_all() -> list[tuple[str, str | None]]:
        paths = []
        for p in _track(bar, cases, len(cases), "storing images"):
            if stop.is_set():
                break
            paths.append(_store_case(store, p))
        return paths

    author = f"dataset:{report.source}"
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medloop-store") as writer:
        stored = writer.submit(store_all)
        try:
            splits = _split_cases(campaign, ledger, store, cases, report)
            paths = [_stored_paths(p) for p in cases]
            with ledger.transaction() as s:
                sample_rows = [
                    {"uid": p.uid, "content_hash": p.case_hash, "image_path": img_rel,
                     "original_path": p.original_path, "source": report.source, "split": split,
                     "height": p.shape[0], "width": p.shape[1], "channels": 1 if len(p.shape) == 2 else p.shape[2]}
                    for p, split, (img_rel, _) in zip(cases, splits, paths)
                ]
                insert_cases(s, sample_rows, [(p.class_name, mask_rel) for p, (_, mask_rel) in zip(cases, paths)],
                             author)
                if stored.result() != paths:  # the commit (leaving this block) waits for every file
                    raise RuntimeError("ingest: the store's file names differ from the ledger rows'")
        except BaseException:
            stop.set()
            raise
    return splits


def insert_cases(session: Session, sample_rows: list[dict], labels: list[tuple[str | None, str | None]],
                 author: str) -> None:
    """Bulk-insert new samples and their dataset labels: ``labels[i]`` = (class, mask path) of ``sample_rows[i]``;
    a labelled case gets a ``truth`` label, and a ``human`` one too outside the pool. New samples have no
    labels yet, so the ledger rules (pseudo never replaces human, history) have nothing to supersede.

    Core executemany without RETURNING (SQLAlchemy sends one statement per row when it must return ids in
    row order on SQLite: 100,000 samples, 3.5 s), then the new ids read back by ``uid`` (unique) among the
    rows above the largest id before the insert; one creation time for the whole batch."""
    if not sample_rows:
        return
    samples_t, labels_t = cast(Table, Sample.__table__), cast(Table, Label.__table__)
    now = utcnow()
    before = session.scalar(select(func.max(samples_t.c.id))) or 0
    session.execute(insert(samples_t), [{**row, "created_at": now} for row in sample_rows])
    new_rows = session.execute(select(samples_t.c.uid, samples_t.c.id).where(samples_t.c.id > before))
    id_of = {uid: sid for uid, sid in new_rows}
    rows: list[dict] = []
    for sample, (class_name, mask_rel) in zip(sample_rows, labels):
        if class_name is None and mask_rel is None:
            continue  # unlabeled in the dataset itself
        row = {"sample_id": id_of[sample["uid"]], "class_name": class_name, "mask_path": mask_rel, "author": author,
               "active": True, "created_at": now}
        rows.append({**row, "kind": "truth"})
        if sample["split"] != "pool":
            rows.append({**row, "kind": "human"})
    if rows:
        session.execute(insert(labels_t), rows)


def _stored_paths(p: Prepared) -> tuple[str, str | None]:
    """Where :func:`_store_case` writes a case's image and mask (store-relative), known before they are written:
    the names ``ImageStore.put_image`` / ``put_mask`` give a 2D case (checked against them after the writes)."""
    return f"images/{p.uid}.png", f"masks/{p.uid}.png" if p.has_mask else None


def _store_case(store: ImageStore, p: Prepared) -> tuple[str, str | None]:
    """Write a case's image and mask to the store: the dataset's own PNG bytes when they already hold
    exactly the stored pixels (an 8-bit PNG of the campaign's channels, a 0/255 grey mask), else encoded."""
    img_rel, mask_rel = _stored_paths(p)
    data = None if p.image_png is None else p.image_png.read()
    img_rel = (store.put_image(p.uid, p.pixels) if data is None
               else store.put_bytes(img_rel, data, unreferenced=True))
    if mask_rel is None:
        return img_rel, None
    data = None if p.mask_png is None else p.mask_png.read()
    mask_rel = (store.put_mask(p.uid, _array(p.mask, p)) if data is None
                else store.put_bytes(mask_rel, data, unreferenced=True))
    return img_rel, mask_rel


def _array(array: np.ndarray | None, p: Prepared) -> np.ndarray:
    if array is None:  # held bytes always read (SamePNG.read); an array is dropped only when they are held
        raise RuntimeError(f"{p.original_path}: neither the pixels nor the file's bytes were kept")
    return array


def _check_synthetic(campaign: Campaign, ledger: Ledger, prepared: list[Prepared]) -> None:
    """Refuse phantoms whose ids (``synthetic:seed=S/i``) the ledger already holds with other pixels:
    the same phantoms made with other ``[data]`` settings (image_size, channels, n_samples, class_mix,
    difficulty, classes) would be added again as new cases, near-copies across the splits."""
    by_id = {p.original_path: p for p in prepared}
    with ledger.reading() as s:
        rows = s.execute(select(Sample.original_path, Sample.content_hash, Sample.height, Sample.width,
                                Sample.channels).where(Sample.source == "synthetic").order_by(Sample.id)).all()
    clash = [r for r in rows if r.original_path in by_id and by_id[r.original_path].case_hash != r.content_hash]
    if not clash:
        return
    clash.sort(key=lambda r: (len(r.original_path), r.original_path))  # synthetic:seed=S/0, /1, ... /10
    d = campaign.data
    (h, w, c), _ = Counter((r.height, r.width, r.channels) for r in clash).most_common(1)[0]
    differs = []
    if (h, w) != (d.image_size, d.image_size):
        differs.append(f"stored at {w}x{h} px, data.image_size is now {d.image_size}")
    if c != d.channels:
        differs.append(f"stored with {c} channel(s), data.channels is now {d.channels}")
    what = "; ".join(differs) or (
        f"same size and channels ({w}x{h} px, {c}): data.n_samples, class_mix, difficulty or classes differ")
    names = ", ".join(r.original_path for r in clash[:3]) + (", ..." if len(clash) > 3 else "")
    raise DataError(
        f"synthetic: the campaign already holds {len(clash)} synthetic phantom(s) with these ids made with other "
        f"settings ({names}: {what}); ingesting would add them again as new cases. Keep the [data] settings "
        "they were made with, set another data.seed to add new phantoms, or use a new campaign (name or root)"
    )


def _split_cases(
    campaign: Campaign, ledger: Ledger, store: ImageStore, cases: list[Prepared], report: IngestReport
) -> list[str]:
    """Splits of the new cases, near-duplicates kept together (``data.duplicate_threshold``).

    A new case that is a near-duplicate of a case already in the ledger takes that case's split
    (when an older ingest left a group across splits: its most common split, ties by name; an
    unlabeled case joining "train" goes to "pool", the same side); the other new cases are split
    group-wise by ``assign_splits``. Existing images are read from the store only when there is
    something new.
    """
    from .duplicates import THUMB_SIZE, group_stats, near_duplicate_groups, thumbnails
    from .splits import assign_splits

    d = campaign.data
    if not cases:
        return []
    with ledger.reading() as s:
        existing = s.execute(select(Sample.image_path, Sample.split).order_by(Sample.id)).all()
    made = [i for i, p in enumerate(cases) if p.thumb is not None]  # by the reader workers
    thumbs = np.empty((len(cases) + len(existing), THUMB_SIZE * THUMB_SIZE), np.float32)  # as thumbnails() makes
    for i in made:
        thumbs[i] = cast(np.ndarray, cases[i].thumb)  # row by row: no stacked copy of them all
    todo = [i for i, p in enumerate(cases) if p.thumb is None]
    thumbs[todo] = thumbnails([cases[i].pixels for i in todo], THUMB_SIZE)
    thumbs[len(cases):] = thumbnails([store.load_image(path) for path, _ in existing], THUMB_SIZE)
    groups = near_duplicate_groups(thumbs=thumbs, threshold=d.duplicate_threshold)
    n = len(cases)
    known: dict[int, Counter] = {}
    for g, (_, split) in zip(groups[n:], existing):
        known.setdefault(int(g), Counter())[split] += 1
    new_groups = groups[:n]
    joined = {i: int(g) for i, g in enumerate(new_groups) if int(g) in known}
    free = [i for i in range(n) if i not in joined]
    free_splits = assign_splits(
        [_stratum(cases[i]) for i in free], d.split, d.unlabeled_fraction, d.seed, [int(new_groups[i]) for i in free]
    )
    out = [""] * n
    for i, split in zip(free, free_splits):
        out[i] = split
    for i, g in joined.items():
        split = min(known[g].items(), key=lambda kv: (-kv[1], kv[0]))[0]
        out[i] = "pool" if split == "train" and _stratum(cases[i]) is None else split  # train side either way
    # count the groups that hold a new case (with their existing members)
    touched = set(int(g) for g in new_groups)
    in_touched = [int(g) for g in groups if int(g) in touched]
    report.duplicate_groups, report.duplicate_images = group_stats(np.unique(in_touched, return_inverse=True)[1])
    return out


def _stratum(p: Prepared) -> str | None:
    """Split stratum: the class; a mask-only case is its own stratum; no label at all -> None (pool)."""
    if p.class_name is not None:
        return p.class_name
    return "(mask only)" if p.has_mask else None
