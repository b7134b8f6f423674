"""train: fit the joint model on human + pseudo labels, warm-started from the last round."""

from __future__ import annotations

from typing import Any

from medloop.ledger.queries import training_composition

from .. import state
from ._util import collaborator, jsonable


def _real_train_round() -> Any:
    from medloop.trainers.train import train_round

    return train_round


def train_step(ctx: Any) -> dict[str, Any]:
    train_round = collaborator(ctx, "train_round", _real_train_round)
    with ctx.ledger.reading() as s:
        prev = state.previous_done_round(s, ctx.round_id)
        warm = prev.checkpoint_path if prev is not None else None
        trained_on = training_composition(s, semi=ctx.campaign.training.semi != "none")
    result = train_round(ctx.campaign, ctx.ledger, round_id=ctx.round_id, warm_start=warm)
    detail = {
        "checkpoint_path": str(result.checkpoint_path),
        "model_version": result.model_version,
        "best_metrics": jsonable(result.best_metrics),
        "history": jsonable(result.history),
        "global_step": int(getattr(result, "global_step", 0) or 0),
        "warm_start": warm,
        "trained_on": trained_on,
    }
    with ctx.ledger.transaction() as s:
        rnd = ctx.round(s)
        rnd.checkpoint_path, rnd.model_version = str(result.checkpoint_path), result.model_version
        ctx.complete(s, detail)
    return detail
