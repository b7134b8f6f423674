"""Recovery on the MLflow side (issue 13): an orphan registry version after kill -9, a lost ledger
meeting an existing MLflow experiment, and an SQLite store left half-migrated by MLflow.

Every state is made for real: the kill -9 lands in a real round subprocess right after the model
version is created (MEDLOOP_TEST_CRASH_AT=report:after-register); the untagged version of an older
medloop is registered through MLflow's client as that release did before it was killed; the lost
ledger is a deleted ledger file; the half-migrated store is a fresh MLflow database migrated with
MLflow's own Alembic scripts up to the migration that rebuilds ``model_versions``, plus the
``_alembic_tmp_model_versions`` table that batch mode creates first, made by hand with the DDL of
``model_versions`` (a disk that fills at that moment cannot be arranged in a test).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import checkpoint_train_round, ingest_synthetic, tiny_campaign, tiny_score_samples, write_config

from medloop.ledger import Ledger, Round
from medloop.rounds.orchestrator import run_round
from medloop.tracking import CampaignMismatch, RoundRecord, Tracker, model_name
from medloop.tracking.store_repair import TrackingStoreError, leftover_tables

HERE = Path(__file__).parent


def extras() -> dict:
    return {"train_round": checkpoint_train_round([0.9, 0.8]), "score_samples": tiny_score_samples}


def versions(c) -> list:
    client = MlflowClient(tracking_uri=c.tracking_uri, registry_uri=c.tracking_uri)
    return sorted(client.search_model_versions(f"name='{model_name(c)}'"), key=lambda v: int(v.version))


def ledger_round(c, round_id: int) -> Round:
    led = Ledger.open(c.ledger)
    try:
        with led.reading() as s:
            rnd = s.get(Round, round_id)
            assert rnd is not None
            return rnd
    finally:
        led.close()


def test_kill9_right_after_registration_then_resume_reuses_the_version(campaign, tmp_path: Path) -> None:
    cfg = write_config(campaign, tmp_path / "campaign.toml")
    env = {**os.environ, "MEDLOOP_TEST_CRASH_AT": "report:after-register"}
    crashed = subprocess.run([sys.executable, str(HERE / "round_runner.py"), str(cfg), "--tiny", "--checkpoint"],
                             env=env, capture_output=True, text=True, timeout=600)
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    (orphan,) = versions(campaign)
    assert orphan.tags["medloop.round"] == "1"  # created with its tags in one call: never untagged
    first_run = orphan.tags["medloop.run_id"]
    assert ledger_round(campaign, 1).mlflow_run_id is None  # the report step never finished

    out = run_round(campaign, extras=extras())
    assert out.status == "done" and out.resumed
    (kept,) = versions(campaign)  # no second version for round 1
    tracker = Tracker(campaign)
    (parent,) = [r for r in tracker.round_runs(1) if "mlflow.parentRunId" not in r.data.tags]
    assert kept.version == orphan.version and kept.tags["medloop.run_id"] == parent.info.run_id != first_run
    assert parent.data.tags["medloop.model_version"] == str(kept.version)
    assert ledger_round(campaign, 1).mlflow_run_id == parent.info.run_id
    assert str(tracker.champion().version) == str(kept.version)
    # the dashboard's champion panel shows the round's current run, not the deleted one of the crash
    from medloop.dashboard.queries import champion

    panel = champion(tracker.client, model_name(campaign))
    assert panel is not None and panel["run_id"] == parent.info.run_id and panel["round"] == "1"
    assert panel["metrics"] == dict(parent.data.metrics)


def test_untagged_version_of_an_older_medloop_is_adopted(campaign) -> None:
    """Older medloop registered the version, then tagged it: killed in between, the version had no
    round tag and the next attempt registered a second one."""
    import mlflow

    from medloop.tracking.export import PYFUNC_MODEL_FILE, export_checkpoint, signature

    led = Ledger.open(campaign.ledger)
    ckpt = checkpoint_train_round([0.9])(campaign, led, round_id=1).checkpoint_path
    tracker = Tracker(campaign, ledger=led)
    rec = RoundRecord(1, {}, {"val_accuracy": 0.9}, checkpoint_path=ckpt, val_score=0.9)
    first = tracker.log_round(rec, log_model=False)
    served = export_checkpoint(campaign, ckpt, campaign.folder / "export")
    with mlflow.start_run(run_id=first):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(PYFUNC_MODEL_FILE), artifacts=served.artifacts,
                                       model_config=served.config, signature=signature(served.config))
    tracker.client.create_registered_model(model_name(campaign))
    untagged = tracker.client.create_model_version(model_name(campaign), info.model_uri, run_id=first)
    assert not untagged.tags

    second = tracker.log_round(rec)
    (adopted,) = versions(campaign)
    assert adopted.version == untagged.version
    assert adopted.tags["medloop.round"] == "1" and adopted.tags["medloop.run_id"] == second
    assert adopted.tags["medloop.campaign_id"] == led.get_meta("campaign_id")
    assert str(tracker.champion().version) == str(adopted.version)
    led.close()


def _lose_ledger(c) -> None:
    db = Path(c.ledger.removeprefix("sqlite:///"))
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    ingest_synthetic(c)  # the user starts again on the same folder


def test_lost_ledger_stops_a_new_round_before_it_changes_anything(campaign, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medloop.cli import app

    assert run_round(campaign, extras=extras()).status == "done"
    old_id = Ledger.open(campaign.ledger).get_meta("campaign_id")
    checkpoint = campaign.checkpoints / "round-1" / "model.pt"
    weights = checkpoint.read_bytes()
    (old_parent,) = [r for r in Tracker(campaign).round_runs(1) if "mlflow.parentRunId" not in r.data.tags]

    _lose_ledger(campaign)
    with pytest.raises(CampaignMismatch) as err:
        run_round(campaign, extras=extras())
    led = Ledger.open(campaign.ledger)
    new_id = led.get_meta("campaign_id")
    text = str(err.value)
    assert new_id and new_id != old_id and old_id in text and new_id in text
    assert "restore its ledger" in text and "new `name`" in text
    with led.reading() as s:
        assert s.query(Round).count() == 0  # no round started
    led.close()
    assert checkpoint.read_bytes() == weights and len(versions(campaign)) == 1
    client = MlflowClient(tracking_uri=campaign.tracking_uri)
    assert client.get_run(old_parent.info.run_id).info.lifecycle_stage == "active"

    # what a user sees: one message, exit 1, no traceback
    cfg = write_config(campaign, tmp_path / "campaign.toml")
    result = CliRunner().invoke(app, ["round", "--config", str(cfg)])
    assert result.exit_code == 1 and old_id in result.output and "Traceback" not in result.output

    # `medloop watch` stops at once with the message (waiting cannot fix it)
    from medloop.rounds.scheduler import watch

    said: list[str] = []
    outs = watch(campaign, 1.0, max_ticks=3, run=lambda c: run_round(c, extras=extras()), sleep=lambda s: None,
                 echo=said.append)
    assert [o.status for o in outs] == ["stopped"] and old_id in said[0]

    # a store made before campaign ids (no tags) that holds rounds this ledger does not know
    exp = client.get_experiment_by_name(campaign.experiment_name)
    client.delete_experiment_tag(exp.experiment_id, "medloop.campaign_id")
    with pytest.raises(CampaignMismatch, match=r"holds round\(s\) 1 that the ledger"):
        run_round(campaign, extras=extras())


def _migrate_to(uri: str, revision: str) -> None:
    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import InitialBase, _get_alembic_config

    engine = sqlalchemy.create_engine(uri)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(uri)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    engine.dispose()


def _before_model_versions_rebuild() -> str:
    """The revision just before the newest MLflow migration that rebuilds ``model_versions`` in batch mode."""
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    scripts = ScriptDirectory.from_config(_get_alembic_config("sqlite://"))
    for rev in scripts.walk_revisions():  # newest first
        source = Path(rev.path).read_text()
        if '"model_versions"' in source and "batch" in source and isinstance(rev.down_revision, str):
            return rev.down_revision
    raise AssertionError("no MLflow migration rebuilds model_versions")


def _half_migrated(db: Path) -> None:
    _migrate_to(f"sqlite:///{db}", _before_model_versions_rebuild())
    with sqlite3.connect(db) as conn:
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'model_versions'").fetchone()[0]
        conn.execute(ddl.replace('"model_versions"', "_alembic_tmp_model_versions", 1))


def test_half_migrated_sqlite_store_is_repaired_when_opened(tmp_path: Path) -> None:
    from mlflow.store.db.utils import _get_latest_schema_revision

    c = tiny_campaign(tmp_path / "camp")
    db = Path(c.tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True)
    _half_migrated(db)
    assert leftover_tables(db) == ["_alembic_tmp_model_versions"]
    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    with pytest.raises(Exception, match="_alembic_tmp_model_versions already exists"):  # the reported failure
        MlflowClient(tracking_uri=f"sqlite:///{copy}").search_experiments()

    tracker = Tracker(c)
    pid = tracker.log_round(RoundRecord(1, {"a": 1}, {"val_accuracy": 0.5}))
    assert tracker.client.get_run(pid).data.metrics["val_accuracy"] == 0.5
    assert leftover_tables(db) == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == _get_latest_schema_revision()
    assert len(list(db.parent.glob("mlflow.db.before-repair-*"))) == 1

    # the original table gone too: nothing is guessed, the message names the file and what to do
    c2 = tiny_campaign(tmp_path / "camp2")
    db2 = Path(c2.tracking_uri.removeprefix("sqlite:///"))
    db2.parent.mkdir(parents=True)
    _half_migrated(db2)
    with sqlite3.connect(db2) as conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute('DROP TABLE "model_versions"')
    with pytest.raises(TrackingStoreError, match=r"mlflow\.db.*model_versions.*Restore a backup"):
        Tracker(c2)
