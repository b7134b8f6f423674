"""ingest(): every bad-input case with and without skip_bad, idempotence, splits and labels."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from medloop.data.errors import IngestError
from medloop.data.imagestore import ImageStore
from medloop.data.ingest import ingest
from medloop.ledger import Label, Ledger, Sample
from medloop.ledger.queries import class_counts, pool_sizes

BUSI = "Dataset_BUSI_with_GT"


def _counts(campaign) -> tuple[int, int]:
    if not (campaign.folder / "ledger.db").exists():
        return 0, 0
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        n = s.scalar(select(func.count()).select_from(Sample)), s.scalar(select(func.count()).select_from(Label))
    ledger.close()
    return n


def _stored_images(campaign) -> int:
    folder = campaign.store / "images"
    return len(list(folder.iterdir())) if folder.exists() else 0


# Each breaker damages one thing in a fresh dataset and returns (format, root, bad file name, problem words).
def _truncated(lay: Any, tmp: Path):
    root = lay.write_busi(tmp / "d", per_class=2)
    f = root / BUSI / "benign" / "benign (2).png"
    f.write_bytes(f.read_bytes()[:60])
    return "busi", root, "benign (2).png", "truncated"


def _unreadable(lay: Any, tmp: Path):
    root = lay.write_generic(tmp / "d", n=6)
    (root / "images" / "case3.png").write_bytes(b"not a png at all")
    return "generic", root, "case3.png", "unreadable"


def _mask_size(lay: Any, tmp: Path):
    root = lay.write_busi(tmp / "d", per_class=2)
    lay.save_mask(root / BUSI / "malignant" / "malignant (1)_mask.png", np.ones((10, 10), np.uint8), "RGB")
    return "busi", root, "malignant (1)_mask.png", "mask size 10x10 differs from its image (32x24)"


def _orphan_mask_busi(lay: Any, tmp: Path):
    root = lay.write_busi(tmp / "d", per_class=2)
    lay.save_mask(root / BUSI / "benign" / "benign (9)_mask.png", lay.blob(), "1")
    return "busi", root, "benign (9)_mask.png", "mask without an image"


def _orphan_mask_generic(lay: Any, tmp: Path):
    root = lay.write_generic(tmp / "d", n=6)
    lay.save_mask(root / "masks" / "ghost.png", lay.blob(), "L")
    return "generic", root, "ghost.png", "mask without an image"


def _unknown_class_busi(lay: Any, tmp: Path):
    root = lay.write_busi(tmp / "d", per_class=2)
    (root / BUSI / "cyst").mkdir()
    (root / BUSI / "benign" / "benign (1).png").rename(root / BUSI / "cyst" / "cyst (1).png")
    (root / BUSI / "benign" / "benign (1)_mask.png").unlink()
    (root / BUSI / "benign" / "benign (1)_mask_1.png").unlink()
    return "busi", root, "cyst (1).png", "unknown class 'cyst'"


def _unknown_class_generic(lay: Any, tmp: Path):
    root = lay.write_generic(tmp / "d", n=6, labels=["benign", "normal", "cyst", "malignant", "benign", ""])
    return "generic", root, "case2.png", "unknown class 'cyst'"


def _symlink_escape(lay: Any, tmp: Path):
    root = lay.write_busi(tmp / "d", per_class=2)
    outside = tmp / "outside.png"
    (root / BUSI / "normal" / "normal (1).png").rename(outside)
    os.symlink(outside, root / BUSI / "normal" / "normal (1).png")
    return "busi", root, "normal (1).png", "escapes the dataset root"


def _dotdot_escape(lay: Any, tmp: Path):
    root = lay.write_generic(tmp / "d", n=6)
    lay.write_generic(tmp / "other", n=1)
    with (root / "labels.csv").open("a") as fh:
        fh.write("../other/images/case0.png,benign\n")
    return "generic", root, "../other/images/case0.png", "escapes the dataset root"


def _listed_missing(lay: Any, tmp: Path):
    root = lay.write_generic(tmp / "d", n=6)
    with (root / "labels.csv").open("a") as fh:
        fh.write("nothere.png,benign\n")
    return "generic", root, "nothere.png", "no such file in images/"


BREAKERS: list[Callable] = [
    _truncated, _unreadable, _mask_size, _orphan_mask_busi, _orphan_mask_generic, _unknown_class_busi,
    _unknown_class_generic, _symlink_escape, _dotdot_escape, _listed_missing,
]


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_writes_nothing_without_skip_bad(breaker, lay, tmp_path: Path, campaign_factory) -> None:
    fmt, root, name, problem = breaker(lay, tmp_path)
    campaign = campaign_factory()
    with pytest.raises(IngestError) as exc:
        ingest(campaign, fmt, root)
    msg = str(exc.value)
    assert name in msg and problem in msg and "nothing was written" in msg
    assert len(exc.value.bad) == 1
    assert _counts(campaign) == (0, 0) and _stored_images(campaign) == 0


@pytest.mark.parametrize("breaker", BREAKERS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_skipped_with_skip_bad(breaker, lay, tmp_path: Path, campaign_factory) -> None:
    fmt, root, name, problem = breaker(lay, tmp_path)
    campaign = campaign_factory()
    report = ingest(campaign, fmt, root, skip_bad=True)
    assert [name in b.path and problem in b.problem for b in report.bad] == [True]
    assert report.added > 0 and _counts(campaign)[0] == report.added == _stored_images(campaign)
    assert name in report.summary()


def test_ingest_twice_changes_nothing(lay, tmp_path: Path, campaign_factory) -> None:
    root = lay.write_busi(tmp_path / "d", per_class=4)
    campaign = campaign_factory()
    first = ingest(campaign, "busi", root)
    before = _counts(campaign)
    second = ingest(campaign, "busi", root)
    assert first.added == 12 and second.added == 0 and second.duplicates == 12
    assert _counts(campaign) == before


def test_splits_labels_and_store(lay, tmp_path: Path, campaign_factory) -> None:
    root = lay.write_busi(tmp_path / "d", per_class=8)
    campaign = campaign_factory(image_size=16, split=[0.5, 0.25, 0.25], unlabeled_fraction=0.5)
    report = ingest(campaign, "busi", root)
    assert report.splits == {"train": 6, "val": 6, "test": 6, "pool": 6}
    ledger = Ledger.open(campaign.ledger)
    store = ImageStore(campaign.store)
    with ledger.reading() as s:
        sizes = pool_sizes(s)
        assert sizes["pool"] == {"samples": 6, "human": 0, "pseudo": 0, "truth": 6, "unlabeled": 6}
        for split in ("train", "val", "test"):
            assert sizes[split]["human"] == sizes[split]["truth"] == 6
        assert class_counts(s, "truth") == {"benign": 8, "malignant": 8, "normal": 8}
        assert class_counts(s, "human") == {"benign": 6, "malignant": 6, "normal": 6}  # stratified
        authors = set(s.scalars(select(Label.author)))
        assert authors == {"dataset:busi"}
        sample = s.scalars(select(Sample).where(Sample.original_path.like("%benign (1).png"))).one()
        # native size (the files are 32 wide, 24 high), whatever data.image_size says
        assert (sample.height, sample.width, sample.channels) == (24, 32, 1)
        img = store.load_image(sample.image_path)
        assert img.shape == (24, 32) and img.dtype == np.uint8
        truth = s.scalars(select(Label).where(Label.sample_id == sample.id, Label.kind == "truth")).one()
        mask = store.load_mask(truth.mask_path)
        assert set(np.unique(mask)) == {0, 1} and mask.shape == (24, 32)
    ledger.close()


def test_split_is_seeded(lay, tmp_path: Path, campaign_factory) -> None:
    root = lay.write_busi(tmp_path / "d", per_class=8)

    def splits(seed: int, name: str) -> dict[str, str]:
        campaign = lay_campaign(tmp_path / name, seed)
        ingest(campaign, "busi", root)
        ledger = Ledger.open(campaign.ledger)
        with ledger.reading() as s:
            out = dict(s.execute(select(Sample.original_path, Sample.split)).all())
        ledger.close()
        return out

    assert splits(0, "a") == splits(0, "b")
    assert splits(0, "a") != splits(5, "c")


def lay_campaign(root: Path, seed: int):
    from medloop.config import parse_campaign

    return parse_campaign({"root": str(root), "data": {"image_size": 16, "seed": seed, "unlabeled_fraction": 0.5}})


def test_generic_unlabeled_go_to_pool_without_truth(lay, tmp_path: Path, campaign_factory) -> None:
    root = lay.write_generic(tmp_path / "d", n=9, labels=["benign"] * 3 + ["malignant"] * 3 + [""] * 3, masks=False)
    campaign = campaign_factory(unlabeled_fraction=0.0)
    report = ingest(campaign, "generic", root)
    assert report.classes["(unlabeled)"] == 3
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        sizes = pool_sizes(s)
        assert sizes["pool"]["samples"] == 3 and sizes["pool"]["truth"] == 0
        assert s.scalar(select(func.count()).select_from(Label).where(Label.mask_path.is_not(None))) == 0
    ledger.close()


def test_synthetic_ingest_rgb(campaign_factory) -> None:
    campaign = campaign_factory(n_samples=12, channels=3, image_size=32)  # the model's 2**depth divides it
    report = ingest(campaign, "synthetic")
    assert report.added == 12 and report.bad == []
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        sample = s.scalars(select(Sample)).first()
        assert sample.channels == 3
        assert ImageStore(campaign.store).load_image(sample.image_path).shape == (32, 32, 3)
    ledger.close()


def test_image_store_reads_ignore_maps_in_both_formats(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    ignored = np.array([[True, False], [False, True]])
    as_npy = store.put_array("ignore/a", ignored)
    as_png = store.put_mask("ignore/b", ignored)
    for rel in (as_npy, as_png):
        got = store.load_ignore(rel)
        assert got.dtype == np.uint8 and got.tolist() == [[1, 0], [0, 1]], rel


def test_store_copies_png_files_that_already_hold_the_stored_pixels(lay, tmp_path: Path, campaign_factory) -> None:
    """An 8-bit grey PNG image and a 0/255 grey PNG mask are stored by copying their bytes (no second
    encoding); a JPEG image, a 1-bit or RGB mask, or a file changed after it was read are encoded. The
    stored pixels are the same either way."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from medloop.data import ingest as ingest_module

    root = lay.write_generic(tmp_path / "d", n=8)  # masks in modes 1, L, RGB, RGBA (case i: i % 4)
    tag = PngInfo()
    tag.add_text("source", "the dataset")  # a copied file keeps this text chunk, an encoded one has none
    for f in [*(root / "images").iterdir(), *(root / "masks").iterdir()]:
        with Image.open(f) as im:
            im.load()
            im.save(f, pnginfo=tag)
    Image.fromarray(lay.grey(7)).save(root / "images" / "case7.jpg", quality=95)
    (root / "images" / "case7.png").unlink()
    (root / "labels.csv").write_text((root / "labels.csv").read_text().replace("case7.png", "case7.jpg"))
    changed: list[str] = []
    store_case = ingest_module._store_case

    def touch_then_store(store, p):  # noqa: ANN001, ANN202 - a file edited between reading and storing
        if p.original_path.endswith("case5.png"):
            path = Path(p.original_path)
            os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
            changed.append(p.uid)
        return store_case(store, p)

    ingest_module._store_case = touch_then_store
    try:
        campaign = campaign_factory(unlabeled_fraction=0.0)
        ingest(campaign, "generic", root)
    finally:
        ingest_module._store_case = store_case
    assert changed
    store = ImageStore(campaign.store)
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        rows = s.execute(select(Sample, Label).join(Label, Label.sample_id == Sample.id)
                         .where(Label.kind == "truth")).all()
    ledger.close()
    copied = {}
    for smp, lab in rows:
        name = Path(smp.original_path).name
        src = root / "images" / name
        stored = store.path(smp.image_path).read_bytes()
        copied[name] = stored == src.read_bytes()
        assert np.array_equal(store.load_image(smp.image_path), np.asarray(Image.open(src).convert("L")))
        mask_src = root / "masks" / f"{Path(name).stem}.png"
        copied[f"mask {name}"] = store.path(lab.mask_path).read_bytes() == mask_src.read_bytes()
        assert np.array_equal(store.load_mask(lab.mask_path), np.asarray(Image.open(mask_src).convert("L")) > 0)
    # images: every PNG copied but the one changed after reading; the JPEG encoded as PNG
    assert {k: v for k, v in copied.items() if not k.startswith("mask")} == {
        **{f"case{i}.png": True for i in range(7) if i != 5}, "case5.png": False, "case7.jpg": False}
    # masks: only the grey 0/255 ones (mode L: cases 1 and 5, and 5's image changed, not its mask)
    assert {k for k, v in copied.items() if k.startswith("mask") and v} == {"mask case1.png", "mask case5.png"}


