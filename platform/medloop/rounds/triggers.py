"""When a new round should start: enough new human labels since the last round, or ``--force``.

"New" is counted against a watermark: the sync step of every round records the highest human
label id it saw (``RoundStep(sync).detail["label_watermark"]``); a human label is new when its id
is above the last round's watermark. A label is therefore counted for exactly one round.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medloop.config import Campaign
from medloop.ledger.schema import Label, Round, RoundStep


@dataclass
class TriggerDecision:
    run: bool
    reason: str
    new_labels: int
    watermark: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_watermark(session: Session) -> int:
    """The highest human label id in the ledger (0 when there is none)."""
    return int(session.scalar(select(func.max(Label.id)).where(Label.kind == "human")) or 0)


def last_watermark(session: Session) -> int | None:
    """The watermark recorded by the most recent round's sync step (None before the first round)."""
    row = session.scalars(
        select(RoundStep)
        .join(Round, Round.id == RoundStep.round_id)
        .where(RoundStep.step == "sync", RoundStep.state == "done")
        .order_by(RoundStep.round_id.desc())
    ).first()
    if row is None:
        return None
    return int((row.detail or {}).get("label_watermark", 0))


def new_human_labels(session: Session) -> tuple[int, int]:
    """(new human labels since the last round, the last round's watermark)."""
    mark = last_watermark(session)
    base = 0 if mark is None else mark
    n = session.scalar(select(func.count()).select_from(Label).where(Label.kind == "human", Label.id > base))
    return int(n or 0), base


def check_trigger(campaign: Campaign, session: Session, *, force: bool = False) -> TriggerDecision:
    """Decide whether a new round starts now."""
    n, mark = new_human_labels(session)
    need = campaign.selection.min_new_labels
    if force:
        return TriggerDecision(True, "forced (--force)", n, mark)
    if last_watermark(session) is None:
        return TriggerDecision(True, "first round", n, mark)
    if n >= need:
        return TriggerDecision(True, f"{n} new human labels since the last round (need {need})", n, mark)
    return TriggerDecision(
        False,
        f"only {n} new human labels since the last round; need {need} (selection.min_new_labels) or --force",
        n,
        mark,
    )
