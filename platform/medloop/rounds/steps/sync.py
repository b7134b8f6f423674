"""sync: pull finished Label Studio annotations into the ledger as human labels.

``medloop.labeling.sync`` is idempotent (an annotation already imported is skipped), so running
this step twice imports nothing twice. The step records the label watermark the trigger of the
next round counts from. When Label Studio is unreachable the round goes on with the labels the
ledger has (the reason is recorded); the push step is the one that must reach it.
"""

from __future__ import annotations

from typing import Any

from ..context import StepContext
from ..triggers import label_watermark
from ._util import jsonable, store_of


def sync_step(ctx: StepContext) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    if ctx.campaign.labeling.enabled:
        from medloop.labeling.errors import LabelStudioUnavailable
        from medloop.labeling.pull import sync

        try:
            detail["labelstudio"] = jsonable(sync(ctx.campaign, ctx.ledger, store_of(ctx)))
        except LabelStudioUnavailable as err:  # train on what is in the ledger; pull next round
            detail["labelstudio"] = f"unreachable, nothing pulled this round: {err}"
    else:
        detail["labelstudio"] = "disabled"
    with ctx.ledger.reading() as s:
        detail["label_watermark"] = label_watermark(s)
    return detail
