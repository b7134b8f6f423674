"""The HTTP client: retries with backoff (a real local HTTP server that answers 503 and then 200)
and the end of the task listing read from the answer (a real Label Studio server)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medloop.labeling.client import LSClient
from medloop.labeling.errors import LabelStudioError, LabelStudioUnavailable
from medloop.labeling.push import push_queue
from medloop.labeling.server import free_port


class Flaky:
    """What a real HTTP server on 127.0.0.1 answers: ``fail`` times ``status``, then 200 with JSON."""

    def __init__(self, fail: int, status: int = 503) -> None:
        self.fail, self.status = fail, status
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def answer(self, method: str, path: str) -> int:
        with self._lock:
            self.seen.append((method, path))
            return self.status if len(self.seen) <= self.fail else 200


@contextmanager
def serve(flaky: Flaky, port: int = 0, delay: float = 0.0) -> Iterator[Callable[[], int]]:
    """Run the server (after ``delay`` seconds) in a thread; yields a function giving its port."""
    holder: dict[str, ThreadingHTTPServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            code = flaky.answer(self.command, self.path)
            body = json.dumps({"ok": code == 200, "path": self.path}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _reply  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    def run() -> None:
        time.sleep(delay)
        httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        holder["httpd"] = httpd
        httpd.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        if delay == 0:
            while "httpd" not in holder:
                time.sleep(0.01)
        yield lambda: holder["httpd"].server_address[1] if "httpd" in holder else port
    finally:
        thread.join(timeout=delay + 5)
        if "httpd" in holder:
            holder["httpd"].shutdown()
            holder["httpd"].server_close()


def test_get_is_retried_after_503_until_it_succeeds():
    flaky = Flaky(fail=2)
    with serve(flaky) as port:
        client = LSClient(f"http://127.0.0.1:{port()}", "token")
        t0 = time.monotonic()
        out = client.get("/api/projects/1")
        waited = time.monotonic() - t0
    assert out == {"ok": True, "path": "/api/projects/1"}
    assert flaky.seen == [("GET", "/api/projects/1")] * 3
    assert waited >= 0.9  # backoff 0.5 s x 2 before the third try (urllib3: no wait before the second)


def test_post_is_not_retried_on_503():
    """A POST could have been applied: never sent twice."""
    flaky = Flaky(fail=2)
    with serve(flaky) as port:
        client = LSClient(f"http://127.0.0.1:{port()}", "token")
        with pytest.raises(LabelStudioUnavailable, match=r"HTTP 503 \(POST is not retried\)") as err:
            client.post("/api/projects/1/import", json=[{"data": {}}])
    assert err.value.status == 503
    assert flaky.seen == [("POST", "/api/projects/1/import")]


def test_retries_are_bounded_and_end_in_a_clear_error():
    flaky = Flaky(fail=100, status=502)
    with serve(flaky) as port:
        client = LSClient(f"http://127.0.0.1:{port()}", "token", retries=2, backoff=0.05)
        with pytest.raises(LabelStudioUnavailable, match=r"unavailable \(HTTP 502 after 2 retries\)"):
            client.get("/api/tasks")
    assert len(flaky.seen) == 3


def test_connection_refused_is_retried_until_the_server_listens():
    """The server comes up 0.4 s after the first try (a restart): the client backs off and gets in."""
    port = free_port()
    flaky = Flaky(fail=0)
    with serve(flaky, port=port, delay=0.4):
        client = LSClient(f"http://127.0.0.1:{port}", "token")
        assert client.get("/health") == {"ok": True, "path": "/health"}
    assert flaky.seen == [("GET", "/health")]


def test_unreachable_after_the_retries_names_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    client = LSClient(url, "token", retries=1, backoff=0.01)
    with pytest.raises(LabelStudioUnavailable, match=re.escape(f"{url} is unreachable after 1 retries")):
        client.get("/api/projects")


# ---- the end of the listing, on a real Label Studio ------------------------------------------------
@pytest.mark.labelstudio
def test_task_listing_pages_to_the_end_and_refuses_a_missing_project(make_queue):
    q = make_queue(7, audit_every=0)
    push = push_queue(q.campaign, q.ledger, q.store)
    client = q.client()
    pages: list[str] = []
    client.session.hooks["response"].append(lambda r, *a, **k: pages.append(r.url))
    for size in (3, 7, 100):  # 3 + 3 + 1; one full page; one short page
        pages.clear()
        ids = [t["id"] for t in client.iter_tasks(push.project_id, page_size=size)]
        assert sorted(ids) == sorted(push.task_ids.values()), size
        assert len(pages) == -(-7 // size), (size, pages)  # no request past the last page
    # a project that does not exist is an error, not an empty project
    missing = max(push.project_id, 1) + 100000
    with pytest.raises(LabelStudioError, match=f"project {missing} not found") as err:
        list(client.iter_tasks(missing))
    assert err.value.status == 404
    # tasks deleted while paging: the page past the new end answers 404 and the listing ends
    listing = client.iter_tasks(push.project_id, page_size=2)
    first = [next(listing)["id"], next(listing)["id"]]
    for tid in set(push.task_ids.values()) - set(first):
        client.delete(f"/api/tasks/{tid}")
    assert list(listing) == []
