"""sync: pull finished Label Studio annotations into the ledger as human labels.

``medloop.labeling.sync`` is idempotent (an annotation already imported is skipped), so running
this step twice imports nothing twice. The step records the label watermark the trigger of the
next round counts from.
"""

from __future__ import annotations

from typing import Any

from ..triggers import label_watermark
from ._util import jsonable, store_of


def sync_step(ctx: Any) -> dict[str, Any]:
    detail: dict[str, Any] = {}
    if ctx.campaign.labeling.enabled:
        from medloop.labeling import sync

        detail["labelstudio"] = jsonable(sync(ctx.campaign, ctx.ledger, store_of(ctx)))
    else:
        detail["labelstudio"] = "disabled"
    with ctx.ledger.reading() as s:
        detail["label_watermark"] = label_watermark(s)
    return detail
