"""The dashboard's read functions and figure builders, checked against the ledger through the ORM.

The ORM checks run on the hand-filled campaign twice: with its ledger in SQLite and in a real
PostgreSQL database (tests/ledger_backends.py); ``test_every_query_agrees_on_sqlite_and_postgresql``
compares every query's result between the two."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from campaign_fixture import build_campaign  # tests/dashboard is on sys.path (conftest)
from sqlalchemy import func, select

from medloop.config import load_campaign
from medloop.dashboard import charts, queries
from medloop.dashboard.cli import streamlit_command
from medloop.ledger.schema import Label, Prediction, Sample, Selection
from medloop.ledger.store import Ledger


@pytest.fixture(scope="module")
def pg_hand_campaign(postgres_server, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    """The hand-filled campaign with its ledger in a PostgreSQL database (no MLflow store)."""
    url = postgres_server.url(postgres_server.create_database("dash"))
    return build_campaign(tmp_path_factory.mktemp("hand-campaign-pg"), with_mlflow=False, ledger_url=url)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend_campaign(request: pytest.FixtureRequest, hand_campaign: Path) -> Path:
    """The hand-filled campaign on each ledger backend."""
    return hand_campaign if request.param == "sqlite" else request.getfixturevalue("pg_hand_campaign")


@pytest.fixture(scope="module")
def engine(backend_campaign: Path):  # noqa: ANN201
    eng = queries.open_readonly(load_campaign(backend_campaign).ledger)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def orm(backend_campaign: Path):  # noqa: ANN201
    ledger = Ledger.open(load_campaign(backend_campaign).ledger, create=False)
    yield ledger
    ledger.close()


CLOCK_COLUMNS = {"started_at", "finished_at", "seconds", "mlflow_run_id"}  # differ between two builds


def _every_query(engine) -> dict[str, object]:  # noqa: ANN001
    """Every read function of the dashboard with the arguments the app passes."""
    classes = ["normal", "benign", "malignant"]
    out: dict[str, object] = {
        "split_counts": queries.split_counts(engine), "rounds": queries.rounds(engine),
        "round_steps": queries.round_steps(engine), "pool_composition": queries.pool_composition(engine),
        "label_curve": queries.label_curve(engine), "rebuilt": queries._composition_at_train(engine, [1, 2]),
        "pseudo_per_class": queries.pseudo_per_class(engine), "thresholds": queries.thresholds(engine),
        "decision_counts": queries.decision_counts(engine), "audit_precision": queries.audit_precision(engine),
        "truth_precision": queries.truth_precision(engine), "task_states": queries.task_states(engine),
        "kept_prediction": queries.kept_prediction(engine), "open_queue": queries.open_queue_size(engine),
        "quarantined": queries.quarantined(engine),
    }
    for r in (1, 2):
        out[f"calibration-{r}"] = queries.per_class_calibration(engine, r, classes)
        out[f"pairs-{r}"] = queries.uncertainty_pairs(engine, r, limit=20)
        for m in queries.UNCERTAINTY_MEASURES:
            out[f"scatter-{r}-{m}"] = queries.selection_scatter(engine, r, m, limit=25)
        for k, d in ((None, None), (1, None), (None, "audit"), (2, "queue"), (0, "rejected")):
            out[f"count-{r}-{k}-{d}"] = queries.explorer_count(engine, r, class_index=k, decision=d)
            out[f"page-{r}-{k}-{d}"] = queries.explorer_page(engine, r, class_index=k, decision=d, page_size=50)
        for page in range(3):
            out[f"page-{r}-{page}"] = queries.explorer_page(engine, r, page=page, page_size=7)
    return out


def test_every_query_agrees_on_sqlite_and_postgresql(hand_campaign: Path, pg_hand_campaign: Path) -> None:
    """The same campaign written to SQLite and to PostgreSQL reads back the same from every query:
    values, column types and row order (before, PostgreSQL failed on SQLite's two-argument MIN)."""
    results = []
    for cfg in (hand_campaign, pg_hand_campaign):
        eng = queries.open_readonly(load_campaign(cfg).ledger)
        try:
            results.append(_every_query(eng))
        finally:
            eng.dispose()
    lite, pg = results
    assert load_campaign(pg_hand_campaign).ledger.startswith("postgresql")
    assert lite.keys() == pg.keys()
    for key, a in lite.items():
        b = pg[key]
        if isinstance(a, pd.DataFrame):
            assert isinstance(b, pd.DataFrame) and list(a.columns) == list(b.columns), key
            keep = [c for c in a.columns if c not in CLOCK_COLUMNS]
            pd.testing.assert_frame_equal(a[keep], b[keep], check_exact=False, rtol=1e-12, obj=key)
        else:
            assert a == b, key
    assert lite["open_queue"] > 0 and len(lite["calibration-1"]) > 0 and len(lite["thresholds"]) > 0
    assert lite["count-1-None-audit"] > 0 and len(lite["scatter-2-std"]) > 0


def test_calibration_bins_floor_on_every_backend(ledger_url: str) -> None:
    """bin = min(floor(confidence * n_bins), n_bins - 1): 0.5 * 15 = 7.5 goes to bin 7 (PostgreSQL's
    CAST would round it to 8), 1.0 to the last bin, 0.0 to bin 0."""
    from medloop.ledger.schema import Round
    from medloop.ledger.store import add_human_label

    ledger = Ledger.open(ledger_url)
    confidences = [0.0, 0.5, 0.54, 0.999, 1.0]
    with ledger.transaction() as s:
        s.add(Round(id=1, status="done"))
        for i, conf in enumerate(confidences):
            sample = Sample(uid=f"s{i}", content_hash=f"h{i}", image_path=f"i{i}.png", source="t", split="val",
                            height=8, width=8, channels=1)
            s.add(sample)
            s.flush()
            add_human_label(s, sample.id, class_name="a", mask_path=None, author="seed")
            s.add(Prediction(round_id=1, sample_id=sample.id, model_version="m", probs=[conf], pred_class=0,
                             confidence=conf))
    ledger.close()
    engine = queries.open_readonly(ledger_url)
    try:
        binned = queries.per_class_calibration(engine, 1, ["a"], n_bins=15)
    finally:
        engine.dispose()
    assert dict(zip(binned["bin"], binned["n"])) == {0: 1, 7: 1, 8: 1, 14: 2}


def test_pool_composition_adds_up(engine, orm) -> None:  # noqa: ANN001
    pool = queries.pool_composition(engine)
    with orm.reading() as s:
        population = len(s.scalars(select(Sample.id).where(Sample.split.in_(("train", "pool")))).all())
        # the same categories computed per sample in Python through the ORM
        from medloop.ledger.schema import AnnotationTask, Round

        cands = set(s.scalars(select(Sample.id).where(Sample.split.in_(("train", "pool")))))
        labels = s.scalars(select(Label).where(Label.kind.in_(("human", "pseudo")))).all()
        tasks = s.scalars(select(AnnotationTask)).all()
        for rnd in s.scalars(select(Round)).all():
            end = rnd.finished_at
            human = {x.sample_id for x in labels if x.kind == "human" and x.created_at <= end} & cands
            pseudo = {x.sample_id for x in labels if x.kind == "pseudo" and x.round_id == rnd.id} & cands - human
            queued = {t.sample_id for t in tasks if not t.is_audit and t.round_id <= rnd.id
                      and (t.completed_at is None or t.completed_at > end)
                      and t.state not in ("skipped", "quarantined")}
            got = pool.loc[pool["round"] == rnd.id].set_index("kind")["samples"]
            assert got["human"] == len(human), rnd.id
            assert got["pseudo"] == len(pseudo), rnd.id
            assert got["queued"] == len(queued), rnd.id
            assert got["unlabeled"] == len(cands - human - pseudo - queued), rnd.id
    totals = pool.groupby("round")["samples"].sum()
    assert list(totals.index) == [1, 2]
    assert (totals == population).all()
    kinds = pool.set_index(["round", "kind"])["samples"]
    assert kinds[(2, "human")] > kinds[(1, "human")]  # round 1's answered queue became human labels


def test_per_class_calibration_matches_orm(engine, orm) -> None:  # noqa: ANN001
    classes = ["normal", "benign", "malignant"]
    summary = queries.per_class_summary(queries.per_class_calibration(engine, 1, classes)).set_index("class")
    with orm.reading() as s:
        rows = s.execute(
            select(Prediction.pred_class, Prediction.confidence, Label.class_name)
            .join(Sample, Sample.id == Prediction.sample_id)
            .join(Label, (Label.sample_id == Prediction.sample_id) & (Label.kind == "human") & Label.active)
            .where(Prediction.round_id == 1, Sample.split == "val")
        ).all()
    for k, name in enumerate(classes):
        mine = [(c, lab == name) for pc, c, lab in rows if pc == k]
        if not mine:
            continue
        assert summary.loc[name, "n"] == len(mine)
        assert summary.loc[name, "mean confidence"] == pytest.approx(np.mean([c for c, _ in mine]))
        assert summary.loc[name, "accuracy"] == pytest.approx(np.mean([ok for _, ok in mine]))


def test_explorer_pages_cover_the_selection(engine, orm) -> None:  # noqa: ANN001
    total = queries.explorer_count(engine, 1)
    with orm.reading() as s:
        expected = set(s.scalars(select(Selection.sample_id).where(Selection.round_id == 1)))
    assert total == len(expected)
    seen: list[int] = []
    for page in range(-(-total // 5)):
        rows = queries.explorer_page(engine, 1, page=page, page_size=5)
        assert len(rows) <= 5
        seen += rows["sample_id"].tolist()
    assert sorted(seen) == sorted(expected)
    audited = queries.explorer_page(engine, 1, decision="audit", page_size=50)
    assert (audited["decision"] == "pseudo+audit").all() and len(audited) >= 1
    assert audited["pseudo_class"].notna().all()
    # a class filter keeps that predicted class only; pages follow the score, highest first
    with orm.reading() as s:
        best = dict(s.execute(select(Selection.sample_id, func.max(Selection.score)).where(Selection.round_id == 1)
                              .group_by(Selection.sample_id)).all())
        predicted = dict(s.execute(select(Prediction.sample_id, Prediction.pred_class)
                                   .where(Prediction.round_id == 1)).all())
    for k in range(3):
        mine = sorted((sid for sid in best if predicted.get(sid) == k),
                      key=lambda sid: (-(best[sid] if best[sid] is not None else -np.inf), sid))
        assert queries.explorer_count(engine, 1, k) == len(mine)
        rows = pd.concat([queries.explorer_page(engine, 1, k, page=i, page_size=4) for i in range(-(-len(mine) // 4))]
                         or [pd.DataFrame({"sample_id": []})])
        assert rows["sample_id"].tolist() == mine


def test_selection_scatter_rejects_unknown_measure(engine) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="unknown uncertainty measure"):
        queries.selection_scatter(engine, 1, "std; DROP TABLE rounds")


def test_missing_ledger_is_a_message(tmp_path: Path) -> None:
    with pytest.raises(queries.LedgerUnavailable, match="No ledger at"):
        queries.open_readonly(f"sqlite:///{tmp_path / 'nope.db'}")
    assert not (tmp_path / "nope.db").exists()


def test_missing_mlflow_is_a_message(tmp_path: Path) -> None:
    with pytest.raises(queries.TrackingUnavailable, match="No MLflow store"):
        queries.tracking_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not (tmp_path / "mlflow.db").exists()


def test_overlay_shows_all_three_outlines_when_masks_agree() -> None:
    img = np.full((16, 16), 100, np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 1
    out = charts.overlay(img, {"human": mask, "pseudo": mask, "predicted": mask}, scale=4)
    assert out.shape == (64, 64, 3)
    colours = {tuple(c) for c in out.reshape(-1, 3)}
    for rgb in charts.OVERLAY_RGB.values():
        assert rgb in colours
    plain = charts.overlay(img, {"human": None}, scale=4)
    assert {tuple(c) for c in plain.reshape(-1, 3)} == {(100, 100, 100)}


def test_overlay_outlines_each_region_of_a_label_map() -> None:
    img = np.full((16, 16), 100, np.uint8)
    labels = np.zeros((16, 16), np.uint8)
    labels[2:14, 2:14] = 1  # oedema around
    labels[6:10, 6:10] = 2  # a core inside it
    blue = charts.OVERLAY_RGB["predicted"]
    whole = charts.overlay(img, {"predicted": (labels > 0).astype(np.uint8)}, scale=1)
    per_region = charts.overlay(img, {"predicted": labels}, scale=1)
    inner = np.zeros((16, 16), bool)
    inner[6:10, 6:10] = True
    core_edge = inner & ~np.pad(inner[1:-1, 1:-1], 1)  # the core's outermost ring of pixels
    assert not (whole[core_edge] == blue).all(axis=1).any()  # one outline: nothing at the core
    assert (per_region[core_edge] == blue).all(axis=1).all()  # per region: the core's border is drawn
    # a partial volume label (255: not annotated) is no region
    assert charts.region_values(np.array([[0, 1, 255], [3, 3, 0]])) == [1, 3]
    note = charts.region_note({"predicted": labels, "human": None}, ["oedema", "core"])
    assert note == f" · predicted regions (one outline each): oedema {int((labels == 1).sum())} px, core 16 px"
    assert charts.region_note({"predicted": labels}, None) == ""


def test_class_colours_are_the_same_on_every_chart() -> None:
    import pandas as pd

    classes = ["normal", "benign", "malignant"]
    bars = charts.pseudo_bars(pd.DataFrame({"round": [1], "class": ["benign"], "selector": ["ups"], "samples": [3]}),
                              classes).to_dict()
    scatter = charts.uncertainty_scatter(
        pd.DataFrame({"sample_id": [1], "pred_class": [1], "std": [0.1], "vacuity": [0.2], "split": ["pool"]}), classes
    ).to_dict()
    a, b = bars["encoding"]["color"]["scale"], scatter["encoding"]["color"]["scale"]
    assert a["domain"][:3] == b["domain"][:3] == classes
    assert a["range"][:3] == b["range"][:3]


def test_dashboard_command_binds_localhost(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "x"\n')
    cmd = streamlit_command(cfg, 8600)
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8600"
    assert cmd[cmd.index("--server.headless") + 1] == "true"
    assert cmd[-2:] == ["--config", str(cfg.resolve())]


def test_dashboard_command_missing_config(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medloop.cli import app

    result = CliRunner().invoke(app, ["dashboard", "--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 2
    assert "campaign file not found" in result.output


# ---- label-efficiency curve --------------------------------------------------------------------------------


def test_label_curve_hand_campaign(engine, orm) -> None:  # noqa: ANN001
    """Round 1 is written old-style (no ``trained_on``): rebuilt from label timestamps; round 2 is recorded."""
    curve = queries.label_curve(engine)
    assert list(curve.columns[:9]) == ["round", "human_labels", "val_dice", "val_accuracy", "val_empty_rate",
                                       "human", "pseudo", "unlabeled", "val"]
    assert curve["round"].tolist() == [1, 2]
    r1, r2 = (curve.iloc[i].to_dict() for i in range(2))
    # round 1: 10 train + 12 val human labels (6 test never counted), no pseudo-labels yet
    assert (r1["human_labels"], r1["human"], r1["pseudo"], r1["val"]) == (22, 10, 0, 12)
    assert pd.isna(r1["unlabeled"]) and r1["composition"] == "reconstructed"
    assert r1["val_dice"] == pytest.approx(0.6) and r1["val_accuracy"] == pytest.approx(0.65)
    assert np.isnan(r1["val_empty_rate"])  # older best_metrics have no empty rate
    # round 2: + 3 answered queue tasks + 1 answered audit; round 1's pseudo-labels less the audited one
    with orm.reading() as s:
        audited = set(s.scalars(select(Selection.sample_id).where(Selection.round_id == 1,
                                                                     Selection.decision == "audit")))
        pseudo_r1 = set(s.scalars(select(Label.sample_id).where(Label.kind == "pseudo", Label.round_id == 1)))
    assert (r2["human_labels"], r2["human"], r2["val"], r2["unlabeled"]) == (26, 14, 12, 0)
    assert r2["pseudo"] == len(pseudo_r1 - audited) == 19
    assert r2["composition"] == "recorded"
    assert (r2["val_dice"], r2["val_accuracy"], r2["val_empty_rate"]) == pytest.approx((0.7, 0.75, 0.9))


def test_label_curve_rebuild_matches_recorded(engine) -> None:  # noqa: ANN001
    """The timestamp fallback, applied to the round that recorded ``trained_on``, gives the same counts."""
    rebuilt = queries._composition_at_train(engine, [1, 2])
    recorded = queries.label_curve(engine).set_index("round").loc[2]
    for key in ("human", "pseudo", "val", "human_labels"):
        assert rebuilt[2][key] == recorded[key], key
    assert rebuilt[1]["human_labels"] == 22 and np.isnan(rebuilt[2]["unlabeled"])


def test_label_curve_odd_and_unfinished_rounds(tmp_path: Path) -> None:
    """Unfinished train steps are left out; malformed details never crash the query."""
    from datetime import timedelta

    from medloop.ledger.schema import Round, RoundStep, utcnow
    from medloop.ledger.store import add_human_label

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger.open(url)
    t0 = utcnow()
    details = {
        1: ("done", {"trained_on": {"human": "many", "val": True}, "best_metrics": "oops"}),
        2: ("running", {"trained_on": {"human": 1, "pseudo": 0, "unlabeled": 0, "val": 1, "human_labels": 2}}),
        3: ("done", None),  # no detail and no timestamps
        4: ("done", {"trained_on": {"human": 5, "val": 3, "pseudo": 2.5}, "best_metrics": {"val_dice": 0.4}}),
    }
    with ledger.transaction() as s:
        for i, split in enumerate(["train", "val", "test", "pool"]):
            s.add(Sample(uid=f"s{i}", content_hash=f"h{i}", image_path=f"i{i}.png", source="t", split=split,
                         height=8, width=8, channels=1))
        s.flush()
        for sid in s.scalars(select(Sample.id)):
            add_human_label(s, sid, class_name="a", mask_path=None, author="seed")
        for rnd, (state, detail) in details.items():
            s.add(Round(id=rnd, status="done", started_at=t0))
            timed = rnd != 3
            s.add(RoundStep(round_id=rnd, step="train", state=state, detail=detail,
                            started_at=t0 + timedelta(seconds=rnd) if timed else None,
                            finished_at=t0 + timedelta(seconds=rnd + 1) if timed else None))
    ledger.close()
    engine = queries.open_readonly(url)
    try:
        curve = queries.label_curve(engine).set_index("round")
    finally:
        engine.dispose()
    assert curve.index.tolist() == [1, 3, 4]
    assert curve.loc[1, "composition"] == "reconstructed"  # text counts: rebuilt (train + pool + val; test not)
    assert (curve.loc[1, "human"], curve.loc[1, "val"], curve.loc[1, "human_labels"]) == (2, 1, 3)
    assert np.isnan(curve.loc[1, "val_dice"])
    assert curve.loc[3, "composition"] == "missing" and pd.isna(curve.loc[3, "human_labels"])
    assert curve.loc[4, "composition"] == "recorded"  # human_labels = human + val when not written
    assert curve.loc[4, "human_labels"] == 8 and pd.isna(curve.loc[4, "pseudo"])  # 2.5 is not a count
    assert curve.loc[4, "val_dice"] == pytest.approx(0.4)
    # the charts take the same frame (unknown counts and metrics included) without failing
    charts.label_efficiency(curve.reset_index()).to_dict()
    charts.trained_on_stack(curve.reset_index()).to_dict()


def test_label_curve_charts() -> None:
    curve = pd.DataFrame({
        "round": [1, 2, 3], "human_labels": pd.array([22, 26, 26], dtype="Int64"),
        "val_dice": [0.5, 0.6, np.nan], "val_accuracy": [0.7, 0.8, 0.85], "val_empty_rate": [np.nan, 0.9, 0.95],
        "human": pd.array([10, 14, 14], dtype="Int64"), "pseudo": pd.array([0, 19, 20], dtype="Int64"),
        "unlabeled": pd.array([pd.NA, 0, 30], dtype="Int64"), "val": pd.array([12, 12, 12], dtype="Int64"),
        "composition": ["reconstructed", "recorded", "recorded"],
    })
    lines = charts.label_efficiency(curve).to_dict()
    assert lines["encoding"]["x"]["field"] == "human_labels"
    assert lines["encoding"]["order"]["field"] == "round"
    assert lines["mark"]["type"] == "line" and lines["mark"]["point"]
    scale = lines["encoding"]["color"]["scale"]
    assert scale["domain"] == ["val Dice", "val accuracy"]
    rows = next(iter(lines["datasets"].values()))
    assert rows[0]["trained_txt"] == "human 10 · pseudo 0 · unlabeled — (validation 12)"
    assert rows[2]["dice_txt"] == "—" and rows[1]["empty_txt"] == "0.9000"
    tips = {t["title"] for t in lines["encoding"]["tooltip"]}
    assert {"round", "trained on", "human labels (train + val)"} <= tips
    bars = charts.trained_on_stack(curve).to_dict()
    assert bars["mark"]["type"] == "bar" and bars["encoding"]["x"]["field"] == "round"
    kinds = bars["encoding"]["color"]["scale"]
    assert kinds["domain"] == ["human", "pseudo", "unlabeled"]
    assert kinds["range"] == [charts.KIND_COLOURS[k] for k in kinds["domain"]]  # same colours as the pool chart
    # the browser test wants coloured (saturated) marks in every chart: lines and the human/pseudo bars
    for colour in [*scale["range"], *kinds["range"][:2]]:
        rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
        assert max(rgb) - min(rgb) > 60, colour
