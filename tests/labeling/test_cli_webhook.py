"""CLI and webhook receiver against the real server."""

from __future__ import annotations

import json
import threading
import time

import pytest
from typer.testing import CliRunner

from medloop.labeling.pull import sync
from medloop.labeling.push import push_queue
from medloop.labeling.webhook import SyncTrigger, make_server, register_webhook

pytestmark = pytest.mark.labelstudio


def test_cli_status_and_install(labelstudio_server, tmp_path):
    from medloop.cli import app

    root = labelstudio_server.server_campaign.folder
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "ls-tests"\nroot = "{root}"\n')
    runner = CliRunner()
    out = runner.invoke(app, ["labelstudio", "status", "-c", str(cfg), "--json"])
    assert out.exit_code == 0, out.output
    info = json.loads(out.output)
    assert info["healthy"] and info["url"] == labelstudio_server.url
    assert labelstudio_server.token not in out.output
    out = runner.invoke(app, ["labelstudio", "install"])
    assert out.exit_code == 0 and "installed" in out.output
    other = tmp_path / "o.toml"
    other.write_text(f'name = "nothing"\nroot = "{tmp_path / "none"}"\n')
    assert runner.invoke(app, ["labelstudio", "status", "-c", str(other)]).exit_code == 1


def test_webhook_triggers_sync(make_queue):
    q = make_queue(2, audit_every=0)
    push = push_queue(q.campaign, q.ledger, q.store)
    reports = []
    trigger = SyncTrigger(lambda: reports.append(sync(q.campaign, q.ledger, q.store, project_id=push.project_id)))
    httpd = make_server(trigger, 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = q.client()
        register_webhook(client, push.project_id, f"http://127.0.0.1:{httpd.server_address[1]}/")
        client.post(f"/api/tasks/{push.task_ids[q.uids[0]]}/annotations",
                    json={"result": [{"from_name": "class", "to_name": "image", "type": "choices",
                                      "value": {"choices": ["benign"]}}]})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(r.labels_added for r in reports):
            time.sleep(0.5)
        trigger.idle.wait(60)
        assert sum(r.labels_added for r in reports) == 1, (reports, trigger.errors)
    finally:
        httpd.shutdown()
        httpd.server_close()
