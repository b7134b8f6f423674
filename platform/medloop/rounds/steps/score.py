"""score: the round's model scores the pool and the validation split (``Prediction`` rows).

``score_samples`` skips samples already scored by the same model version, so a resumed score step
only scores what is missing.
"""

from __future__ import annotations

from typing import Any

from ..context import StepContext
from ._util import jsonable


def score_step(ctx: StepContext) -> dict[str, Any]:
    score_samples = ctx.collaborators.scorer()
    with ctx.ledger.reading() as s:
        checkpoint, version = ctx.trained_model(s)
    report = score_samples(
        ctx.campaign, ctx.ledger, round_id=ctx.round_id, checkpoint_path=checkpoint,
        model_version=version, splits=("pool", "val"),
    )
    return {"model_version": version, "report": jsonable(report)}
