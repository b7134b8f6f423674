"""``medloop export``: the campaign's labels with provenance, read back exactly by ``medloop ingest generic``.

The source campaign is real: a generic dataset (24x32 native images, so nothing is square) ingested
into a SQLite ledger, then labels written through the ledger API the way sync (Label Studio
annotations, a corrected one, an audit answer) and the select step (pseudo-labels with model-size
masks and ignore maps, an audit task) write them.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from sqlalchemy import select
from typer.testing import CliRunner

from medloop.cli import app
from medloop.config import Campaign, parse_campaign
from medloop.data.imagestore import ImageStore, content_hash, mask_at
from medloop.data.ingest import ingest
from medloop.export import COLUMNS, ExportError, export_campaign
from medloop.labeling.project import CLASS_FROM, IMAGE_TO, LESION_FROM, label_config
from medloop.labeling.pull import parse_annotation
from medloop.labeling.rle import rle_to_mask
from medloop.ledger import AnnotationTask, Label, Ledger, Sample, add_human_label, add_pseudo_label

runner = CliRunner()
H, W, MODEL = 24, 32, 16
THRESHOLDS = {"tau_c": 0.9, "tau_u": 0.05, "measure": "std", "pixel_tau_u": 0.2, "mask_gate": 0.5}


def campaign_at(root: Path, **data: Any) -> Campaign:
    return parse_campaign({"name": root.name, "root": str(root),
                           "data": {"image_size": MODEL, "unlabeled_fraction": 0.5, "min_image_size": 8, **data}})


def square(y: int, x: int, r: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y:y + r, x:x + r] = 1
    return m


@dataclass
class Source:
    """The labelled source campaign and what each pool sample was given."""

    campaign: Campaign
    annotated: str  # annotated in Label Studio, then corrected (one earlier version)
    audited: str  # pseudo-label audited, the annotator disagreed (the human label supersedes it)
    pending: str  # pseudo-label with mask + ignore map, its audit task pushed, not answered
    class_only: str  # pseudo-label without a mask
    unlabeled: str  # truth only: never exported
    pseudo_masks: dict[str, np.ndarray]  # model-size pseudo-masks
    ignore: dict[str, np.ndarray]


def build_source(tmp_path: Path, lay: Any) -> Source:
    ds = lay.write_generic(tmp_path / "ds", n=20)
    rows = (ds / "labels.csv").read_text().splitlines()
    rows[13] = "case12.png,"  # a mask-only case (blank label, its mask kept)
    (ds / "labels.csv").write_text("\n".join(rows) + "\n")
    (ds / "masks" / "case16.png").unlink()  # a class-only case
    campaign = campaign_at(tmp_path / "src")
    ingest(campaign, "generic", ds)
    store = ImageStore(campaign.store)
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        pool = s.scalars(select(Sample).where(Sample.split == "pool").order_by(Sample.id)).all()
    assert len(pool) >= 5
    a, b, c, d, e = pool[:5]
    rng = np.random.default_rng(3)
    pseudo_masks = {x.uid: (rng.random((MODEL, MODEL)) < 0.3).astype(np.uint8) for x in (b, c)}
    ignore = {c.uid: rng.random((MODEL, MODEL)) < 0.2}
    with ledger.transaction() as s:
        # annotated in Label Studio, then the annotation was updated: the first answer becomes history
        add_human_label(s, a.id, class_name="benign", author="ann@example.org", ls_task_id=101, ls_annotation_id=201,
                        mask_path=store.put_mask(f"human/{a.uid}-ls201", square(2, 3, 6)))
        add_human_label(s, a.id, class_name="malignant", author="ann@example.org", ls_task_id=101,
                        ls_annotation_id=202, mask_path=store.put_mask(f"human/{a.uid}-ls202", square(4, 5, 9)))
        # round 1 pseudo-labels (model-size masks), two of them audited
        add_pseudo_label(s, b.id, class_name="benign", round_id=1, selector="ups", thresholds=THRESHOLDS,
                         mask_path=store.put_mask(f"pseudo/round-1/{b.uid}", pseudo_masks[b.uid]), ignore_path=None)
        add_pseudo_label(s, c.id, class_name="malignant", round_id=1, selector="ups", thresholds=THRESHOLDS,
                         mask_path=store.put_mask(f"pseudo/round-1/{c.uid}", pseudo_masks[c.uid]),
                         ignore_path=store.put_array(f"ignore/round-1/{c.uid}", ignore[c.uid]))
        add_pseudo_label(s, d.id, class_name="normal", round_id=1, selector="ups", thresholds=THRESHOLDS,
                         mask_path=None, ignore_path=None)
        s.add(AnnotationTask(sample_id=b.id, round_id=1, state="completed", is_audit=True, ls_task_id=102,
                             ls_annotation_id=203))
        s.add(AnnotationTask(sample_id=c.id, round_id=1, state="pushed", is_audit=True, ls_task_id=103))
        # the audit answer (sync): the annotator says normal, with an empty mask
        add_human_label(s, b.id, class_name="normal", author="rev@example.org", ls_task_id=102, ls_annotation_id=203,
                        mask_path=store.put_mask(f"human/{b.uid}-ls203", np.zeros((H, W), np.uint8)))
    ledger.close()
    return Source(campaign, a.uid, b.uid, c.uid, d.uid, e.uid, pseudo_masks, ignore)


@pytest.fixture
def source(tmp_path: Path, lay: Any) -> Source:
    return build_source(tmp_path, lay)


def active(campaign: Campaign, kind: str) -> dict[str, tuple[str | None, np.ndarray | None, np.ndarray]]:
    """uid -> (class, native mask or None, image) of the campaign's active labels of ``kind``."""
    store = ImageStore(campaign.store)
    ledger = Ledger.open(campaign.ledger)
    try:
        with ledger.reading() as s:
            rows = s.execute(select(Sample, Label).join(Label, Label.sample_id == Sample.id)
                             .where(Label.kind == kind, Label.active.is_(True))).all()
            return {smp.uid: (lab.class_name, None if lab.mask_path is None else store.load_mask(lab.mask_path),
                              store.load_image(smp.image_path)) for smp, lab in rows}
    finally:
        ledger.close()


