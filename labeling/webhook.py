"""An optional webhook receiver: Label Studio POSTs annotation events, the receiver runs :func:`sync`.

Polling (calling ``sync``) stays the default and is always correct; the webhook only makes it
happen sooner. The receiver binds to 127.0.0.1. Label Studio refuses to call loopback addresses
unless the server runs with ``SSRF_PROTECTION_ENABLED=false`` (``medloop labelstudio start`` sets
it); a team server reaching a receiver on another host does not need that setting.

Events are coalesced: a burst of annotations triggers one sync in a background thread, and a
sync that is already running is followed by exactly one more.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from medloop.config import Campaign

from .client import LSClient, connect

log = logging.getLogger(__name__)

EVENTS = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED"]


class SyncTrigger:
    """Runs ``fn`` in a background thread; triggers during a run coalesce into one more run."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self._lock = threading.Lock()
        self._pending = False
        self._running = False
        self.runs = 0
        self.errors: list[str] = []
        self.idle = threading.Event()
        self.idle.set()

    def __call__(self) -> None:
        with self._lock:
            self._pending = True
            if self._running:
                return
            self._running = True
            self.idle.clear()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    self._running = False
                    self.idle.set()
                    return
                self._pending = False
            try:
                self.fn()
            except Exception as err:  # keep serving; the next event or poll retries
                self.errors.append(f"{type(err).__name__}: {err}")
                log.warning("webhook sync failed: %s", err)
            self.runs += 1


def make_server(trigger: Callable[[], None], port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1:<port> that calls ``trigger`` for every annotation event."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                action = json.loads(body or b"{}").get("action", "")
            except ValueError:
                self.send_response(400)
                self.end_headers()
                return
            if not action or action.startswith("ANNOTATION"):
                trigger()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        def do_GET(self) -> None:  # noqa: N802  (health check)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug(fmt, *args)

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def register_webhook(client: LSClient, project_id: int, url: str) -> int:
    """Create (once) a project webhook pointing at ``url``."""
    out = client.get("/api/webhooks", params={"project": project_id})
    for row in out or []:
        if row.get("url") == url and row.get("project") == project_id:
            return int(row["id"])
    row = client.post("/api/webhooks", json={
        "project": project_id, "url": url, "send_payload": False, "send_for_all_actions": False,
        "is_active": True, "actions": EVENTS,
    })
    return int(row["id"])


def serve_forever(campaign: Campaign, *, port: int = 8765, register: bool = True) -> None:
    from medloop.data.imagestore import ImageStore
    from medloop.ledger import Ledger

    from .project import ensure_project
    from .pull import locked_sync

    ledger = Ledger.open(campaign.ledger)
    store = ImageStore(campaign.store)
    client = connect(campaign)
    pid = ensure_project(campaign, ledger, client, store_root=store.root)
    def run_sync() -> None:
        # under the campaign lock: never at the same time as a round or `medloop labelstudio sync`
        report = locked_sync(campaign, ledger, store, client=client, project_id=pid)
        print(json.dumps(report.as_dict()), flush=True)

    trigger = SyncTrigger(run_sync)
    httpd = make_server(trigger, port)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    if register:
        register_webhook(client, pid, url)
    print(f"webhook receiver on {url} (project {pid}); Ctrl-C stops", flush=True)
    trigger()  # catch up once at start
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
