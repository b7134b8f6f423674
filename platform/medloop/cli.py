"""The ``medloop`` command line (typer). Heavy imports (torch, ray, mlflow) stay inside commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from medloop.config import Campaign

app = typer.Typer(no_args_is_help=True, help="medloop: self-training rounds for joint classification + segmentation.")

ConfigOption = typer.Option(
    None, "--config", "-c", envvar="MEDLOOP_CONFIG", help="campaign TOML file (default: built-in defaults)"
)


def load_or_exit(config: Path | None, **overrides: object) -> Campaign:
    """Load the campaign; a bad file prints the message (key + expected type) and exits 2."""
    from medloop.config import ConfigError, load_campaign

    try:
        campaign = load_campaign(config, **overrides)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    from medloop.storage_errors import remember_campaign

    remember_campaign(campaign)  # named if its folder turns out read-only or full (see main)
    return campaign


def _data_error(err: Exception) -> typer.Exit:
    typer.echo(str(err), err=True)
    return typer.Exit(1)


@app.command()
def init(
    path: Path = typer.Argument(Path("campaign.toml"), help="where to write the campaign file"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
    config: Path | None = ConfigOption,
) -> None:
    """Write a commented campaign file with every key at its default (or the values of --config)."""
    from medloop.config import commented_toml

    if path.exists() and not force:
        typer.echo(f"{path}: already exists (use --force to overwrite)", err=True)
        raise typer.Exit(1)
    campaign = load_or_exit(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(commented_toml(campaign))
    typer.echo(f"wrote {path}")


@app.command()
def ingest(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="synthetic | busi | generic"),
    path: Path | None = typer.Argument(None, help="dataset folder (default: data.path of the campaign)"),
    config: Path | None = ConfigOption,
    skip_bad: bool = typer.Option(False, "--skip-bad", help="ingest the good files and list the bad ones"),
    workers: int | None = typer.Option(None, "--workers", min=1, help="reader processes for a folder of 2,000 "
                                       "files or more (default: the CPUs, at most 8; 1 = read in this process)"),
) -> None:
    """Register a dataset in the ledger and image store (stratified splits, unlabeled pool)."""
    from medloop.data.errors import DataError
    from medloop.data.ingest import default_workers
    from medloop.data.ingest import ingest as run_ingest

    campaign = load_or_exit(config)
    try:
        report = run_ingest(campaign, fmt, path, skip_bad=skip_bad, progress=True,
                            workers=default_workers() if workers is None else workers)
    except DataError as err:
        raise _data_error(err) from None
    typer.echo(report.summary())


def print_status(campaign: Campaign) -> None:
    """Pool sizes by split and label kind, the rounds, and quarantined annotations."""
    from rich.console import Console
    from rich.table import Table

    from medloop.campaign_folder import ledger_or_exit
    from medloop.ledger.queries import LABEL_COLUMNS, class_counts, pool_sizes, quarantine_summary, rounds_table

    console = Console()
    ledger = ledger_or_exit(campaign, "status")  # a mistyped folder is refused, never created
    try:
        with ledger.reading() as s:
            sizes, truth = pool_sizes(s), class_counts(s, "truth")
            rounds, (n_quarantined, reasons) = rounds_table(s), quarantine_summary(s)
    finally:
        ledger.close()
    console.print(f"campaign [bold]{campaign.name}[/bold] in {campaign.folder}")
    table = Table(title="samples by split and active label kind")
    for col in ("split", "samples", *LABEL_COLUMNS):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, row in sizes.items():
        table.add_row(split, *(str(row[c]) for c in ("samples", *LABEL_COLUMNS)))
    console.print(table)
    if truth:
        console.print("classes (hidden truth): " + ", ".join(f"{k} {v}" for k, v in sorted(truth.items())))
    if rounds:
        from medloop.rounds.recovery import round_in_progress, shown_state

        live = round_in_progress(campaign)  # "running" with no live lock holder is shown as interrupted
        rt = Table(title="rounds")
        for col in ("round", "status", "started", "finished", "steps"):
            rt.add_column(col)
        for r in rounds:
            steps = " ".join(f"{k}:{shown_state(v, live)}" for k, v in r["steps"].items())
            rt.add_row(str(r["id"]), shown_state(r["status"], live), str(r["started_at"] or ""),
                       str(r["finished_at"] or ""), steps)
        console.print(rt)
        if not live and any(r["status"] == "running" or "running" in r["steps"].values() for r in rounds):
            console.print("interrupted: no process runs this round any more; `medloop round` resumes it")
    else:
        console.print("rounds: none yet")
    console.print(f"quarantined annotations: {n_quarantined}")
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        console.print(f"  {n} x {reason}")


@app.command()
def status(config: Path | None = ConfigOption) -> None:
    """Show pool sizes by split and label kind, rounds, and quarantined annotations."""
    print_status(load_or_exit(config))


@app.command()
def demo(
    path: Path | None = typer.Argument(None, help="dataset folder for --dataset busi"),
    config: Path | None = ConfigOption,
    dataset: str | None = typer.Option(None, "--dataset",
                                       help="synthetic | busi | volumes (3D phantoms) (default: data.source)"),
    rounds: int = typer.Option(3, "--rounds", min=0, help="self-training rounds to run after ingesting"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Ray's and MLflow's log lines (default: a file)"),
) -> None:
    """Run the demo campaign on the embedded defaults (no file needed)."""
    from medloop.data.errors import DataError
    from medloop.demo_output import run_demo_shown

    campaign = load_or_exit(config)
    if dataset is not None and dataset not in ("synthetic", "busi", "volumes"):
        typer.echo(f"--dataset: expected synthetic, busi or volumes (got {dataset!r})", err=True)
        raise typer.Exit(2)
    try:
        report, failure = run_demo_shown(campaign, dataset=dataset, path=path, rounds=rounds, verbose=verbose)
    except DataError as err:
        raise _data_error(err) from None
    typer.echo(report.summary())
    print_status(campaign)
    if failure:
        typer.echo(failure, err=True)
        raise typer.Exit(1)


# ---- sub-commands that live next to the code they drive --------------------------------
from medloop.dashboard.cli import register as _register_dashboard_command  # noqa: E402
from medloop.export_cli import register as _register_export_command  # noqa: E402
from medloop.inference_cli import register as _register_inference_commands  # noqa: E402
from medloop.labeling.cli import app as _labelstudio_app  # noqa: E402
from medloop.rounds.cli import register as _register_round_commands  # noqa: E402
from medloop.tune_cli import register as _register_tune_command  # noqa: E402

app.add_typer(_labelstudio_app, name="labelstudio", help="Run or check a local Label Studio server.")
_register_round_commands(app)
_register_tune_command(app)
_register_dashboard_command(app)
_register_export_command(app)
_register_inference_commands(app)


def main() -> None:
    """The ``medloop`` command: a campaign folder that is read-only or full is one line, not a traceback."""
    from medloop.storage_errors import storage_message

    try:
        app()
    except Exception as err:
        message = storage_message(err)
        if message is None:
            raise
        typer.echo(message, err=True)
        raise SystemExit(1) from None


if __name__ == "__main__":  # pragma: no cover
    main()
