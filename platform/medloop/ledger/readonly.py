"""Read a campaign's ledger without changing it (for commands that only read: predict, evaluate).

:meth:`medloop.ledger.store.Ledger.open` creates the tables and the schema row when they are missing;
here a SQLite ledger is opened with ``mode=ro`` (a missing file is an error, never created) and other
databases with a read-only transaction option.
"""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, inspect

from .store import LedgerMissing, sqlite_file

__all__ = ["LedgerMissing", "open_readonly", "sqlite_file"]


def open_readonly(url: str) -> Engine:
    """An engine that can only read the ledger at ``url``; :class:`LedgerMissing` names what is missing."""
    path = sqlite_file(url)
    if path is not None:
        if not path.is_file():
            raise LedgerMissing(f"no campaign ledger at {path} (ingest a dataset and run a round first)")
        engine = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true", connect_args={"timeout": 30})
    else:
        engine = create_engine(url, pool_pre_ping=True, execution_options={"postgresql_readonly": True})
    try:
        tables = set(inspect(engine).get_table_names())
    except Exception as err:  # noqa: BLE001 - reported to the user
        engine.dispose()
        raise LedgerMissing(f"the ledger at {url} cannot be read: {err}") from None
    if not {"samples", "rounds"} <= tables:
        engine.dispose()
        raise LedgerMissing(f"{url} is not a medloop ledger (no samples / rounds tables)")
    return engine
