"""score: the round's model scores the pool and the validation split (``Prediction`` rows).

``score_samples`` skips samples already scored by the same model version, so a resumed score step
only scores what is missing.
"""

from __future__ import annotations

from typing import Any

from ._util import collaborator, jsonable


def _real_score_samples() -> Any:
    from medloop.trainers.score import score_samples

    return score_samples


def score_step(ctx: Any) -> dict[str, Any]:
    score_samples = collaborator(ctx, "score_samples", _real_score_samples)
    with ctx.ledger.reading() as s:
        rnd = ctx.round(s)
        checkpoint, version = rnd.checkpoint_path, rnd.model_version
    if not checkpoint or not version:
        raise RuntimeError("the train step recorded no checkpoint; run the train step first")
    report = score_samples(
        ctx.campaign, ctx.ledger, round_id=ctx.round_id, checkpoint_path=checkpoint,
        model_version=version, splits=("pool", "val"),
    )
    return {"model_version": version, "report": jsonable(report)}
