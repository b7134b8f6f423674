"""Errors raised when talking to Label Studio."""

from __future__ import annotations


class LabelStudioError(RuntimeError):
    """Label Studio answered with an error (the message names the URL and what went wrong).

    ``status`` is the HTTP status code of the answer, None when there was none (unreachable)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LabelStudioUnavailable(LabelStudioError):
    """Label Studio cannot be reached at the configured URL (nothing was changed in the ledger)."""


class LabelStudioInstallError(LabelStudioError):
    """Label Studio's server could not be installed or started."""


class TokenMissing(LabelStudioError):
    """No API token: neither the environment variable nor the token file holds one."""