def test_reading_in_worker_processes_gives_what_one_process_gives(lay, tmp_path: Path, monkeypatch) -> None:
    """`medloop ingest` reads a large folder in spawned worker processes (`workers`); the ledger, the store, the
    bad files and the near-duplicate groups are those of a read in one process. The size from which workers
    are used is lowered so that a small folder takes that path (the workers themselves are real processes)."""
    import medloop.data.ingest as ingest_module
    from medloop.data.duplicates import thumbnails

    monkeypatch.setattr(ingest_module, "PARALLEL_MIN_FILES", 10)
    root = lay.write_generic(tmp_path / "d", n=40)
    (root / "images" / "case3.png").write_bytes((root / "images" / "case4.png").read_bytes())  # a duplicate pair
    broken = (root / "images" / "case7.png").read_bytes()
    (root / "images" / "case7.png").write_bytes(broken[: len(broken) // 2])

    def run(workers: int, name: str):
        campaign = make(name)
        report = ingest(campaign, "generic", root, skip_bad=True, workers=workers)
        ledger = Ledger.open(campaign.ledger)
        with ledger.reading() as s:
            rows = sorted(s.execute(select(Sample.uid, Sample.content_hash, Sample.split, Sample.height,
                                           Sample.width)).all())
            labels = sorted(s.execute(select(Sample.uid, Label.kind, Label.class_name)
                                      .join(Label, Label.sample_id == Sample.id)).all())
        ledger.close()
        files = sorted(p.relative_to(campaign.store).as_posix() for p in campaign.store.rglob("*.png"))
        return report, rows, labels, files, {f: (campaign.store / f).read_bytes() for f in files}

    from medloop.config import parse_campaign

    def make(name: str):
        return parse_campaign({"name": name, "root": str(tmp_path / name), "data": {"source": "generic"}})

    one, two = run(1, "one"), run(2, "two")
    assert one[0].added == two[0].added == 39
    assert [(b.path, b.problem) for b in one[0].bad] == [(b.path, b.problem) for b in two[0].bad]
    assert len(one[0].bad) == 1 and "case7.png" in one[0].bad[0].path
    assert (one[0].duplicate_groups, one[0].splits) == (two[0].duplicate_groups, two[0].splits)
    assert one[0].duplicate_groups >= 1
    assert one[1:4] == two[1:4] and one[4] == two[4]  # rows, labels, store files byte for byte

    # the workers' thumbnails are the ones the parent would make; a worker sends a PNG's bytes instead of its
    # decoded pixels where the store keeps those bytes, and they decode to the pixels read here
    import io

    from PIL import Image

    read, _ = ingest_module.read_dataset(make("three"), "generic", root, workers=2)
    here, _ = ingest_module.read_dataset(make("four"), "generic", root, workers=1)
    assert all(p.thumb is not None for p in read) and all(p.thumb is None for p in here)
    np.testing.assert_array_equal(np.stack([p.thumb for p in read]).astype(np.float64),
                                  thumbnails([p.pixels for p in here]))
    assert all(p.image is None and p.image_png is not None and p.image_png.data for p in read)
    as_bytes = [(p, q) for p, q in zip(read, here) if p.mask is None and p.mask_png is not None]
    assert 0 < len(as_bytes) < len(read)  # the 0/255 grey masks travel as bytes; 1-bit and colour ones as arrays
    for p, q in zip(read, here):
        assert (p.case_hash, p.shape, p.has_mask) == (q.case_hash, q.image.shape, q.mask is not None)
        with Image.open(io.BytesIO(p.image_png.data)) as im:
            np.testing.assert_array_equal(np.asarray(im), q.image)
    for p, q in as_bytes:
        with Image.open(io.BytesIO(p.mask_png.data)) as im:
            np.testing.assert_array_equal(np.asarray(im) // 255, q.mask)


def test_a_failed_split_stops_the_store_writer_and_records_nothing(lay, tmp_path: Path, monkeypatch,
                                                                    campaign_factory) -> None:
    """The store's files are written by one thread while the near-duplicate search runs. When the split fails,
    the error reaches the caller, the writer stops at the next case (no thread left behind) and no ledger row
    exists: the files it wrote are new names that nothing points to, overwritten by the next ingest of those
    cases. The writer is held after its first case until the split has failed."""
    import threading

    import medloop.data.ingest as ingest_module

    root = lay.write_generic(tmp_path / "d", n=30)
    split_cases, store_case = ingest_module._split_cases, ingest_module._store_case
    first_stored, failed = threading.Event(), threading.Event()

    def store_then_wait(store, p):  # noqa: ANN001, ANN202 - the first case stored, then held
        out = store_case(store, p)
        first_stored.set()
        failed.wait(10)
        return out

    def failing_split(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a failure inside the search
        split_cases(*args, **kwargs)
        first_stored.wait(10)
        threading.Timer(0.5, failed.set).start()  # the writer goes on once the error has been raised
        raise MemoryError("near-duplicate search ran out of memory")

    campaign = campaign_factory(unlabeled_fraction=0.0)
    monkeypatch.setattr(ingest_module, "_split_cases", failing_split)
    monkeypatch.setattr(ingest_module, "_store_case", store_then_wait)
    with pytest.raises(MemoryError, match="near-duplicate search"):
        ingest(campaign, "generic", root)
    assert not [t for t in threading.enumerate() if t.name.startswith("medloop-store")]
    assert _counts(campaign) == (0, 0)
    assert _stored_images(campaign) == 1  # stopped after the case it was writing

    monkeypatch.setattr(ingest_module, "_store_case", store_case)
    monkeypatch.setattr(ingest_module, "_split_cases", split_cases)
    report = ingest(campaign, "generic", root)  # the same cases, now stored and recorded
    assert report.added == 30 and _counts(campaign)[0] == 30
    store = ImageStore(campaign.store)
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        rows = s.execute(select(Sample.original_path, Sample.image_path)).all()
    ledger.close()
    from PIL import Image

    for original, image_path in rows:
        with Image.open(original) as im:
            np.testing.assert_array_equal(store.load_image(image_path), np.asarray(im.convert("L")))


def test_rows_are_committed_only_after_every_file_is_stored(lay, tmp_path: Path, monkeypatch,
                                                           campaign_factory) -> None:
    """The ledger rows are inserted while the store's writer still works, and committed after it: a reader of
    the ledger sees no row until the last file is written (the writer is held on its last case until the rows
    were inserted, and looks then)."""
    import threading

    import medloop.data.ingest as ingest_module

    root = lay.write_generic(tmp_path / "d", n=30)
    campaign = campaign_factory(unlabeled_fraction=0.0)
    insert_cases, store_case = ingest_module.insert_cases, ingest_module._store_case
    inserted, seen = threading.Event(), []

    def insert_then_signal(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        insert_cases(*args, **kwargs)
        inserted.set()

    def store_and_look(store, p):  # noqa: ANN001, ANN202 - before the last case: rows inserted, visible?
        if _stored_images(campaign) == 29:
            assert inserted.wait(10)
            seen.append((_counts(campaign), _stored_images(campaign)))
        return store_case(store, p)

    monkeypatch.setattr(ingest_module, "insert_cases", insert_then_signal)
    monkeypatch.setattr(ingest_module, "_store_case", store_and_look)
    report = ingest(campaign, "generic", root)
    assert seen == [((0, 0), 29)]  # inserted, not committed, while a file was still to be written
    assert report.added == 30 and _counts(campaign) == (30, 60) and _stored_images(campaign) == 30


def test_a_failed_store_write_records_nothing(lay, tmp_path: Path, campaign_factory) -> None:
    """A file the store cannot create (here: ``masks`` is a file, not a folder) fails the ingest with the
    system's error; the inserted rows are rolled back, and the next ingest, with the store mended, records
    every case."""
    root = lay.write_generic(tmp_path / "d", n=12)
    campaign = campaign_factory(unlabeled_fraction=0.0)
    campaign.store.mkdir(parents=True)
    (campaign.store / "masks").write_text("not a folder")
    with pytest.raises(NotADirectoryError):
        ingest(campaign, "generic", root)
    assert _counts(campaign) == (0, 0)
    (campaign.store / "masks").unlink()
    report = ingest(campaign, "generic", root)
    assert report.added == 12 and _counts(campaign) == (12, 24)


def test_an_item_crosses_to_a_reader_process_with_its_paths(tmp_path: Path) -> None:
    """Items sent to reader processes are pickled with plain string paths and come back equal, with Paths."""
    import pickle

    from medloop.data.records import Item

    item = Item(tmp_path / "images" / "a b.png", [tmp_path / "masks" / "a b.png"], "benign", str(tmp_path / "x.png"))
    back = pickle.loads(pickle.dumps(item))
    assert back == item and isinstance(back.image, Path) and all(isinstance(m, Path) for m in back.masks)
    assert pickle.loads(pickle.dumps(Item(tmp_path / "c.png", [], None))) == Item(tmp_path / "c.png", [], None)


def test_reader_processes_follow_the_cpus_this_process_may_use(monkeypatch) -> None:
    """``medloop ingest`` starts one reader per CPU of the process's affinity (not the machine's count), at
    most 8; where there is no affinity call, the machine's count."""
    import os

    from medloop.data.cpus import usable_cpus
    from medloop.data.ingest import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert usable_cpus() == 3 and default_workers() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert usable_cpus() == 32 and default_workers() == 8
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cpus() == 6 and default_workers() == 6
