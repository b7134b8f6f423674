"""What ``medloop demo`` shows: one progress bar per round step and one table per round; the log lines
of Ray, MLflow and training go to a log file in the campaign folder (``--verbose`` shows them instead).

Ray writes from Python loggers, from its C++ core (straight to file descriptor 2) and from its worker
processes (forwarded to the driver); MLflow prints from loggers and plain ``print`` calls to stderr.
Setting each source's level would miss some of them, so :func:`quiet_output` redirects the process's
file descriptors 1 and 2 to the log file for the duration of the rounds, and the progress bars and
tables are drawn on a copy of the terminal's descriptor taken before.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from medloop.config import Campaign
    from medloop.demo import DemoReport


def log_path(folder: Path) -> Path:
    """``<campaign>/logs/demo-<YYYYmmdd-HHMMSS>.log``."""
    return folder / "logs" / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.log"


def _fileno(stream: IO[str]) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None


@contextmanager
def quiet_output(log_file: Path) -> Iterator[Console]:
    """Everything written to file descriptors 1 and 2 inside goes to ``log_file`` (appended); yields a
    console on the terminal (or whatever stdout was) for progress and tables. Restored on exit, also
    when an exception leaves the block (its traceback then reaches the terminal)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    # stdout backed by descriptor 1 (a terminal, a pipe): draw on a copy of it; anything else (a test
    # runner's buffer) stays as it is
    terminal: IO[str] = os.fdopen(os.dup(1), "w", buffering=1) if _fileno(sys.stdout) == 1 else sys.stdout
    saved = [os.dup(1), os.dup(2)]
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield Console(file=terminal, highlight=False)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)
        if terminal is not sys.stdout:
            terminal.close()


class StepProgress:
    """One progress bar per round step (started as the step starts, completed when the next one starts
    or the round ends); one display per round, ended by :meth:`end_round` before the round's table."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def step(self, round_id: int, name: str) -> None:
        """``on_step`` for :func:`medloop.rounds.orchestrator.run_round`."""
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(finished_text="[green]✓[/green]"),
                TextColumn(f"round {round_id}  {{task.description:<7}}"),
                BarColumn(bar_width=30),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
        self._complete()
        self._task = self._progress.add_task(name, total=None)

    def _complete(self) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=1, completed=1)
            self._task = None

    def end_round(self) -> None:
        """Complete the last bar and close this round's display."""
        self._complete()
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


#: (header, key) of a round's table: fits 80 columns
SUMMARY_COLUMNS = (("human", "human"), ("pseudo", "pseudo"), ("queued", "queued"), ("audit", "audit"),
                   ("pool open", "pool_open"), ("accuracy", "accuracy"), ("Dice", "dice"), ("ECE", "ece"))


def round_summary(row: dict[str, Any]) -> Table:
    """One round of the demo report as a table: labels, queue, test metrics and the two gates."""
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    table = Table(title=f"round {row['round']}: {row['status']}, class gate {row['gate']}, mask gate "
                        f"{row['mask_gate']}", title_justify="left", box=box.SIMPLE_HEAD)
    for header, _ in SUMMARY_COLUMNS:
        table.add_column(header, justify="right")
    table.add_row(*(cell(row.get(key)) for _, key in SUMMARY_COLUMNS))
    return table


def run_demo_shown(
    campaign: Campaign, *, dataset: str | None, path: Path | None, rounds: int, verbose: bool
) -> tuple[DemoReport, str | None]:
    """``medloop demo``: the ingest (with its progress bar), then the rounds with one bar per step and
    one table per round. Without ``verbose`` the rounds' log lines go to :func:`log_path` (named in the
    report). Returns the report and, when a round step failed, the message to show."""
    from medloop.demo import prepare_demo, run_demo_rounds
    from medloop.rounds.orchestrator import RoundStepFailed
    from medloop.trainers.ray_local import shutdown_local_ray

    report, campaign = prepare_demo(campaign, dataset, path, progress=True)
    if rounds == 0:
        return report, None
    failure: str | None = None
    if verbose:
        console = Console(highlight=False)
        try:
            run_demo_rounds(campaign, report, rounds, echo=lambda _: console.print(round_summary(report.rounds[-1])),
                            on_step=lambda r, step: console.print(f"[bold]round {r}: {step}[/bold]"))
        except RoundStepFailed as err:
            failure = str(err)
        finally:
            shutdown_local_ray()
        return report, failure
    log_file = log_path(campaign.folder)
    with quiet_output(log_file) as console:
        bars = StepProgress(console)

        def show(_: str) -> None:
            bars.end_round()
            console.print(round_summary(report.rounds[-1]))

        try:
            run_demo_rounds(campaign, report, rounds, echo=show, on_step=bars.step)
        except RoundStepFailed as err:
            failure = f"{err}\nRay, MLflow and training log lines: {log_file}"
        except BaseException:
            bars.end_round()
            console.print(f"Ray, MLflow and training log lines: {log_file}")
            raise
        finally:
            bars.end_round()
            shutdown_local_ray()  # inside: its last log lines go to the file too
    report.notes.append(f"Ray, MLflow and training log lines: {log_file} (--verbose shows them)")
    return report, failure
