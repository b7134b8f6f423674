"""An older ledger is upgraded in place when opened; a newer one is refused."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import select

from medloop.ledger import SCHEMA_VERSION, Ledger, LedgerError, Quarantine
from medloop.ledger.queries import quarantine_summary
from medloop.ledger.schema import utcnow


def _as_version_1(db: str) -> None:
    """Turn a fresh ledger into what schema version 1 wrote: no quarantine resolution columns."""
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE quarantine DROP COLUMN resolved_at")
    con.execute("ALTER TABLE quarantine DROP COLUMN resolution")
    con.execute("INSERT INTO quarantine (sample_id, ls_task_id, ls_annotation_id, reason, created_at) "
                "VALUES (1, 7, 70, 'no class chosen', '2025-01-01 00:00:00')")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.close()


def test_version_1_ledger_gets_the_quarantine_resolution_columns(tmp_path):
    db = str(tmp_path / "ledger.db")
    Ledger.open(f"sqlite:///{db}").close()
    _as_version_1(db)
    ledger = Ledger.open(f"sqlite:///{db}")
    assert SCHEMA_VERSION == 3 and ledger.get_meta("schema_version") == "3"
    with ledger.reading() as s:
        row = s.scalars(select(Quarantine)).one()
        assert (row.ls_annotation_id, row.reason) == (70, "no class chosen")
        assert (row.resolved_at, row.resolution) == (None, None)
        assert quarantine_summary(s)[0] == 1
    with ledger.transaction() as s:
        row = s.scalars(select(Quarantine)).one()
        row.resolved_at, row.resolution = utcnow(), "annotation 70 is valid now"
    with ledger.reading() as s:
        assert quarantine_summary(s)[0] == 0  # a resolved row is a record, not a quarantined annotation
    ledger.close()
    Ledger.open(f"sqlite:///{db}").close()  # opening again changes nothing


def test_newer_ledger_is_refused_untouched(tmp_path):
    db = str(tmp_path / "ledger.db")
    Ledger.open(f"sqlite:///{db}").close()
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match="schema version 99 is newer"):
        Ledger.open(f"sqlite:///{db}")
