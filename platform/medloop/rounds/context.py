"""What a round step sees: :class:`StepContext`, with its collaborators as typed fields.

A step is ``fn(ctx: StepContext) -> detail``. The collaborators that do the heavy work (the Ray Train
loop, the pool scoring) and the tracking switches are fields of :class:`Collaborators`; tests, the
demo and the benchmarks replace them by name (``Collaborators(train_round=...)``, or a mapping whose
keys are checked: a misspelt key is an error naming it, never a silently ignored setting).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

from medloop.config import Campaign
from medloop.ledger.schema import Round
from medloop.ledger.store import Ledger

from . import state

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


class TrainRound(Protocol):
    """:func:`medloop.trainers.train.train_round`: fit the round's model, return its checkpoint."""

    def __call__(self, campaign: Campaign, ledger: Ledger, *, round_id: int,
                 warm_start: str | None = None) -> Any: ...


class ScoreSamples(Protocol):
    """:func:`medloop.trainers.score.score_samples`: score the pool and validation samples."""

    def __call__(self, campaign: Campaign, ledger: Ledger, *, round_id: int, checkpoint_path: str,
                 model_version: str, splits: Iterable[str] = ("pool", "val")) -> Any: ...


def _real_train_round() -> TrainRound:
    from medloop.trainers.train import train_round

    return train_round


def _real_score_samples() -> ScoreSamples:
    from medloop.trainers.score import score_samples

    return score_samples


@dataclass(frozen=True)
class Collaborators:
    """The parts of a round that can be replaced: ``None`` means the real one (imported on first use).

    ``tracking``: log the round to MLflow and check the campaign id against the store (off in tests
    that need no MLflow); ``log_model``: register the round's model when tracking."""

    train_round: TrainRound | None = None
    score_samples: ScoreSamples | None = None
    tracking: bool = True
    log_model: bool = True

    @classmethod
    def of(cls, given: Collaborators | Mapping[str, object] | None) -> Collaborators:
        """``given`` as :class:`Collaborators`; a mapping's keys must be field names (else ``TypeError``
        naming the unknown keys and the known ones)."""
        if given is None:
            return cls()
        if isinstance(given, Collaborators):
            return given
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise TypeError(f"unknown round collaborator(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(cls(), **given)  # type: ignore[arg-type]

    def trainer(self) -> TrainRound:
        return self.train_round or _real_train_round()

    def scorer(self) -> ScoreSamples:
        return self.score_samples or _real_score_samples()


@dataclass
class StepContext:
    """What a step function sees: the campaign, its open ledger, the round and step, and the collaborators."""

    campaign: Campaign
    ledger: Ledger
    round_id: int
    step: str
    force: bool = False
    collaborators: Collaborators = field(default_factory=Collaborators)
    cold_start: bool = False  # train from the model's initialisation, not the previous round's checkpoint
    completed: bool = False

    def complete(self, session: Session, detail: dict[str, Any]) -> None:
        """Mark this step done inside the caller's transaction (results and state commit together)."""
        state.set_step(session, self.round_id, self.step, "done", detail)
        self.completed = True

    def round(self, session: Session) -> Round:
        rnd = session.get(Round, self.round_id)
        if rnd is None:
            raise LookupError(f"round {self.round_id} is not in the ledger {self.campaign.ledger}")
        return rnd

    def trained_model(self, session: Session) -> tuple[str, str]:
        """The round's (checkpoint path, model version) recorded by the train step; a ``LookupError``
        saying so when the train step has not recorded one."""
        rnd = self.round(session)
        if not rnd.checkpoint_path or not rnd.model_version:
            raise LookupError(f"round {self.round_id}: the train step recorded no checkpoint; "
                              f"step {self.step!r} needs it (run the train step first)")
        return rnd.checkpoint_path, rnd.model_version

    def detail(self, step: str) -> dict[str, Any]:
        with self.ledger.reading() as s:
            return state.step_detail(s, self.round_id, step)
