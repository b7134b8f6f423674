"""Read-only questions about a ledger: pool sizes, rounds, quarantined annotations."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .schema import SPLITS, Label, Quarantine, Round, RoundStep, Sample

LABEL_COLUMNS = ("human", "pseudo", "truth", "unlabeled")


def pool_sizes(session: Session) -> dict[str, dict[str, int]]:
    """Per split: ``samples`` and the number of samples with an active ``human`` / ``pseudo`` /
    ``truth`` label, and ``unlabeled`` (no active human or pseudo label). Every split is present."""
    out = {split: {"samples": 0, **{k: 0 for k in LABEL_COLUMNS}} for split in SPLITS}
    for split, n in session.execute(select(Sample.split, func.count()).group_by(Sample.split)):
        out.setdefault(split, {"samples": 0, **{k: 0 for k in LABEL_COLUMNS}})["samples"] = n
    rows = session.execute(
        select(Sample.split, Label.kind, func.count(func.distinct(Label.sample_id)))
        .join(Label, Label.sample_id == Sample.id)
        .where(Label.active.is_(True))
        .group_by(Sample.split, Label.kind)
    )
    for split, kind, n in rows:
        out[split][kind] = n
    labeled = session.execute(
        select(Sample.split, func.count(func.distinct(Label.sample_id)))
        .join(Label, Label.sample_id == Sample.id)
        .where(Label.active.is_(True), Label.kind.in_(("human", "pseudo")))
        .group_by(Sample.split)
    )
    counts = dict(labeled.all())
    for split, row in out.items():
        row["unlabeled"] = row["samples"] - counts.get(split, 0)
    return out


def holds_volumes(session: Session) -> bool:
    """True when the campaign's samples are volumes (ingest never mixes them with 2D images)."""
    return session.scalar(select(Sample.id).where(Sample.depth.is_not(None)).limit(1)) is not None


def training_composition(session: Session, *, semi: bool) -> dict[str, int]:
    """What a round trains on, counted from the ledger: ``human`` (samples with an active human label
    outside val/test), ``pseudo`` (active pseudo-labels, never on a sample with a human label), ``val``
    (human labels on the validation split), ``human_labels`` (every human label the campaign used:
    ``human + val``; the test split is never counted) and ``unlabeled`` (pool samples with neither,
    used by semi-supervised training; 0 when ``semi`` is False)."""
    sizes = pool_sizes(session)
    train_splits = [s for s in sizes if s not in ("val", "test")]
    human = sum(sizes[s]["human"] for s in train_splits)
    pseudo = sum(sizes[s]["pseudo"] for s in train_splits)
    val = sizes.get("val", {}).get("human", 0)
    unlabeled = sizes.get("pool", {}).get("unlabeled", 0) if semi else 0
    return {"human": human, "pseudo": pseudo, "unlabeled": unlabeled, "val": val, "human_labels": human + val}


def class_counts(session: Session, kind: str = "truth") -> dict[str, int]:
    """Active labels of ``kind`` per class name (None -> "(none)")."""
    rows = session.execute(
        select(Label.class_name, func.count())
        .where(Label.kind == kind, Label.active.is_(True))
        .group_by(Label.class_name)
    )
    return {name or "(none)": n for name, n in rows}


def rounds_table(session: Session) -> list[dict[str, Any]]:
    """One dict per round: id, status, started/finished, and each step's state."""
    steps: dict[int, dict[str, str]] = {}
    for st in session.scalars(select(RoundStep)):
        steps.setdefault(st.round_id, {})[st.step] = st.state
    return [
        {
            "id": r.id, "status": r.status, "started_at": r.started_at, "finished_at": r.finished_at,
            "steps": steps.get(r.id, {}), "metrics": r.metrics or {},
        }
        for r in session.scalars(select(Round).order_by(Round.id))
    ]


def quarantine_summary(session: Session) -> tuple[int, dict[str, int]]:
    """Number of quarantined annotations and how many per reason (open rows: resolved ones are a record)."""
    reasons = Counter(session.scalars(select(Quarantine.reason).where(Quarantine.resolved_at.is_(None))))
    return sum(reasons.values()), dict(reasons)
