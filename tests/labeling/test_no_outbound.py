"""No outbound calls: the Label Studio server medloop starts has error reporting (Sentry), analytics
and the version check off, and makes no name lookup or connection outside 127.0.0.1.

The session's server runs with an audit hook (tests/conftest.py, ``_NET_AUDIT``) that logs every
``socket.getaddrinfo`` / ``socket.connect`` / ``socket.sendto`` of its Python processes; these tests
use the server as annotators and rounds do, then read that log and the server's own log.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
from pathlib import Path

import pytest
import requests

from medloop.labeling import server
from medloop.labeling.pull import sync
from medloop.labeling.push import push_queue

pytestmark = pytest.mark.labelstudio


def _settings_source() -> str:
    folder = server.venv_path() / "lib"
    files = sorted(folder.glob("python*/site-packages/label_studio/core/settings/*.py"))
    assert files, f"Label Studio's settings not found below {folder}"
    return "\n".join(f.read_text() for f in files)


def test_switches_are_label_studio_settings_and_the_server_runs_with_them(labelstudio_server) -> None:
    """Each LABEL_STUDIO_<NAME> that medloop sets is read by the installed Label Studio's settings as
    get_env('<NAME>') / get_bool_env('<NAME>'), and the running server's environment holds it."""
    source = _settings_source()
    for key in server.NO_OUTBOUND_ENV:
        if key.startswith("LABEL_STUDIO_"):
            name = key.removeprefix("LABEL_STUDIO_")
            assert re.search(rf"get_(bool_)?env\(\s*'{name}'", source), f"{name} is not a Label Studio 1.23 setting"
    info = server.status(labelstudio_server.server_campaign)
    if labelstudio_server.net_audit is None or info.pid is None:
        pytest.skip("a reused server (MEDLOOP_TEST_LS_ROOT): its environment is not this run's")
    env = dict(kv.split("=", 1) for kv in Path(f"/proc/{info.pid}/environ").read_text().split("\0") if "=" in kv)
    for key, value in server.NO_OUTBOUND_ENV.items():
        assert env.get(key) == value, key


def _allowed(host: object) -> bool:
    if host in (None, "", "localhost", socket.gethostname()):
        return True
    text = str(host)
    if text.startswith("/"):  # a unix socket
        return True
    try:
        return ipaddress.ip_address(text.split("%")[0]).is_loopback
    except ValueError:
        return False


def test_server_makes_no_connection_outside_loopback(labelstudio_server, make_queue) -> None:
    audit = labelstudio_server.net_audit
    if audit is None:
        pytest.skip("a reused server (MEDLOOP_TEST_LS_ROOT) runs without the audit hook")
    url = labelstudio_server.url
    # what rounds and annotators do: a project, a push with pre-annotations, an annotation, a sync ...
    q = make_queue(3, audit_every=0)
    push = push_queue(q.campaign, q.ledger, q.store)
    client = q.client()
    tid = push.task_ids[q.uids[0]]
    client.post(f"/api/tasks/{tid}/annotations",
                json={"result": [{"from_name": "class", "to_name": "image", "type": "choices",
                                  "value": {"choices": [q.campaign.data.classes[1]]}}]})
    assert sync(q.campaign, q.ledger, q.store, project_id=push.project_id).labels_added == 1
    # ... and pages in a browser: log in, the projects page, the labeling page, the "tips" the projects
    # page fetches through the server (from GitHub, no switch: it must end on the loopback proxy)
    web = requests.Session()
    web.get(f"{url}/user/login/", timeout=60)
    password = server.files(labelstudio_server.server_campaign).password.read_text().strip()
    web.post(f"{url}/user/login/", timeout=60, data={
        "email": server.ADMIN_USER, "password": password, "csrfmiddlewaretoken": web.cookies.get("csrftoken", "")},
        headers={"Referer": f"{url}/user/login/"})
    for page in ("/projects/", f"/projects/{push.project_id}/data", f"/projects/{push.project_id}/data?task={tid}",
                 "/heidi-tips/", "/api/version", "/api/projects/999999/"):
        r = web.get(url + page, timeout=60)
        assert r.status_code < 500 or page == "/heidi-tips/", (page, r.status_code)
    page = web.get(f"{url}/projects/", timeout=60).text
    assert "sentry-cdn" not in page and "ingest.sentry.io" not in page  # no browser error reporting either
    assert re.search(r"collect_analytics:\s*false", page) or "collect_analytics" not in page

    events = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    assert any(e["event"] == "audit.start" for e in events), "the audit hook did not load in the server"
    # the tips request was attempted, and went to the dead loopback proxy instead of GitHub
    assert any(e["event"] == "socket.connect" and e["host"] == "127.0.0.1" and e["port"] == 9 for e in events)
    outside = [e for e in events if e["event"] != "audit.start" and not _allowed(e.get("host"))]
    assert outside == [], f"Label Studio reached outside 127.0.0.1: {outside[:10]}"
    log = server.files(labelstudio_server.server_campaign).log.read_text(errors="replace").lower()
    for word in ("sentry", "tele.labelstud.io", "pypi.org", "can't get latest version"):
        assert word not in log, f"server.log mentions {word!r}"


def test_ml_backend_timeouts_are_label_studio_settings_and_the_server_runs_with_them(labelstudio_server) -> None:
    """Label Studio gives an ML backend 1 s for /health and 3 s for /setup (a loaded CI run saw the
    project's backend 'Disconnected'); medloop's server raises both, through the names Label Studio reads."""
    folder = server.venv_path() / "lib"
    (connector,) = folder.glob("python*/site-packages/label_studio/ml/api_connector.py")
    source = connector.read_text()
    for name in ("ML_TIMEOUT_HEALTH", "ML_TIMEOUT_SETUP"):
        assert re.search(rf"get_env\(\s*'{name}'", source), f"{name} is not read by Label Studio's ML connector"
    info = server.status(labelstudio_server.server_campaign)
    if labelstudio_server.net_audit is None or info.pid is None:
        pytest.skip("a reused server (MEDLOOP_TEST_LS_ROOT): its environment is not this run's")
    env = dict(kv.split("=", 1) for kv in Path(f"/proc/{info.pid}/environ").read_text().split("\0") if "=" in kv)
    assert float(env["ML_TIMEOUT_HEALTH"]) >= 10 and float(env["ML_TIMEOUT_SETUP"]) >= 10
