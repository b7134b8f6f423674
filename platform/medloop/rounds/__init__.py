"""Self-training rounds: the persisted orchestrator, lock, triggers, stopping rules, oracle, scheduler."""

from .lock import RoundLocked, round_lock
from .orchestrator import RoundOutcome, RoundStepFailed, StepContext, run_round

__all__ = ["RoundLocked", "round_lock", "RoundOutcome", "RoundStepFailed", "StepContext", "run_round"]
