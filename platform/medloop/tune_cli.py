"""``medloop tune``: Ray Tune search over a campaign's labeled data."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the tune command to the top-level app."""

    @app.command("tune")
    def tune(
        config: Path | None = typer.Option(None, "--config", "-c", envvar="MEDLOOP_CONFIG", help="campaign TOML file"),
        samples: int = typer.Option(8, "--samples", "-n", min=1, help="number of trials"),
        epochs: int | None = typer.Option(
            None, "--epochs", min=1, help="max epochs per trial (default compute.epochs)"
        ),
        write_back_: bool = typer.Option(False, "--write-back", help="write the best values into the campaign file"),
    ) -> None:
        """Search lr, dropout, width and loss weights with ASHA on the labeled data."""
        from medloop.campaign_folder import ledger_or_exit
        from medloop.config import ConfigError, load_campaign
        from medloop.trainers.ray_local import shutdown_local_ray
        from medloop.trainers.tune import tune_campaign, write_back

        try:
            campaign = load_campaign(config)
        except ConfigError as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(2) from None
        if write_back_ and config is None:
            typer.echo("--write-back needs --config FILE", err=True)
            raise typer.Exit(2)
        ledger = ledger_or_exit(campaign, "tune")
        try:
            best = tune_campaign(campaign, ledger, num_samples=samples, max_epochs=epochs)
        except ValueError as err:
            typer.echo(f"tune: {err}", err=True)
            raise typer.Exit(1) from None
        finally:
            ledger.close()
            shutdown_local_ray()
        typer.echo(json.dumps(best, indent=1, default=str))
        if write_back_ and config is not None:  # (--write-back without --config exited above)
            write_back(config, best)
            typer.echo(f"wrote the best configuration into {config}")
