"""``medloop dashboard``: start the Streamlit app on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

APP = Path(__file__).with_name("app.py")


def streamlit_command(config: Path | None, port: int) -> list[str]:
    """The command line that serves the dashboard (bound to 127.0.0.1, headless, no telemetry)."""
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--global.developmentMode", "false",
        "--client.toolbarMode", "viewer",  # a read-only view: no "Deploy" button, no developer menu
    ]
    if config is not None:
        cmd += ["--", "--config", str(config.resolve())]
    return cmd


def register(app: typer.Typer) -> None:
    """Add the dashboard command to the top-level app."""

    @app.command("dashboard")
    def dashboard(
        config: Path = typer.Option(
            None, "--config", "-c", envvar="MEDLOOP_CONFIG", help="campaign file (default: MEDLOOP_CONFIG or defaults)"
        ),
        port: int = typer.Option(8501, "--port", min=1, max=65535, help="port on 127.0.0.1"),
    ) -> None:
        """Start the read-only Streamlit dashboard on http://127.0.0.1:PORT."""
        if config is not None and not config.is_file():
            typer.echo(f"medloop dashboard: campaign file not found: {config}", err=True)
            raise typer.Exit(2)
        from medloop.campaign_folder import require_campaign_or_exit
        from medloop.cli import load_or_exit

        require_campaign_or_exit(load_or_exit(config), "dashboard")  # a mistyped folder: one line, exit 1
        typer.echo(f"medloop dashboard: http://127.0.0.1:{port}  (Ctrl-C to stop)", err=True)
        cmd = streamlit_command(config, port)
        if os.name == "posix":
            # become the streamlit server: signals (Ctrl-C, SIGTERM from a service manager) reach it directly
            os.execv(cmd[0], cmd)
        try:  # pragma: no cover - non-POSIX
            code = subprocess.call(cmd)
        except KeyboardInterrupt:  # pragma: no cover
            code = 0
        raise typer.Exit(code)
