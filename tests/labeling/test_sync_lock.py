"""`medloop labelstudio sync` takes the campaign lock: while a round or another sync holds it, the
command waits (``--wait``) and then says who holds it (no Label Studio needed: it stops first)."""

from __future__ import annotations

import os

import tomli_w
from typer.testing import CliRunner

from medloop.cli import app
from medloop.config import Campaign
from medloop.ledger import Ledger
from medloop.rounds.lock import round_lock


def test_sync_waits_for_the_campaign_lock_and_names_the_holder(tmp_path):
    campaign = Campaign.model_validate({
        "name": "locked", "root": str(tmp_path / "c"),
        "labeling": {"enabled": True, "url": "http://127.0.0.1:9", "token_file": str(tmp_path / "token")},
    })
    Ledger.open(campaign.ledger).close()  # an existing campaign
    cfg = tmp_path / "c.toml"
    cfg.write_text(tomli_w.dumps(campaign.model_dump(exclude_none=True, mode="json")))
    runner = CliRunner()
    for purpose, said in (("Label Studio sync", "a Label Studio sync is running"),
                          ("round", "another round is already running")):
        with round_lock(campaign, purpose=purpose):
            out = runner.invoke(app, ["labelstudio", "sync", "-c", str(cfg), "--wait", "0.3"])
        assert out.exit_code == 1, out.output
        assert said in out.output and f"process {os.getpid()}" in out.output, out.output
