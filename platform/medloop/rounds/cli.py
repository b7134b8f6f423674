"""Round commands: ``medloop round``, ``medloop watch``, ``medloop tune``, ``medloop dashboard``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the round commands to the top-level app."""
