"""Repair an SQLite MLflow store left by an interrupted schema migration.

MLflow migrates a new store with Alembic. On SQLite, Alembic's "batch" mode changes a table by
creating ``_alembic_tmp_<table>``, copying the rows, dropping ``<table>`` and renaming the copy. A
migration stopped part way (disk full, kill -9) can leave the copy behind: every later open of the
store then fails with "table _alembic_tmp_model_versions already exists" when MLflow retries the
migration. Where the original table still exists, the copy holds nothing the store needs: it is
dropped (after a backup of the database file) and the migration is run again. Where the original
is gone, nothing is guessed: :class:`TrackingStoreError` says what to do.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from medloop.ledger.store import sqlite_file

log = logging.getLogger(__name__)
TMP_PREFIX = "_alembic_tmp_"


class TrackingStoreError(RuntimeError):
    """The MLflow store cannot be used as it is; the message names the file and what to do."""


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _revision(conn: sqlite3.Connection, tables: set[str]) -> str | None:
    if "alembic_version" not in tables:
        return None
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return None if row is None else str(row[0])


def leftover_tables(db: Path) -> list[str]:
    """``_alembic_tmp_*`` tables in the SQLite file ``db`` (none when the file does not exist)."""
    if not db.is_file():
        return []
    conn = sqlite3.connect(db)
    try:
        return sorted(t for t in _tables(conn) if t.startswith(TMP_PREFIX))
    finally:
        conn.close()


def repair_sqlite_store(uri: str) -> list[str]:
    """Drop the leftovers of an interrupted migration and finish the migration; returns the dropped
    tables (empty: nothing to repair). The database is copied to ``<file>.before-repair-<time>`` first."""
    db = sqlite_file(uri)
    if db is None or not leftover_tables(db):
        return []
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    conn = sqlite3.connect(db)
    try:
        tables = _tables(conn)
        leftovers = sorted(t for t in tables if t.startswith(TMP_PREFIX))
        missing = [t for t in leftovers if t.removeprefix(TMP_PREFIX) not in tables]
        revision = _revision(conn, tables)
        if missing:
            names = ", ".join(t.removeprefix(TMP_PREFIX) for t in missing)
            raise TrackingStoreError(
                f"{db}: MLflow's schema migration (at revision {revision}, current {head}) stopped after dropping "
                f"table(s) {names}, whose rows are only in {', '.join(missing)}; medloop does not guess. Restore a "
                f"backup of {db.name}, or (if it holds no runs you need) move it aside and run the round again "
                "for a new store.")
        backup = db.with_name(f"{db.name}.before-repair-{time.strftime('%Y%m%d-%H%M%S')}")
        with sqlite3.connect(backup) as copy:
            conn.backup(copy)
        with conn:
            for table in leftovers:
                conn.execute(f'DROP TABLE "{table}"')
    finally:
        conn.close()
    log.warning("%s: dropped %s left by an interrupted MLflow migration (revision %s; backup %s)",
                db, ", ".join(leftovers), revision, backup.name)
    if revision is not None and revision != head:
        _finish_migration(uri)
    return leftovers


def _finish_migration(uri: str) -> None:
    """Run MLflow's schema migration from the recorded revision to the newest (what ``mlflow db upgrade``
    runs; MLflow itself only migrates a store that lacks tables and refuses one that is out of date)."""
    import sqlalchemy
    from mlflow.store.db.utils import _upgrade_db

    engine = sqlalchemy.create_engine(uri)
    try:
        _upgrade_db(engine)
    finally:
        engine.dispose()
