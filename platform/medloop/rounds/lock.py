"""One round at a time per campaign: a file lock on ``campaign.lock_file`` (also taken by
``medloop labelstudio sync`` and the webhook receiver, so a sync never overlaps a round or another sync)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock, Timeout

from medloop.config import Campaign


class RoundLocked(RuntimeError):
    """Another process is running a round of this campaign."""


@contextmanager
def round_lock(campaign: Campaign, *, wait_s: float = 0.0, purpose: str = "round") -> Iterator[None]:
    """Hold the campaign's round lock; raise :class:`RoundLocked` when another process holds it
    after ``wait_s`` seconds. ``purpose`` (``round``, ``Label Studio sync``) is shown to a waiter.

    The lock is an OS-level lock (``flock``), so a process killed with SIGKILL releases it.
    """
    path = campaign.lock_file
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=wait_s)
    try:
        lock.acquire()
    except Timeout:
        holder, what = _read_holder(path)
        running = "another round is already running" if what == "round" else f"a {what} is running"
        raise RoundLocked(
            f"campaign {campaign.name!r}: {running}{holder} "
            f"(lock file {path}); wait for it to finish, one round (or sync) runs at a time per campaign"
        ) from None
    try:
        _write_holder(path, purpose)
        yield
    finally:
        lock.release()


def _holder_file(path: os.PathLike[str]) -> str:
    return f"{os.fspath(path)}.pid"


def _write_holder(path: os.PathLike[str], purpose: str) -> None:
    try:
        with open(_holder_file(path), "w") as f:
            f.write(f"{os.getpid()}\n{purpose}")
    except OSError:  # informational only
        pass


def _read_holder(path: os.PathLike[str]) -> tuple[str, str]:
    """(`` (process N)`` or "", what it runs: ``round`` unless the holder said otherwise)."""
    try:
        with open(_holder_file(path)) as f:
            pid, _, what = f.read().strip().partition("\n")
    except OSError:
        return "", "round"
    return (f" (process {pid})" if pid else ""), (what.strip() or "round")
