"""``medloop watch --every 6h``: an always-on runner that tries a round at a fixed interval.

Each tick calls :func:`run_round`; the trigger decides whether a round really starts, a round that
is already running elsewhere (the lock) or a failed step is reported and retried at the next tick.
The loop ends when a stopping rule holds or after ``max_rounds`` finished rounds.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from medloop.config import Campaign
from medloop.tracking.identity import CampaignMismatch

from .lock import RoundLocked
from .orchestrator import RoundOutcome, RoundStepFailed, run_round

log = logging.getLogger("medloop.rounds")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_every(text: str) -> float:
    """``"6h"``, ``"30m"``, ``"90s"``, ``"1d"``, ``"1h30m"`` -> seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip().lower())
    if not parts or "".join(f"{n}{u}" for n, u in parts) != re.sub(r"\s+", "", text.strip().lower()):
        raise ValueError(f"--every {text!r}: expected a duration like 6h, 30m, 90s, 1d or 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"--every {text!r}: the interval must be positive")
    return seconds


def watch(
    campaign: Campaign,
    every_s: float,
    *,
    max_rounds: int | None = None,
    max_ticks: int | None = None,
    run: Callable[..., RoundOutcome] = run_round,
    sleep: Callable[[float], Any] = time.sleep,
    echo: Callable[[str], Any] = print,
) -> list[RoundOutcome]:
    """Try a round every ``every_s`` seconds; returns the outcomes of the ticks."""
    outcomes: list[RoundOutcome] = []
    done = ticks = 0
    while True:
        ticks += 1
        try:
            out = run(campaign)
        except RoundLocked as err:
            out = RoundOutcome("locked", str(err))
        except RoundStepFailed as err:
            out = RoundOutcome("failed", str(err), err.round_id)
        except CampaignMismatch as err:  # waiting cannot fix it: stop watching
            out = RoundOutcome("stopped", str(err))
        outcomes.append(out)
        echo(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {out.status}: {out.message}")
        done += out.status == "done"
        if out.status == "stopped":
            break
        if max_rounds is not None and done >= max_rounds:
            break
        if max_ticks is not None and ticks >= max_ticks:
            break
        sleep(every_s)
    return outcomes
