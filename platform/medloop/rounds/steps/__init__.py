"""One function per round step: ``fn(ctx: StepContext) -> detail dict``."""

from __future__ import annotations

from .push import push_step
from .report import report_step
from .score import score_step
from .select import select_step
from .sync import sync_step
from .train import train_step

STEP_FUNCTIONS = {
    "sync": sync_step,
    "train": train_step,
    "score": score_step,
    "select": select_step,
    "push": push_step,
    "report": report_step,
}

__all__ = ["STEP_FUNCTIONS", "sync_step", "train_step", "score_step", "select_step", "push_step", "report_step"]
