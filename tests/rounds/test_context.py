"""The round's typed step context: collaborators are fields, a misspelt one is an error naming it."""

from __future__ import annotations

import pytest
from support import TINY

from medloop.ledger import Ledger, Round
from medloop.rounds import run_round
from medloop.rounds.context import Collaborators, StepContext


def test_a_mapping_becomes_typed_collaborators_and_unknown_names_are_refused() -> None:
    typed = Collaborators.of({**TINY, "tracking": False})
    assert typed.train_round is TINY["train_round"] and typed.score_samples is TINY["score_samples"]
    assert typed.tracking is False and typed.log_model is True
    assert Collaborators.of(None) == Collaborators() and Collaborators.of(typed) is typed
    with pytest.raises(TypeError, match=r"unknown round collaborator\(s\) trackign; known: .*tracking"):
        Collaborators.of({"trackign": False})


def test_a_misspelt_collaborator_stops_the_round_before_anything_changes(campaign) -> None:
    with pytest.raises(TypeError, match="score_sample"):
        run_round(campaign, extras={**TINY, "tracking": False, "score_sample": TINY["score_samples"]})
    ledger = Ledger.open(campaign.ledger)
    try:
        with ledger.reading() as s:
            assert s.query(Round).count() == 0
    finally:
        ledger.close()


def test_steps_see_the_typed_context(campaign) -> None:
    seen: list[StepContext] = []

    def spy(ctx: StepContext) -> dict:
        seen.append(ctx)
        return {}

    out = run_round(campaign, steps={"sync": spy}, extras=Collaborators(**TINY, tracking=False))
    assert out.status == "done"
    (ctx,) = seen
    assert isinstance(ctx.collaborators, Collaborators) and ctx.collaborators.tracking is False
    assert ctx.collaborators.trainer() is TINY["train_round"] and ctx.step == "sync" and ctx.round_id == 1
