"""Read a campaign's ledger without changing it: the one read-only opener of the commands that only
read (predict, evaluate, export, the dashboard).

:meth:`medloop.ledger.store.Ledger.open` creates the tables and the schema row when they are missing;
here a SQLite ledger is opened with ``mode=ro`` (a missing file is an error, never created) and other
databases with a read-only transaction option.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Engine, create_engine, inspect

from .store import LedgerMissing, display_url, engine_url, sqlite_file

__all__ = ["LedgerMissing", "open_readonly", "sqlite_file"]


def open_readonly(url: str, tables: Iterable[str] = ("samples", "rounds")) -> Engine:
    """An engine that can only read the ledger at ``url`` (SQLite ``mode=ro``; PostgreSQL through psycopg 3
    in read-only transactions); :class:`LedgerMissing` when there is no ledger, it cannot be read, or it
    lacks one of ``tables``. Nothing is created."""
    path = sqlite_file(url)
    if path is not None:
        if not path.is_file():
            raise LedgerMissing(f"no campaign ledger at {path} (ingest a dataset and run a round first)")
        engine = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true", connect_args={"timeout": 30})
    else:
        engine = create_engine(engine_url(url), pool_pre_ping=True, execution_options={"postgresql_readonly": True})
    wanted = sorted(tables)
    try:
        present = set(inspect(engine).get_table_names())
    except Exception as err:  # noqa: BLE001 - reported to the user
        engine.dispose()
        raise LedgerMissing(f"the ledger at {display_url(url)} cannot be read: {err}") from None
    if not set(wanted) <= present:
        engine.dispose()
        raise LedgerMissing(f"{display_url(url)} is not a medloop ledger (no {' / '.join(wanted)} tables)")
    return engine
