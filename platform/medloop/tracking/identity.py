"""A campaign's id: made once in the ledger, stamped on everything it writes to MLflow.

The ledger keeps the id in its ``meta`` table (key ``campaign_id``, a uuid4, made by the first round
that runs on the ledger); the campaign's MLflow experiment, registered model and model versions carry
it as the tag ``medloop.campaign_id``. A ledger that was lost and started again gets a new id, so a
new round 1 stops before it overwrites the old campaign's round-1 run, model version or checkpoint
(:class:`CampaignMismatch`) instead of silently reusing them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from medloop.config import Campaign
from medloop.ledger.store import Ledger

CAMPAIGN_TAG = "medloop.campaign_id"
META_KEY = "campaign_id"
_URL_PASSWORD = re.compile(r"(://[^:/@]+):[^@/]+@")


class CampaignMismatch(RuntimeError):
    """The MLflow store holds another campaign's experiment or model under this campaign's names."""


def ledger_campaign_id(ledger: Ledger) -> str:
    """The ledger's campaign id, made (and stored) the first time it is asked for."""
    value = ledger.get_meta(META_KEY)
    if value is None:
        value = uuid.uuid4().hex
        ledger.set_meta(META_KEY, value)
    return value


def mismatch_message(campaign: Campaign, what: str, theirs: str | None, ours: str,
                     unknown_rounds: Iterable[int] = ()) -> str:
    """The sentence a user sees: both ids (or the rounds the ledger does not know) and what to do."""
    ledger = _URL_PASSWORD.sub(r"\1:***@", campaign.ledger)
    store = _URL_PASSWORD.sub(r"\1:***@", campaign.tracking_uri)
    rounds = sorted(unknown_rounds)
    if theirs is not None:
        owner = f"belongs to campaign id {theirs}, but the ledger {ledger} has campaign id {ours}"
    else:
        listed = ", ".join(str(r) for r in rounds)
        owner = (f"holds round(s) {listed} that the ledger {ledger} (campaign id {ours}) does not know "
                 "(it was made before campaign ids)")
    return (f"campaign {campaign.name!r}: {what} in the MLflow store {store} {owner}: the ledger was lost or "
            "replaced, or another campaign used these names. Nothing was changed. To continue that campaign, "
            "restore its ledger; to start a new one, give the campaign a new `name` in the campaign file "
            "(a new experiment and registered model), or point `tracking.uri` at a new MLflow store.")
