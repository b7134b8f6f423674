"""``medloop tune``: Ray Tune search over a campaign's labeled data."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the tune command to the top-level app."""
