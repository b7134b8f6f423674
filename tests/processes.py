"""Processes the tests start for real (a dashboard, Chromium, ``mlflow models serve``): wait for their
HTTP endpoint, stop their whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request

from medloop.labeling.server import free_port

__all__ = ["free_port", "stop_process_group", "wait_http"]


def wait_http(url: str, deadline: float) -> None:
    """Wait until ``url`` answers 200 (a wait before ``deadline``, monotonic clock; not a timing assert)."""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - 127.0.0.1 only
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer")


def stop_process_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the group ``proc`` leads (started with ``start_new_session=True``), SIGKILL after ``timeout``."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
