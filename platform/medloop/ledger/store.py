"""The ledger: open a database, run transactions, and the label rules in one place.

Rules enforced here and nowhere else:

* a pseudo-label never replaces (nor coexists as the active label with) a human label;
* a new human label for a sample supersedes the earlier one, which stays as history;
* every write happens in one transaction (:meth:`Ledger.transaction`);
* SQLite runs in WAL mode with foreign keys on.

An older ledger is upgraded in place when opened: tables and nullable columns added by later
schema versions are created (``ALTER TABLE ... ADD COLUMN``), then the version is recorded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import (
    URL,
    CursorResult,
    Engine,
    Table,
    create_engine,
    event,
    insert,
    inspect,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from .schema import SCHEMA_VERSION, Base, Label, Meta, utcnow


class LedgerError(RuntimeError):
    """A ledger rule was broken or the database cannot be used."""


class HumanLabelExists(LedgerError):
    """A pseudo-label was offered for a sample that has a human label."""


class LedgerMissing(LedgerError):
    """There is no ledger at the URL (asked for by a command that must not create one)."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def engine_url(url: str) -> URL:
    """The SQLAlchemy URL of a ledger; a PostgreSQL URL without a driver (``postgresql://``, or
    ``postgres://`` as servers print it) uses psycopg 3, the driver medloop depends on."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///").split("?", 1)[0].removeprefix("file:"))


def display_url(url: str) -> str:
    """``url`` with its password hidden (for messages)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown without its credentials part
        return url.rsplit("@", 1)[-1]


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_dumps(value: Any) -> str:
    """The ledger's JSON columns on every backend: NaN and infinities, which are not JSON (PostgreSQL
    refuses the whole row: ``invalid input syntax for type json``), are written as null; numeric
    readers get NaN back (``np.asarray(..., float)`` turns null into NaN)."""
    return json.dumps(_finite(value))


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, json_serializer=json_dumps)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(engine_url(url), pool_pre_ping=True, json_serializer=json_dumps)


def _stored_version(engine: Engine) -> int | None:
    """The schema version recorded in the database (None for a new one)."""
    if not inspect(engine).has_table(Meta.__tablename__):
        return None
    with engine.connect() as conn:
        value = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
    return None if value is None else int(value)


def _add_missing_columns(engine: Engine) -> None:
    """Upgrade in place: add the (nullable) columns a later schema version introduced."""
    insp = inspect(engine)
    quote = engine.dialect.identifier_preparer.quote
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            have = {c["name"] for c in insp.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                if not column.nullable:
                    raise LedgerError(f"ledger table {table.name}: cannot add the required column {column.name}")
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(column.name)} {kind}"))


class Ledger:
    """Access to one campaign's ledger database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    # ---- opening --------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, *, create: bool = True) -> Ledger:
        engine = make_engine(url)
        ledger = cls(engine)
        found = _stored_version(engine)
        if found is not None and found > SCHEMA_VERSION:
            raise LedgerError(
                f"{url}: ledger schema version {found} is newer than this medloop "
                f"(supports {SCHEMA_VERSION}); upgrade medloop"
            )
        if create:
            Base.metadata.create_all(engine)
            if found is not None and found < SCHEMA_VERSION:
                _add_missing_columns(engine)
        with ledger.transaction() as s:
            row = s.get(Meta, "schema_version")
            if row is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            elif int(row.value) < SCHEMA_VERSION and create:
                row.value = str(SCHEMA_VERSION)
        return ledger

    @staticmethod
    def check_exists(url: str) -> None:
        """Raise :class:`LedgerMissing` unless a medloop ledger is at ``url``; creates and writes
        nothing (no folder, file, table or row)."""
        path = sqlite_file(url)
        if path is not None and not path.is_file():
            raise LedgerMissing(f"no ledger at {path}")
        probe = make_engine(url)
        try:
            tables = set(inspect(probe).get_table_names())
        finally:
            probe.dispose()
        if not {Meta.__tablename__, "samples", "rounds"} <= tables:
            raise LedgerMissing(f"no medloop ledger at {display_url(url)} (its tables are missing)")

    @classmethod
    def open_existing(cls, url: str) -> Ledger:
        """Open a ledger that exists, as :meth:`open` does (an older schema is upgraded), but never
        create one: for commands that must not create a campaign (status, round, Label Studio push and
        sync, tune). Raises :class:`LedgerMissing` when there is none."""
        cls.check_exists(url)
        return cls.open(url)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: committed as a whole or not at all."""
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only (nothing is committed)."""
        with self._sessions() as session:
            yield session

    # ---- key/value facts ---------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self.reading() as s:
            row = s.get(Meta, key)
            return None if row is None else row.value

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as s:
            s.merge(Meta(key=key, value=value))


# ---- the label rules ----------------------------------------------------------------------


def active_label(session: Session, sample_id: int, kind: str) -> Label | None:
    """The sample's active label of ``kind`` (human / pseudo / truth), or None."""
    return session.scalars(
        select(Label).where(Label.sample_id == sample_id, Label.kind == kind, Label.active.is_(True))
    ).first()


