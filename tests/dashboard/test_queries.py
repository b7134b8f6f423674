"""The dashboard's read functions and figure builders, checked against the ledger through the ORM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from medloop.config import load_campaign
from medloop.dashboard import charts, queries
from medloop.dashboard.cli import streamlit_command
from medloop.ledger.schema import Label, Prediction, Sample, Selection
from medloop.ledger.store import Ledger


@pytest.fixture(scope="module")
def engine(hand_campaign: Path):  # noqa: ANN201
    eng = queries.open_readonly(load_campaign(hand_campaign).ledger)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def orm(hand_campaign: Path):  # noqa: ANN201
    ledger = Ledger.open(load_campaign(hand_campaign).ledger, create=False)
    yield ledger
    ledger.close()


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
