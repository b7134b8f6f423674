"""An output folder written whole or not at all: files go to a temporary sibling folder that is renamed
to the target at the end. An existing non-empty target is refused unless ``force`` (then replaced)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class OutputExists(FileExistsError):
    """The output folder exists and holds files; ``--force`` replaces it."""


def check_target(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty folder without ``force``, before any work is done."""
    if out.exists() and not out.is_dir():
        raise OutputExists(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExists(f"{out}: folder exists and is not empty (use --force to replace it)")


@contextmanager
def staged_output(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out``, on an error it is removed."""
    out = Path(out)
    check_target(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        check_target(out, force)  # nothing appeared meanwhile
        if out.is_dir():
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