def by_pixels(labels: dict[str, tuple[str | None, np.ndarray | None, np.ndarray]]) -> dict[str, tuple]:
    """Key each label by its image's pixels; the value holds the class and the mask (shape + bytes)."""
    return {content_hash(img): (cls, None if m is None else (m.shape, m.tobytes())) for cls, m, img in labels.values()}


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return {row["sample_uid"]: row for row in csv.DictReader(fh)}


def snapshot(campaign: Campaign) -> tuple[bytes, dict[str, float]]:
    """The ledger file's bytes and every store file with its modification time."""
    ledger = Path(campaign.ledger.removeprefix("sqlite:///"))
    files = {str(p.relative_to(campaign.folder)): p.stat().st_mtime_ns for p in campaign.store.rglob("*")}
    return ledger.read_bytes(), files


# ---- generic layout ------------------------------------------------------------------------------------------


def test_round_trip_generic_is_exact_and_read_only(source: Source, tmp_path: Path) -> None:
    before = snapshot(source.campaign)
    report = export_campaign(source.campaign, tmp_path / "out")
    assert snapshot(source.campaign) == before  # the ledger byte for byte, the store untouched
    human = active(source.campaign, "human")
    assert report.kinds == {"human": len(human)} and report.pseudo_left_out == 2
    rows = read_csv(tmp_path / "out" / "labels.csv")
    assert set(rows) == set(human) and source.unlabeled not in rows
    with (tmp_path / "out" / "labels.csv").open(encoding="utf-8") as fh:
        assert next(csv.reader(fh)) == list(COLUMNS) and list(COLUMNS[:2]) == ["image", "label"]
    # the mask-only and the class-only cases keep their shape
    assert any(r["label"] == "" and r["mask"] for r in rows.values())
    assert any(r["label"] and not r["mask"] for r in rows.values())

    target = campaign_at(tmp_path / "dst", unlabeled_fraction=0.0)
    back = ingest(target, "generic", tmp_path / "out")
    assert back.added == len(human) and not back.bad
    again = active(target, "human")
    assert by_pixels(again) == by_pixels(human)  # classes, masks and images equal, pixel for pixel
    assert all(img.shape == (H, W) and (m is None or m.shape == (H, W)) for _, m, img in again.values())
    assert by_pixels(active(target, "truth")) == by_pixels(human)


