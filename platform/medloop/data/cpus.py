"""How many CPUs this process may use (its affinity on Linux, else the machine's count)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on: ``sched_getaffinity`` where it exists (a container or ``taskset``
    may allow fewer than the machine has), else ``os.cpu_count()``; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
