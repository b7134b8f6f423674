"""The persisted round state machine: rows in ``rounds`` and ``round_steps``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medloop.ledger.schema import STEPS, Round, RoundStep, utcnow


def unfinished_round(session: Session) -> Round | None:
    """The latest round that is running or failed (to be resumed), if any."""
    return session.scalars(
        select(Round).where(Round.status.in_(("running", "failed"))).order_by(Round.id.desc())
    ).first()


def last_round(session: Session) -> Round | None:
    return session.scalars(select(Round).order_by(Round.id.desc())).first()


def previous_done_round(session: Session, round_id: int) -> Round | None:
    return session.scalars(
        select(Round).where(Round.id < round_id, Round.status == "done").order_by(Round.id.desc())
    ).first()


def create_round(session: Session, notes: dict[str, Any]) -> Round:
    """A new round (number = last + 1) with every step pending."""
    prev = last_round(session)
    rnd = Round(id=(prev.id + 1) if prev else 1, status="running", notes=notes, started_at=utcnow())
    session.add(rnd)
    session.flush()
    for step in STEPS:
        session.add(RoundStep(round_id=rnd.id, step=step, state="pending"))
    session.flush()
    return rnd


def get_step(session: Session, round_id: int, step: str) -> RoundStep:
    row = session.get(RoundStep, (round_id, step))
    if row is None:  # a round created by an older medloop: add the missing row
        row = RoundStep(round_id=round_id, step=step, state="pending")
        session.add(row)
        session.flush()
    return row


def set_step(session: Session, round_id: int, step: str, state: str, detail: dict[str, Any] | None = None) -> None:
    row = get_step(session, round_id, step)
    row.state = state
    if state == "running":
        row.started_at = utcnow()
        row.finished_at = None
    else:
        row.finished_at = utcnow()
    if detail is not None:
        row.detail = detail


def step_states(session: Session, round_id: int) -> dict[str, str]:
    rows = session.scalars(select(RoundStep).where(RoundStep.round_id == round_id)).all()
    return {r.step: r.state for r in rows}


def step_detail(session: Session, round_id: int, step: str) -> dict[str, Any]:
    row = session.get(RoundStep, (round_id, step))
    return dict(row.detail or {}) if row is not None else {}


def update_notes(rnd: Round, **items: Any) -> None:
    """Merge ``items`` into ``Round.notes`` (reassigned so SQLAlchemy sees the JSON change)."""
    rnd.notes = {**(rnd.notes or {}), **items}
