"""One round at a time per campaign: a file lock on ``campaign.lock_file``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock, Timeout

from medloop.config import Campaign


class RoundLocked(RuntimeError):
    """Another process is running a round of this campaign."""


@contextmanager
def round_lock(campaign: Campaign, *, wait_s: float = 0.0) -> Iterator[None]:
    """Hold the campaign's round lock; raise :class:`RoundLocked` when another process holds it.

    The lock is an OS-level lock (``flock``), so a process killed with SIGKILL releases it.
    """
    path = campaign.lock_file
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=wait_s)
    try:
        lock.acquire()
    except Timeout:
        holder = _read_holder(path)
        raise RoundLocked(
            f"campaign {campaign.name!r}: another round is already running{holder} "
            f"(lock file {path}); wait for it to finish, one round runs at a time per campaign"
        ) from None
    try:
        _write_holder(path)
        yield
    finally:
        lock.release()


def _holder_file(path: os.PathLike[str]) -> str:
    return f"{os.fspath(path)}.pid"


def _write_holder(path: os.PathLike[str]) -> None:
    try:
        with open(_holder_file(path), "w") as f:
            f.write(str(os.getpid()))
    except OSError:  # informational only
        pass


def _read_holder(path: os.PathLike[str]) -> str:
    try:
        with open(_holder_file(path)) as f:
            pid = f.read().strip()
    except OSError:
        return ""
    return f" (process {pid})" if pid else ""
