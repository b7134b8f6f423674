"""A headless Chromium for the browser tests (dashboard, Label Studio annotator view): start it on
127.0.0.1, drive one page through the DevTools protocol, stop it with its process group."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from processes import free_port, stop_process_group

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SKIP_REASON = "chromium is not installed (apt-get install -y chromium; scripts/test.sh does this when run as root)"


class Tab:
    """A minimal DevTools-protocol client for one page."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=30, legacy=True)
        self.next_id = 0
        self.failure_png: Path | None = None  # where :meth:`wait` leaves a screenshot when it gives up

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr: str) -> object:
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return res.get("result", {}).get("value")

    def wait(self, expr: str, what: str, timeout: float = 240.0) -> object:
        """Poll ``expr`` until it is truthy (a wait, not a timing assert); its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expr)
            if value:
                return value
            time.sleep(1.0)
        if self.failure_png is not None:
            self.screenshot(self.failure_png)
        raise AssertionError(f"timed out waiting for {what}; page {self.js('location.href')}")

    def screenshot(self, path: Path) -> bytes:
        """The viewport as PNG, written to ``path``."""
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def close(self) -> None:
        self.ws.close()


@contextmanager
def chromium_tab(profile: Path, width: int = 1400, height: int = 1000) -> Iterator[Tab]:
    """A headless Chromium (profile folder ``profile``) with one blank page, as a :class:`Tab`."""
    assert CHROMIUM is not None, SKIP_REASON
    port = free_port()
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
         "--remote-debugging-address=127.0.0.1", f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        pages: list = []
        while time.monotonic() < deadline and not pages:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:  # noqa: S310
                    pages = [p for p in json.load(r) if p.get("type") == "page"]
            except OSError:
                time.sleep(0.5)
        assert pages, "chromium's DevTools endpoint did not come up"
        tab = Tab(pages[0]["webSocketDebuggerUrl"])
        tab.call("Page.enable")
        tab.call("Runtime.enable")
        tab.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        try:
            yield tab
        finally:
            tab.close()
    finally:
        stop_process_group(proc)
