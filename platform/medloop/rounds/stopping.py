"""Stopping rules: annotation budget spent, pool empty, no validation gain over k rounds."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medloop.config import Campaign
from medloop.ledger.schema import AnnotationTask, Label, Round, Sample


def validation_score(metrics: dict[str, Any] | None) -> float | None:
    """One number to compare rounds: the mean of validation accuracy and Dice (those present)."""
    if not metrics:
        return None
    vals = [float(metrics[k]) for k in ("accuracy", "dice") if metrics.get(k) is not None]
    return sum(vals) / len(vals) if vals else None


def open_pool(session: Session) -> int:
    """Pool samples without an active human label and never queued for annotation."""
    human = select(Label.sample_id).where(Label.kind == "human", Label.active.is_(True))
    queued = select(AnnotationTask.sample_id)
    q = select(func.count()).select_from(Sample).where(
        Sample.split == "pool", Sample.id.not_in(human), Sample.id.not_in(queued)
    )
    return int(session.scalar(q) or 0)


def tasks_created(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(AnnotationTask)) or 0)


def no_gain(scores: list[float], patience: int) -> bool:
    """True when none of the last ``patience`` scores beat the best score before them."""
    if len(scores) <= patience:
        return False
    best_before = max(scores[:-patience])
    return max(scores[-patience:]) <= best_before


def check_stop(campaign: Campaign, session: Session) -> str | None:
    """The stopping rule that holds now, as a sentence, or None to go on."""
    total = campaign.selection.total_budget
    if total and tasks_created(session) >= total:
        return f"annotation budget spent: {tasks_created(session)} cases queued of selection.total_budget={total}"
    rounds = session.scalars(select(Round).where(Round.status == "done").order_by(Round.id)).all()
    if rounds and open_pool(session) == 0:
        return "pool empty: every pool sample is labeled or queued"
    scores = [s for s in (validation_score(r.metrics) for r in rounds) if s is not None]
    k = campaign.selection.stop_patience
    if no_gain(scores, k):
        return f"no validation gain over the last {k} rounds (selection.stop_patience)"
    return None
