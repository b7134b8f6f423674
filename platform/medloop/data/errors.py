"""Errors raised while reading or ingesting a dataset. Each names the file and the problem."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BadFile:
    """A file that cannot be ingested, and why."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


class DataError(ValueError):
    """A dataset (or one of its files) cannot be used; the message names the file and the problem."""


class IngestError(DataError):
    """Some files are bad and ``skip_bad`` was off: nothing was written."""

    def __init__(self, bad: list[BadFile], source: str) -> None:
        self.bad = list(bad)
        lines = [f"{source}: {len(self.bad)} bad file(s); nothing was written (use --skip-bad to ingest the rest)"]
        lines += [f"  {b}" for b in self.bad]
        super().__init__("\n".join(lines))


class FileError(DataError):
    """One file is bad: ``path`` and ``problem`` are kept apart for reports."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def as_bad(self) -> BadFile:
        return BadFile(self.path, self.problem)
