"""Round commands: ``medloop round`` and ``medloop watch``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from medloop.config import Campaign

EXIT_LOCKED = 3
EXIT_FAILED = 1


def _campaign(config: Path | None):
    from medloop.config import ConfigError, load_campaign

    try:
        campaign = load_campaign(config)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    from medloop.storage_errors import remember_campaign

    remember_campaign(campaign)  # named if its folder turns out read-only or full (medloop.cli.main)
    return campaign


def summary(out) -> str:  # noqa: ANN001 - RoundOutcome
    """A few lines about a round's outcome."""
    lines = [f"{out.status}: {out.message}" + (" (resumed)" if out.resumed else "")]
    m = out.metrics or {}
    keys = [k for k in ("accuracy", "dice", "ece", "pseudo_precision_truth", "audit_precision") if m.get(k) is not None]
    if keys:
        lines.append("  " + "  ".join(f"{k}={m[k]:.3f}" for k in keys))
    return "\n".join(lines)


def _restore(campaign: Campaign) -> None:
    """``--restore-checkpoint``: under the round lock, rebuild the checkpoint from the registry (or exit 1)."""
    from medloop.ledger import Ledger
    from medloop.rounds.lock import round_lock
    from medloop.rounds.recovery import RestoreError, restore_checkpoint

    with round_lock(campaign):
        ledger = Ledger.open(campaign.ledger)
        try:
            typer.echo(restore_checkpoint(campaign, ledger).summary())
        except RestoreError as err:
            typer.echo(f"medloop round --restore-checkpoint: {err}", err=True)
            raise typer.Exit(EXIT_FAILED) from None
        finally:
            ledger.close()


def register(app: typer.Typer) -> None:
    """Add the round commands to the top-level app."""

    @app.command("round")
    def round_cmd(
        config: Path | None = typer.Option(None, "--config", "-c", envvar="MEDLOOP_CONFIG", help="campaign TOML file"),
        force: bool = typer.Option(False, "--force", help="run even if the trigger or a stopping rule says no"),
        cold_start: bool = typer.Option(
            False, "--cold-start",
            help="train from the model's initialisation, ignoring the previous round's checkpoint"),
        restore_checkpoint: bool = typer.Option(
            False, "--restore-checkpoint",
            help="first put the last finished round's checkpoint back from its registered MLflow model"),
    ) -> None:
        """Run one round (sync -> train -> score -> select -> push -> report), or resume an interrupted one."""
        from medloop.campaign_folder import require_campaign_or_exit
        from medloop.rounds.lock import RoundLocked
        from medloop.rounds.orchestrator import RoundStepFailed, run_round
        from medloop.tracking.identity import CampaignMismatch
        from medloop.trainers.ray_local import shutdown_local_ray

        campaign = _campaign(config)
        require_campaign_or_exit(campaign, "round")  # a mistyped folder is refused, not made a new campaign
        try:
            if restore_checkpoint:
                _restore(campaign)
            out = run_round(campaign, force=force, cold_start=cold_start)
        except RoundLocked as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(EXIT_LOCKED) from None
        except (RoundStepFailed, CampaignMismatch) as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(EXIT_FAILED) from None
        finally:
            shutdown_local_ray()  # the local Ray this round started (a cluster is left alone)
        typer.echo(summary(out))

    @app.command("watch")
    def watch_cmd(
        every: str = typer.Option("6h", "--every", help="interval between attempts: 6h, 30m, 90s, 1d"),
        config: Path | None = typer.Option(None, "--config", "-c", envvar="MEDLOOP_CONFIG", help="campaign TOML file"),
        max_rounds: int | None = typer.Option(None, "--max-rounds", help="exit after this many finished rounds"),
    ) -> None:
        """Try a round every --every; the trigger and stopping rules decide whether it runs."""
        from medloop.campaign_folder import require_campaign_or_exit
        from medloop.rounds.orchestrator import RoundOutcome, run_round
        from medloop.rounds.scheduler import parse_every, watch
        from medloop.trainers.ray_local import shutdown_local_ray

        try:
            seconds = parse_every(every)
        except ValueError as err:
            typer.echo(str(err), err=True)
            raise typer.Exit(2) from None
        campaign = _campaign(config)
        require_campaign_or_exit(campaign, "watch")

        def run_then_release(c: Campaign) -> RoundOutcome:
            """A round, then its local Ray shut down: nothing is held between ticks (hours apart)."""
            try:
                return run_round(c)
            finally:
                shutdown_local_ray()

        watch(campaign, seconds, max_rounds=max_rounds, run=run_then_release, echo=typer.echo)
