"""Label Studio as a team deploys it: several worker processes (gunicorn) with PostgreSQL behind them,
and a push with several bulk imports in flight (``labeling.push_concurrency``).

The server is a real Label Studio 1.23 started by ``medloop.labeling.server.start`` with
``labeling.server_workers = 2`` on a throwaway PostgreSQL 15 (``tests/ledger_backends.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psycopg
import pytest
from labeling_queue import build_queue
from ledger_backends import PORT, PostgresServer
from sqlalchemy import select

from medloop.config import Campaign, ConfigError, parse_campaign, with_labeling
from medloop.labeling import server, server_launch
from medloop.labeling.push import existing_tasks, push_queue
from medloop.ledger import AnnotationTask


def test_database_env_from_a_url_with_a_socket_folder_and_a_password_from_the_environment():
    env = server_launch.database_env("postgresql://ls@/labels?host=/run/pg&port=5433",
                                     {server_launch.PASSWORD_ENV: "s3cret"})
    assert env == {"LABEL_STUDIO_DJANGO_DB": "default", "LABEL_STUDIO_POSTGRE_HOST": "/run/pg",
                   "LABEL_STUDIO_POSTGRE_PORT": "5433", "LABEL_STUDIO_POSTGRE_NAME": "labels",
                   "LABEL_STUDIO_POSTGRE_USER": "ls", "LABEL_STUDIO_POSTGRE_PASSWORD": "s3cret"}
    tcp = server_launch.database_env("postgres://ls@db.internal:6000/x", {})
    assert (tcp["LABEL_STUDIO_POSTGRE_HOST"], tcp["LABEL_STUDIO_POSTGRE_PORT"]) == ("db.internal", "6000")
    assert tcp["LABEL_STUDIO_POSTGRE_PASSWORD"] == ""  # Django then passes none: libpq's PGPASSWORD / ~/.pgpass
    assert server_launch.database_env(None, {}) == {"LABEL_STUDIO_DJANGO_DB": "sqlite"}


@pytest.mark.parametrize(("url", "message"), [
    ("postgresql://ls:hunter2@db/labels", "holds a password"),
    ("mysql://ls@db/labels", "expected a PostgreSQL URL"),
])
def test_server_database_refused_with_a_password_or_another_engine(url, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_campaign({"name": "x", "labeling": {"server_database": url}}, "campaign.toml")
    assert "labeling.server_database" in str(err.value) and "hunter2" not in str(err.value)
    with pytest.raises(ConfigError, match=message) as err:  # `medloop labelstudio start --database URL`
        with_labeling(Campaign(name="x"), "--database", server_database=url)
    assert "hunter2" not in str(err.value)


def test_one_worker_is_label_studios_own_server_and_more_run_under_gunicorn(tmp_path):
    one = server_launch.server_command(tmp_path, port=8123, data_dir=tmp_path / "d", workers=1)
    assert one[0] == str(tmp_path / "bin" / "label-studio") and one[1] == "start"
    four = server_launch.server_command(tmp_path, port=8123, data_dir=tmp_path / "d", workers=4)
    assert four[:2] == [str(tmp_path / "bin" / "python"), "-c"]
    assert four[3:5] == ["4", str(tmp_path / "bin" / "gunicorn")]
    assert four[5:9] == ["start", "--no-browser", "--internal-host", "127.0.0.1"]


@pytest.fixture
def team_server(labelstudio_venv: Path, postgres_server: PostgresServer, tmp_path: Path):
    database = postgres_server.create_database("labelstudio")
    url = f"postgresql://postgres@/{database}?host={postgres_server.socket_dir}&port={PORT}"
    root = tmp_path / "team"
    campaign = Campaign.model_validate({
        "name": "team", "root": str(root),
        "labeling": {"port": server.free_port(), "server_workers": 2, "server_database": url},
    })
    info = server.start(campaign, venv=labelstudio_venv)
    try:
        yield campaign, info, postgres_server, database
    finally:
        server.stop(campaign)


def _count(pg: PostgresServer, database: str, table: str) -> int:
    with psycopg.connect(host=str(pg.socket_dir), port=PORT, user="postgres", dbname=database) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608 - a fixed table name
    assert row is not None
    return int(row[0])


def test_workers_on_postgresql_take_a_concurrent_push_once_and_stop_together(team_server, tmp_path):
    campaign, info, pg, database = team_server
    members = server._group_members(info.pid)
    assert len(members) == 3, members  # the gunicorn master (the pid medloop recorded) and 2 workers
    assert not (campaign.folder / "labelstudio" / "label_studio.sqlite3").exists()

    pushing = Campaign.model_validate({
        "name": "team-push", "root": str(campaign.folder / "campaigns" / "team-push"),
        "labeling": {"url": info.url, "token_env": "MEDLOOP_TEST_NO_TOKEN", "token_file": str(info.token_file),
                     "project_title": "team-push", "document_root": str(campaign.folder), "push_concurrency": 3},
    })
    q = build_queue(pushing, 40, audit_every=5, native=(60, 80), model_size=32)
    # a corrupt uncertainty map in the third chunk: the two chunks in flight before it are kept
    broken = q.store.path(f"arrays/umap/round-1/{q.uids[25]}.npy")
    good = broken.read_bytes()
    broken.write_bytes(b"not an array")
    with pytest.raises(Exception):  # noqa: B017 - numpy's own error for the bad file
        push_queue(pushing, q.ledger, q.store, chunk_size=10)
    with q.ledger.reading() as s:
        states = dict(s.execute(select(AnnotationTask.id, AnnotationTask.state)).all())
    assert list(states.values()).count("pushed") == 20

    broken.write_bytes(good)
    report = push_queue(pushing, q.ledger, q.store, chunk_size=10)
    assert (report.pushed, report.remaining) == (20, 0)
    client = q.client()
    tasks = existing_tasks(client, report.project_id)
    assert sorted(tasks) == sorted(q.uids)  # every case once
    with q.ledger.reading() as s:
        rows = s.execute(select(AnnotationTask.sample_id, AnnotationTask.ls_task_id, AnnotationTask.state)).all()
    by_sample = {sid: uid for uid, sid in q.sample_ids.items()}
    assert {by_sample[sid]: ls_id for sid, ls_id, _ in rows} == tasks  # the ledger knows each task's id
    assert {state for _, _, state in rows} == {"pushed"}
    # the tasks and their pre-annotations are in PostgreSQL
    assert _count(pg, database, "task") == 40
    assert _count(pg, database, "prediction") == 40
    again = push_queue(pushing, q.ledger, q.store, chunk_size=10)
    assert (again.pushed, len(existing_tasks(client, report.project_id))) == (0, 40)

    assert server.stop(campaign)
    assert server._group_members(info.pid) == []
    assert server.port_free(campaign.labeling.server_port)
    assert np.all([not server._pid_alive(p) for p in members])