def _supersede(session: Session, sample_id: int, kinds: tuple[str, ...], now: datetime) -> None:
    """Make the sample's active labels of ``kinds`` history (inactive, superseded at ``now``)."""
    session.execute(
        update(Label)
        .where(Label.sample_id == sample_id, Label.kind.in_(kinds), Label.active.is_(True))
        .values(active=False, superseded_at=now)
    )


def add_human_label(
    session: Session,
    sample_id: int,
    *,
    class_name: str | None,
    mask_path: str | None,
    author: str,
    ls_task_id: int | None = None,
    ls_annotation_id: int | None = None,
) -> Label:
    """Record a human label. The earlier human label becomes history; any pseudo-label is retired."""
    now = utcnow()
    _supersede(session, sample_id, ("human", "pseudo"), now)
    label = Label(
        sample_id=sample_id,
        kind="human",
        class_name=class_name,
        mask_path=mask_path,
        author=author,
        ls_task_id=ls_task_id,
        ls_annotation_id=ls_annotation_id,
        active=True,
        created_at=now,
    )
    session.add(label)
    session.flush()
    return label


#: ids bound in one ``IN (...)`` (SQLite allows 32,766 parameters; PostgreSQL 65,535)
ID_CHUNK = 10_000


def _chunks(values: Sequence[Any], size: int = ID_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def human_labelled(session: Session, sample_ids: Iterable[int]) -> set[int]:
    """The samples among ``sample_ids`` that have an active human label (bound in chunks)."""
    ids = sorted({int(i) for i in sample_ids})
    found: set[int] = set()
    for chunk in _chunks(ids):
        found.update(session.scalars(select(Label.sample_id).where(
            Label.sample_id.in_(chunk), Label.kind == "human", Label.active.is_(True))).all())
    return found


@dataclass(frozen=True)
class PseudoLabelRow:
    """One pseudo-label to record: a class, a mask (+ its ignore map), or both."""

    sample_id: int
    class_name: str | None
    mask_path: str | None = None
    ignore_path: str | None = None


def add_pseudo_labels(
    session: Session,
    rows: Sequence[PseudoLabelRow],
    *,
    round_id: int,
    selector: str,
    thresholds: dict[str, Any],
) -> tuple[list[PseudoLabelRow], list[int]]:
    """Record pseudo-labels in bulk: (the rows written, the sample ids skipped).

    A sample with an active human label is skipped (a human label always wins); the written samples'
    earlier active pseudo-labels become history. Set-based (chunked ``IN``, one multi-row insert), so a
    round that accepts 10^5 pseudo-labels does not issue 10^5 queries."""
    human = human_labelled(session, (r.sample_id for r in rows))
    written = [r for r in rows if r.sample_id not in human]
    skipped = [r.sample_id for r in rows if r.sample_id in human]
    now = utcnow()
    for chunk in _chunks([r.sample_id for r in written]):
        session.execute(
            update(Label)
            .where(Label.sample_id.in_(chunk), Label.kind == "pseudo", Label.active.is_(True))
            .values(active=False, superseded_at=now)
        )
    author = f"round-{round_id}/{selector}"
    db = session.connection()  # table-level executemany in the caller's transaction
    for part in _chunks(written, 50_000):
        db.execute(insert(cast(Table, Label.__table__)), [
            {"sample_id": r.sample_id, "kind": "pseudo", "class_name": r.class_name, "mask_path": r.mask_path,
             "ignore_path": r.ignore_path, "author": author, "round_id": round_id, "selector": selector,
             "thresholds": thresholds, "active": True, "created_at": now} for r in part])
    return written, skipped


def add_pseudo_label(
    session: Session,
    sample_id: int,
    *,
    class_name: str | None,
    mask_path: str | None,
    ignore_path: str | None,
    round_id: int,
    selector: str,
    thresholds: dict[str, Any],
) -> Label:
    """Record one pseudo-label (:func:`add_pseudo_labels`); raises :class:`HumanLabelExists` when a human
    label is present."""
    _, skipped = add_pseudo_labels(session, [PseudoLabelRow(sample_id, class_name, mask_path, ignore_path)],
                                   round_id=round_id, selector=selector, thresholds=thresholds)
    if skipped:
        raise HumanLabelExists(f"sample {sample_id} has a human label; a pseudo-label never replaces it")
    label = active_label(session, sample_id, "pseudo")
    assert label is not None
    return label


def retire_pseudo_labels(session: Session, round_id: int) -> int:
    """Pseudo-labels are decided again every round: retire those made before ``round_id``."""
    result = session.execute(
        update(Label)
        .where(Label.kind == "pseudo", Label.active.is_(True), Label.round_id < round_id)
        .values(active=False, superseded_at=utcnow())
    )
    return int(cast("CursorResult[Any]", result).rowcount or 0)  # an UPDATE's result is a CursorResult


def add_truth_label(
    session: Session, sample_id: int, *, class_name: str | None, mask_path: str | None, source: str
) -> Label:
    """Hidden ground truth kept for benchmark oracles (never used for training directly)."""
    existing = active_label(session, sample_id, "truth")
    if existing is not None:
        return existing
    label = Label(sample_id=sample_id, kind="truth", class_name=class_name, mask_path=mask_path, author=source)
    session.add(label)
    session.flush()
    return label
