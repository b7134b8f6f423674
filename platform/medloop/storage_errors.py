"""A campaign folder that cannot be written (read-only, full, not ours) is one clear line, not a traceback.

:func:`storage_message` recognises the errors a full or read-only disk causes, wherever they surface:
``OSError`` (``EROFS``, ``ENOSPC``, ``EDQUOT``, ``EACCES``, ``EPERM``), SQLite's ``readonly database`` /
``disk is full`` / ``unable to open database file`` / ``disk I/O error`` and PostgreSQL's read-only
transaction or full disk, also when wrapped (``__cause__`` / ``__context__``). The line names the
campaign folder and what is wrong with it (checked with ``statvfs``: mounted read-only, no space,
not writable by this user). ``medloop.cli.main`` prints it and exits 1; anything else still raises.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from medloop.config import Campaign

_current: Campaign | None = None

OS_PROBLEMS = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
DB_PROBLEMS = (  # (text in the database error, what it means)
    ("attempt to write a readonly database", "the ledger is read-only"),
    ("database or disk is full", "no space left for the ledger"),
    ("unable to open database file", "the ledger cannot be opened (its folder is read-only, missing or not ours)"),
    ("disk i/o error", "the ledger's disk failed a write (read-only, full or failing)"),
    ("read-only transaction", "the ledger database is read-only"),
    ("no space left on device", "no space left for the ledger database"),
    ("could not extend file", "no space left for the ledger database"),
)


def remember_campaign(campaign: Campaign) -> None:
    """The campaign a command works on (named in the message)."""
    global _current
    _current = campaign


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]


def problem(err: BaseException) -> tuple[str, str | None] | None:
    """(what is wrong, the file involved or None) when ``err`` comes from storage; None otherwise."""
    for e in _chain(err):
        if isinstance(e, OSError) and e.errno in OS_PROBLEMS:
            return OS_PROBLEMS[e.errno], (os.fsdecode(e.filename) if e.filename is not None else None)
    for e in _chain(err):
        text = str(e).lower()
        for needle, meaning in DB_PROBLEMS:
            if needle in text:
                return meaning, None
    return None


def folder_state(folder: Path) -> str | None:
    """Why ``folder`` (or its nearest existing parent) cannot take writes, if the system says so."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return f"{probe} is on a file system mounted read-only"
    if st.f_bavail * st.f_frsize < 1 << 20:
        return f"the disk of {probe} is full ({st.f_bavail * st.f_frsize} bytes free)"
    if not os.access(probe, os.W_OK):
        return f"{probe} is not writable by this user"
    return None


def storage_message(err: BaseException, campaign: Campaign | None = None) -> str | None:
    """One line for a storage failure, or None when ``err`` is something else."""
    found = problem(err)
    if found is None:
        return None
    meaning, path = found
    campaign = campaign or _current
    folder = campaign.folder.resolve() if campaign is not None else None
    where = folder_state(folder) if folder is not None else None
    if where is None and path is not None:
        where = folder_state(Path(path).parent)
    subject = f"campaign {campaign.name!r} ({folder})" if campaign is not None else "medloop"
    detail = f": {path}" if path else ""
    because = f"; {where}" if where else ""
    return (f"medloop: {subject} cannot be written: {meaning}{detail}{because}. Make it writable or free "
            "space, then run the command again (an interrupted round resumes where it stopped).")
