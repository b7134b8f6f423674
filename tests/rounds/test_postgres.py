"""Rounds with the ledger on a real PostgreSQL server (tests/ledger_backends.py), against SQLite.

The same tiny campaign runs two rounds on each backend (the deterministic train/score stand-ins of
support.py; sync, select, push with the oracle and report are the real steps): the two ledgers must
be equal. One real round (Ray training and scoring, MLflow tracking and registry) runs on PostgreSQL.
Then kill -9 at a few steps on PostgreSQL and resume, as test_resume.py does on SQLite. A campaign
is "copied" on PostgreSQL by copying its folder and creating its database from the template database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from support import TINY, ingest_synthetic, ledger_snapshot, tiny_campaign, write_config

from medloop.ledger import Ledger, Round
from medloop.rounds.orchestrator import run_round

HERE = Path(__file__).parent


def _two_rounds(root: Path, ledger_url: str | None) -> tuple[dict, list[dict]]:
    c = tiny_campaign(root, ledger_url=ledger_url) if ledger_url else tiny_campaign(root)
    ingest_synthetic(c)
    first = run_round(c, extras={**TINY, "tracking": False})
    second = run_round(c, extras={**TINY, "tracking": False}, force=True)
    assert (first.status, second.status, second.round_id) == ("done", "done", 2)
    led = Ledger.open(c.ledger)
    try:
        with led.reading() as s:
            notes = [dict(r.notes or {}, metrics=r.metrics) for r in s.scalars(select(Round).order_by(Round.id))]
    finally:
        led.close()
    return ledger_snapshot(c), json.loads(json.dumps(notes).replace(str(root), "<campaign folder>"))


def test_two_rounds_give_the_same_ledger_on_sqlite_and_postgresql(postgres_server, tmp_path: Path) -> None:
    url = postgres_server.url(postgres_server.create_database("rounds"))
    lite = _two_rounds(tmp_path / "lite", None)
    pg = _two_rounds(tmp_path / "pg", url)
    assert not (tmp_path / "pg" / "ledger.db").exists()  # the PostgreSQL campaign kept nothing in SQLite
    assert pg[0] == lite[0]
    assert pg[1] == lite[1]
    snap = pg[0]
    assert snap["rounds"] == [(1, "done", "round-1"), (2, "done", "round-2")]
    assert any(lab[1] == "pseudo" for lab in snap["labels"]) and any(lab[4] == "oracle" for lab in snap["labels"])


@pytest.fixture(scope="module")
def pg_template(postgres_server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One ingested campaign on PostgreSQL: its folder and the name of its (template) database."""
    db = postgres_server.create_database("template")
    root = tmp_path_factory.mktemp("pg-template") / "camp"
    ingest_synthetic(tiny_campaign(root, ledger_url=postgres_server.url(db)))
    return root, db


def _copy(postgres_server, template: tuple[Path, str], root: Path):  # noqa: ANN001, ANN202
    shutil.copytree(template[0], root)
    db = postgres_server.create_database("case", template=template[1])
    return tiny_campaign(root, ledger_url=postgres_server.url(db))


@pytest.fixture(scope="module")
def pg_baseline(postgres_server, pg_template, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: ANN001
    c = _copy(postgres_server, pg_template, tmp_path_factory.mktemp("pg-baseline") / "camp")
    assert run_round(c, extras={**TINY, "tracking": False}).status == "done"
    return ledger_snapshot(c)


CASES = [("select", "before"), ("select", "after-commit"), ("push", "after-commit"), ("report", "before")]


@pytest.mark.parametrize("step,when", CASES, ids=[f"{s}-{w}" for s, w in CASES])
def test_kill9_then_resume_on_postgresql(step: str, when: str, postgres_server, pg_template, pg_baseline: dict,
                                         tmp_path: Path) -> None:  # noqa: ANN001
    c = _copy(postgres_server, pg_template, tmp_path / "camp")
    cfg = write_config(c, tmp_path / "campaign.toml")
    env = {**os.environ, "MEDLOOP_TEST_CRASH_AT": f"{step}:{when}"}
    crashed = subprocess.run([sys.executable, str(HERE / "round_runner.py"), str(cfg), "--tiny", "--no-tracking"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    states = {s: st for r, s, st in ledger_snapshot(c)["steps"] if r == 1}
    assert states[step] == ("running" if when == "before" else "done")
    out = run_round(c, extras={**TINY, "tracking": False})
    assert out.status == "done" and out.resumed
    assert ledger_snapshot(c) == pg_baseline


@pytest.mark.slow  # real Ray training + MC scoring + MLflow, one round: ~2 min on 2 shared CPU cores
def test_one_real_round_on_postgresql(postgres_server, tmp_path: Path) -> None:  # noqa: ANN001
    from mlflow.tracking import MlflowClient
    from test_campaign import real_campaign

    from medloop.ledger import Prediction

    url = postgres_server.url(postgres_server.create_database("real"))
    c = real_campaign(tmp_path / "camp").model_copy(update={"ledger_url": url})
    ingest_synthetic(c)
    out = run_round(c)
    assert (out.status, out.round_id) == ("done", 1)
    assert not (c.folder / "ledger.db").exists()
    led = Ledger.open(c.ledger)
    try:
        with led.reading() as s:
            rnd = s.get(Round, 1)
            assert rnd is not None and rnd.status == "done" and rnd.mlflow_run_id and rnd.checkpoint_path
            for key in ("accuracy", "ece", "calibration", "risk_coverage"):
                assert key in rnd.metrics, key
            preds = s.scalars(select(Prediction)).all()
            assert preds and all(0.0 <= p.confidence <= 1.0 and p.embedding for p in preds)
    finally:
        led.close()
    client = MlflowClient(tracking_uri=c.tracking_uri, registry_uri=c.tracking_uri)
    assert client.get_run(rnd.mlflow_run_id).data.tags["medloop.round"] == "1"
    assert len(client.search_model_versions(f"name='medloop-{c.name}'")) == 1
