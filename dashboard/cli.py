"""``medloop dashboard``: start the Streamlit app on 127.0.0.1."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the dashboard command to the top-level app."""