def test_provenance_columns(source: Source, tmp_path: Path) -> None:
    export_campaign(source.campaign, tmp_path / "out", include_pseudo=True)
    rows = read_csv(tmp_path / "out" / "labels.csv")
    a = rows[source.annotated]
    assert (a["kind"], a["label"], a["author"], a["ls_task_id"], a["ls_annotation_id"]) == (
        "human", "malignant", "ann@example.org", "101", "202")
    assert a["earlier_versions"] == "1" and a["audit"] == "" and a["split"] == "pool" and a["source"] == "generic"
    assert (a["height"], a["width"]) == (str(H), str(W)) and a["created_at"].startswith("20")
    b = rows[source.audited]  # the audit answer: the human label, and what it was compared with
    assert (b["kind"], b["label"], b["audit"], b["audit_pseudo_class"], b["ls_task_id"]) == (
        "human", "normal", "disagreed", "benign", "102")
    assert b["earlier_versions"] == "0"
    ingested = next(r for r in rows.values() if r["author"] == "dataset:generic")
    assert ingested["kind"] == "human" and ingested["original_path"].endswith(".png")


def test_pseudo_labels_only_with_include_pseudo(source: Source, tmp_path: Path) -> None:
    export_campaign(source.campaign, tmp_path / "human")
    default = read_csv(tmp_path / "human" / "labels.csv")
    assert {r["kind"] for r in default.values()} == {"human"}
    assert source.pending not in default and source.class_only not in default

    report = export_campaign(source.campaign, tmp_path / "all", include_pseudo=True)
    assert report.kinds["pseudo"] == 2 and report.pseudo_left_out == 0 and report.resized_masks >= 1
    rows = read_csv(tmp_path / "all" / "labels.csv")
    c = rows[source.pending]
    assert (c["kind"], c["label"], c["author"], c["round"], c["selector"]) == (
        "pseudo", "malignant", "round-1/ups", "1", "ups")
    assert json.loads(c["thresholds"]) == THRESHOLDS
    assert (c["audit"], c["ls_task_id"]) == ("pending", "103")  # its audit task, pushed, not answered
    # the model-size pseudo-mask and ignore map at the image's native size (nearest), 0/255
    store = ImageStore(tmp_path / "all")
    assert np.array_equal(store.load_mask(f"masks/{c['mask']}"), mask_at(source.pseudo_masks[source.pending], (H, W)))
    ign = store.load_image(f"ignore/{c['ignore_mask']}")
    assert set(np.unique(ign)) <= {0, 255}
    assert np.array_equal(ign > 0, mask_at(source.ignore[source.pending].astype(np.uint8), (H, W)) > 0)
    d = rows[source.class_only]
    assert (d["kind"], d["label"], d["mask"], d["ignore_mask"]) == ("pseudo", "normal", "", "")
    # the audited sample's pseudo-label was superseded by the human answer: the human label is exported
    assert rows[source.audited]["kind"] == "human"
    # and ingest reads the pseudo-labels back like any label
    target = campaign_at(tmp_path / "dst", unlabeled_fraction=0.0)
    ingest(target, "generic", tmp_path / "all")
    back = {content_hash(img): (cls, m) for cls, m, img in active(target, "human").values()}
    src = ImageStore(source.campaign.store)
    ledger = Ledger.open(source.campaign.ledger)
    with ledger.reading() as s:
        img = src.load_image(s.scalars(select(Sample.image_path).where(Sample.uid == source.pending)).one())
    ledger.close()
    cls, m = back[content_hash(img)]
    assert cls == "malignant" and np.array_equal(m, mask_at(source.pseudo_masks[source.pending], (H, W)))


def test_human_label_wins_over_an_active_pseudo_label(source: Source, tmp_path: Path) -> None:
    """The ledger API never lets a pseudo-label be active beside a human label; a ledger edited by hand
    (or by an older medloop) may hold both: export still takes the human label, whatever the row order."""
    ledger = Ledger.open(source.campaign.ledger)
    with ledger.transaction() as s:
        sid = s.scalars(select(Sample.id).where(Sample.uid == source.annotated)).one()
        s.add(Label(sample_id=sid, kind="pseudo", class_name="normal", author="round-9/ups", round_id=9,
                    selector="ups", thresholds=THRESHOLDS, active=True))
    ledger.close()
    report = export_campaign(source.campaign, tmp_path / "out", include_pseudo=True)
    row = read_csv(tmp_path / "out" / "labels.csv")[source.annotated]
    assert (row["kind"], row["label"], row["author"]) == ("human", "malignant", "ann@example.org")
    assert report.kinds["pseudo"] == 2 and report.pseudo_left_out == 1


# ---- the target folder, a missing campaign, a broken store -------------------------------------------------


def config_file(campaign: Campaign, path: Path) -> Path:
    path.write_text(tomli_w.dumps(campaign.model_dump(exclude_none=True)))
    return path


