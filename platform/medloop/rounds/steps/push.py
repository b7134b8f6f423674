"""push: the queue -> Label Studio tasks (labeling enabled), or the oracle / leave queued (disabled).

With Label Studio, ``medloop.labeling.push_queue`` pushes tasks still in state ``intent`` and marks
each one ``pushed`` as it goes, so a push that failed half-way pushes exactly the rest next time.
When Label Studio is unreachable the step fails with the reason; everything computed before stays
committed and the round resumes here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from medloop.ledger.schema import AnnotationTask

from .. import oracle
from ..context import StepContext
from ._util import jsonable, store_of


class LabelStudioDown(RuntimeError):
    """Label Studio could not be reached; the push is retried by the next ``medloop round``."""


def _task_counts(ctx: StepContext) -> dict[str, int]:
    with ctx.ledger.reading() as s:
        rows = s.execute(select(AnnotationTask.state, func.count()).group_by(AnnotationTask.state)).all()
    return {str(k): int(v) for k, v in rows}


def push_step(ctx: StepContext) -> dict[str, Any]:
    campaign = ctx.campaign
    if campaign.labeling.enabled:
        from medloop.labeling.errors import LabelStudioUnavailable
        from medloop.labeling.push import push_queue

        try:
            pushed = push_queue(campaign, ctx.ledger, store_of(ctx))
        except LabelStudioUnavailable as err:
            raise LabelStudioDown(
                f"Label Studio unreachable at {campaign.labeling.url}: {err}; "
                "the queue stays in the ledger and the next `medloop round` pushes what was not pushed"
            ) from err
        detail: dict[str, Any] = {"mode": "labelstudio", "push": jsonable(pushed)}
        if campaign.labeling.oracle:
            detail["oracle"] = oracle.answer_via_labelstudio(campaign, ctx.ledger, store_of(ctx))
        detail["tasks"] = _task_counts(ctx)
        return detail
    if campaign.labeling.oracle:
        with ctx.ledger.transaction() as s:
            answers = oracle.answer_directly(s, campaign)
            s.flush()
            ctx.complete(s, {"mode": "oracle", **answers})
        return {"mode": "oracle", **answers}
    return {"mode": "queued", "tasks": _task_counts(ctx)}
