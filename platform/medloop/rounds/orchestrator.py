"""One round: sync -> train -> score -> select -> push -> report, as a persisted state machine.

Every step runs as ``fn(ctx) -> detail``. A step either commits its results together with its
``done`` state in one transaction (``ctx.complete(session, detail)``, used by select and the oracle
push) or is idempotent by construction (sync skips imported annotations, score skips scored
samples, push skips pushed tasks); the orchestrator then records ``done`` itself. A round killed at
any point resumes at the first step that is not done; steps already done are never run again.

Tests crash the process on purpose with ``MEDLOOP_TEST_CRASH_AT=<step>:<before|after-commit>``:
the orchestrator sends itself SIGKILL at that point (see :func:`_crash_point`).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from medloop.config import Campaign
from medloop.ledger.schema import STEPS, Round, utcnow
from medloop.ledger.store import Ledger

from . import state
from .context import Collaborators, StepContext
from .lock import round_lock
from .stopping import check_stop
from .triggers import check_trigger

log = logging.getLogger("medloop.rounds")

CRASH_ENV = "MEDLOOP_TEST_CRASH_AT"


class RoundStepFailed(RuntimeError):
    """A step raised; the round is marked failed and resumes at that step next time."""

    def __init__(self, round_id: int, step: str, reason: str, unrecorded: str | None = None) -> None:
        if unrecorded is None:
            tail = f"Everything before it is committed; `medloop round` resumes at {step!r}."
        else:  # the ledger could not take the failure either (disk full, read-only, database gone)
            tail = (f"Recording the failure in the ledger failed too ({unrecorded}), so the ledger still shows "
                    f"{step!r} running (`medloop status` shows it interrupted); everything before it is "
                    f"committed. Fix the cause, then `medloop round` resumes at {step!r}.")
        super().__init__(f"round {round_id}: step {step!r} failed: {reason}. {tail}")
        self.round_id, self.step, self.reason, self.unrecorded = round_id, step, reason, unrecorded


StepFn = Callable[[StepContext], dict[str, Any] | None]


@dataclass
class RoundOutcome:
    """What ``run_round`` did: ``status`` is done / stopped / not-triggered."""

    status: str
    message: str
    round_id: int | None = None
    resumed: bool = False
    steps: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def _crash_point(step: str, when: str) -> None:
    """Test hook: SIGKILL this process at ``<step>:<when>`` when MEDLOOP_TEST_CRASH_AT says so."""
    if os.environ.get(CRASH_ENV) == f"{step}:{when}":
        os.kill(os.getpid(), signal.SIGKILL)


def default_steps() -> dict[str, StepFn]:
    from .steps import STEP_FUNCTIONS

    return dict(STEP_FUNCTIONS)


def _start_or_resume(campaign: Campaign, ledger: Ledger, force: bool) -> tuple[int | None, bool, RoundOutcome | None]:
    with ledger.transaction() as s:
        rnd = state.unfinished_round(s)
        if rnd is not None:
            rnd.status = "running"
            return rnd.id, True, None
        stop = check_stop(campaign, s)
        if stop and not force:
            last = state.last_round(s)
            if last is not None:
                state.update_notes(last, stop=stop)
            return None, False, RoundOutcome("stopped", f"stopping rule: {stop} (use --force to run anyway)")
        trig = check_trigger(campaign, s, force=force)
        if not trig.run:
            return None, False, RoundOutcome("not-triggered", trig.reason)
        rnd = state.create_round(s, {"trigger": trig.as_dict()})
        return rnd.id, False, None


def run_round(
    campaign: Campaign,
    *,
    force: bool = False,
    steps: Mapping[str, StepFn] | None = None,
    extras: Collaborators | Mapping[str, object] | None = None,
    on_step: Callable[[int, str], Any] | None = None,
    cold_start: bool = False,
) -> RoundOutcome:
    """Run (or resume) one round of ``campaign`` under the campaign lock; ``on_step(round_id, step)`` is
    called as each step starts (progress display). ``cold_start``: the train step starts from the
    model's initialisation instead of the previous round's checkpoint (``medloop round --cold-start``).
    ``extras``: the collaborators to use instead of the real ones (:class:`Collaborators`, or a mapping
    of its field names; an unknown name is a ``TypeError``)."""
    collaborators = Collaborators.of(extras)
    with round_lock(campaign):
        ledger = Ledger.open(campaign.ledger)
        try:
            chosen = dict(steps or {})
            if set(chosen) != set(STEPS):
                chosen = {**default_steps(), **chosen}
            return _run_locked(campaign, ledger, force, chosen, collaborators, on_step, cold_start=cold_start)
        finally:
            ledger.close()


def _run_locked(
    campaign: Campaign, ledger: Ledger, force: bool, steps: Mapping[str, StepFn], collaborators: Collaborators,
    on_step: Callable[[int, str], Any] | None = None, *, cold_start: bool = False,
) -> RoundOutcome:
    if collaborators.tracking:  # before anything changes: the MLflow store must be this ledger's
        from medloop.tracking import check_campaign

        check_campaign(campaign, ledger)
    round_id, resumed, early = _start_or_resume(campaign, ledger, force)
    if early is not None:
        return early
    assert round_id is not None
    for name in STEPS:
        with ledger.reading() as s:
            current = state.get_step(s, round_id, name).state
        if current in ("done", "skipped"):
            continue
        fn = steps.get(name)
        if fn is None:
            raise KeyError(f"no function for step {name!r}")
        with ledger.transaction() as s:
            state.set_step(s, round_id, name, "running")
        _crash_point(name, "before")
        ctx = StepContext(campaign, ledger, round_id, name, force=force, collaborators=collaborators,
                          cold_start=cold_start)
        log.info("round %d: %s", round_id, name)
        if on_step is not None:
            on_step(round_id, name)
        try:
            detail = fn(ctx) or {}
        except Exception as err:  # noqa: BLE001 - recorded, then re-raised with the step named
            reason = f"{type(err).__name__}: {err}"
            try:
                with ledger.transaction() as s:
                    state.set_step(s, round_id, name, "failed", {"error": reason})
                    s.get(Round, round_id).status = "failed"  # type: ignore[union-attr]
            except Exception as record_err:  # noqa: BLE001 - e.g. disk full: reported with the step's own error
                cause = getattr(record_err, "orig", None) or record_err  # the database driver's own error
                first = (str(cause).strip().splitlines() or [""])[0]
                unrecorded = f"{type(cause).__name__}: {first}"
                raise RoundStepFailed(round_id, name, reason, unrecorded) from err
            raise RoundStepFailed(round_id, name, reason) from err
        if not ctx.completed:
            with ledger.transaction() as s:
                state.set_step(s, round_id, name, "done", detail)
        _crash_point(name, "after-commit")
    with ledger.transaction() as s:
        rnd = s.get(Round, round_id)
        assert rnd is not None
        rnd.status, rnd.finished_at = "done", utcnow()
        metrics = dict(rnd.metrics or {})
        states = state.step_states(s, round_id)
    return RoundOutcome("done", f"round {round_id} done", round_id, resumed, states, metrics)