def test_existing_target_refused_unless_force(source: Source, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match=f"{out}: already exists"):
        export_campaign(source.campaign, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    cfg = config_file(source.campaign, tmp_path / "c.toml")
    result = runner.invoke(app, ["export", "--out", str(out), "--config", str(cfg)])
    assert result.exit_code == 1 and str(out) in result.output and "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"

    result = runner.invoke(app, ["export", "--out", str(out), "--config", str(cfg), "--force"])
    assert result.exit_code == 0, result.output
    assert not (out / "keep.txt").exists() and (out / "labels.csv").is_file()
    assert "exported" in result.output and "human" in result.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp or old folder


def test_cli_include_and_format_checked(source: Source, tmp_path: Path) -> None:
    cfg = config_file(source.campaign, tmp_path / "c.toml")
    bad = runner.invoke(app, ["export", "--out", str(tmp_path / "o"), "--include", "truth", "--config", str(cfg)])
    assert bad.exit_code == 2 and "--include" in bad.output and "'truth'" in bad.output
    bad = runner.invoke(app, ["export", "--out", str(tmp_path / "o"), "--format", "coco", "--config", str(cfg)])
    assert bad.exit_code == 2 and "--format" in bad.output
    ok = runner.invoke(app, ["export", "--out", str(tmp_path / "o"), "--include", "pseudo", "--config", str(cfg)])
    assert ok.exit_code == 0, ok.output
    assert {r["kind"] for r in read_csv(tmp_path / "o" / "labels.csv").values()} == {"human", "pseudo"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_export_into_the_campaign_refused(source: Source) -> None:
    c = source.campaign
    for target in (c.folder, c.folder.parent, c.store / "x"):
        with pytest.raises(ExportError, match="--out"):
            export_campaign(c, target, force=True)
    assert (c.store / "images").is_dir() and not (c.store / "x").exists()


def test_missing_campaign_refused_and_not_created(tmp_path: Path) -> None:
    gone = campaign_at(tmp_path / "nowhere")
    with pytest.raises(ExportError, match="folder .*nowhere not found"):
        export_campaign(gone, tmp_path / "out")
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "out").exists()
    cfg = config_file(gone, tmp_path / "c.toml")
    result = runner.invoke(app, ["export", "--out", str(tmp_path / "out"), "--config", str(cfg)])
    assert result.exit_code == 1 and "not found" in result.output and not (tmp_path / "nowhere").exists()
    empty = campaign_at(tmp_path / "empty")
    empty.folder.mkdir()
    with pytest.raises(ExportError, match="no ledger at .*ledger.db"):
        export_campaign(empty, tmp_path / "out")
    assert list(empty.folder.iterdir()) == []


def test_missing_store_file_leaves_nothing_half_written(source: Source, tmp_path: Path) -> None:
    ledger = Ledger.open(source.campaign.ledger)
    with ledger.reading() as s:
        rel = s.scalars(select(Sample.image_path).where(Sample.uid == source.annotated)).one()
    ledger.close()
    (source.campaign.store / rel).unlink()
    with pytest.raises(ExportError, match=f"sample {source.annotated}: image .*{rel}"):
        export_campaign(source.campaign, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]  # no out, no temporary folder


# ---- Label Studio layout --------------------------------------------------------------------------------------


def test_labelstudio_tasks_decode_to_the_stored_masks(source: Source, tmp_path: Path) -> None:
    campaign = source.campaign
    report = export_campaign(campaign, tmp_path / "ls", fmt="labelstudio", include_pseudo=True)
    out = tmp_path / "ls"
    tasks = json.loads((out / "tasks.json").read_text())
    assert (out / "label_config.xml").read_text() == label_config(campaign)
    assert report.notes and "document root" in report.notes[0]  # outside it: paths relative to the export
    human, pseudo = active(campaign, "human"), active(campaign, "pseudo")
    classes = list(campaign.data.classes)
    assert len(tasks) == report.labels == len(human) + 2
    seen = set()
    for task in tasks:
        data = task["data"]
        uid = data["sample_uid"]
        seen.add(uid)
        assert data[IMAGE_TO] == f"images/{uid}.png" and (out / data[IMAGE_TO]).is_file()
        if data["kind"] == "human":
            cls, mask, _ = human[uid]
            (ann,) = task["annotations"]
            assert "predictions" not in task
            result = ann["result"]
        else:
            cls, mask, _ = pseudo[uid]
            (pred,) = task["predictions"]
            assert pred["model_version"] == "round-1/ups" and data["round"] == 1
            result = pred["result"]
            mask = None if mask is None else mask_at(mask, (H, W))
        choices = [r for r in result if r["type"] == "choices"]
        assert [r["value"]["choices"] for r in choices] == ([[cls]] if cls else [])
        assert all((r["from_name"], r["to_name"]) == (CLASS_FROM, IMAGE_TO) for r in choices)
        brushes = [r for r in result if r["type"] == "brushlabels"]
        assert all((r["from_name"], r["to_name"]) == (LESION_FROM, IMAGE_TO) for r in brushes)
        decoded = np.zeros((H, W), np.uint8)
        for r in brushes:
            assert (r["original_height"], r["original_width"]) == (H, W)
            assert r["value"]["brushlabels"] == [campaign.labeling.lesion_label]
            decoded |= rle_to_mask(r["value"]["rle"], H, W)
        assert data["has_mask"] == (mask is not None)
        assert np.array_equal(decoded, np.zeros((H, W), np.uint8) if mask is None else mask), uid
        if cls is not None:  # what medloop's own sync makes of it: the same class and mask
            got_cls, got_mask = parse_annotation({"result": result}, classes, H, W)
            assert got_cls == cls and np.array_equal(got_mask, decoded)
    assert seen == set(human) | {source.pending, source.class_only}
    assert tasks[0]["data"]["audit"] in (None, "pending", "disagreed")


def test_labelstudio_image_address(source: Source, tmp_path: Path) -> None:
    c = source.campaign.model_copy(update={"labeling": source.campaign.labeling.model_copy(
        update={"document_root": str(tmp_path)})})
    report = export_campaign(c, tmp_path / "exports" / "x", fmt="labelstudio")
    task = json.loads((tmp_path / "exports" / "x" / "tasks.json").read_text())[0]
    assert not report.notes
    assert task["data"]["image"] == f"/data/local-files/?d=exports/x/images/{task['data']['sample_uid']}.png"
    export_campaign(c, tmp_path / "y", fmt="labelstudio", image_url="https://files.example.org/y/")
    task = json.loads((tmp_path / "y" / "tasks.json").read_text())[0]
    assert task["data"]["image"] == f"https://files.example.org/y/{task['data']['sample_uid']}.png"


@pytest.mark.labelstudio
def test_labelstudio_imports_the_export(labelstudio_server, tmp_path: Path, lay: Any) -> None:
    """A real Label Studio imports tasks.json into a project with the campaign's labeling interface,
    serves the exported images, and gives back annotations that sync reads as the same labels."""
    from medloop.labeling.client import connect
    from medloop.labeling.project import ensure_local_storage
    from medloop.labeling.pull import fetch_tasks
    from medloop.labeling.push import import_tasks

    name = f"export-{np.random.default_rng().integers(1 << 30)}"
    ls_campaign = labelstudio_server.campaign(name)
    src = build_source(tmp_path, lay)
    campaign = src.campaign.model_copy(update={"labeling": ls_campaign.labeling})
    out = labelstudio_server.document_root / "exports" / name
    out.parent.mkdir(exist_ok=True)
    export_campaign(campaign, out, fmt="labelstudio", include_pseudo=True)
    tasks = json.loads((out / "tasks.json").read_text())
    client = connect(campaign)
    project = client.post("/api/projects", json={"title": f"test-{name}", "label_config": label_config(campaign)})
    pid = int(project["id"])
    ensure_local_storage(client, pid, (out / "images").resolve())
    assert len(import_tasks(client, pid, tasks)) == len(tasks)
    human = active(campaign, "human")
    back = fetch_tasks(client, pid)
    assert len(back) == len(tasks)
    import requests

    headers = {"Authorization": f"Token {labelstudio_server.token}"}
    classes = list(campaign.data.classes)
    n_pred = 0
    for task in back:
        uid = task["data"]["sample_uid"]
        r = requests.get(campaign.labeling.url + task["data"]["image"], headers=headers, timeout=60)
        assert r.status_code == 200 and r.content == (out / "images" / f"{uid}.png").read_bytes()
        if task["data"]["kind"] == "pseudo":
            n_pred += len(task["predictions"])
            continue
        (ann,) = task["annotations"]
        cls, mask, _ = human[uid]
        if cls is None:
            continue
        got_cls, got_mask = parse_annotation(ann, classes, H, W)
        assert got_cls == cls and np.array_equal(got_mask, np.zeros((H, W), np.uint8) if mask is None else mask)
    assert n_pred == 2
