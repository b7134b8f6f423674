"""``medloop export``: the command line of :mod:`medloop.export` (its imports stay inside the command)."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add ``medloop export`` to the top-level app."""

    @app.command("export")
    def export_command(
        out: Path | None = typer.Option(None, "--out", "-o",
                                        help="folder to write (default: ./<campaign name>-export)"),
        include: list[str] = typer.Option([], "--include",
                                          help="pseudo: also export pseudo-labels (never in place of a human label)"),
        fmt: str = typer.Option("generic", "--format", help="generic (images/, masks/, labels.csv) | labelstudio"),
        force: bool = typer.Option(False, "--force", help="replace an existing --out folder"),
        image_url: str | None = typer.Option(
            None, "--image-url",
            help="labelstudio: address prefix of the exported images (default: a Local Storage URL when --out "
                 "lies below Label Studio's document root)"),
        config: Path | None = typer.Option(None, "--config", "-c", help="campaign TOML file"),
    ) -> None:
        """Export the campaign's labels with provenance (human labels; --include pseudo adds pseudo-labels)."""
        from medloop.cli import load_or_exit
        from medloop.export import FORMATS, INCLUDES, ExportError, export_campaign

        bad = [v for v in include if v not in INCLUDES]
        if bad:
            typer.echo(f"--include: expected {' or '.join(INCLUDES)} (got {', '.join(map(repr, bad))})", err=True)
            raise typer.Exit(2)
        if fmt not in FORMATS:
            typer.echo(f"--format: expected one of {', '.join(FORMATS)} (got {fmt!r})", err=True)
            raise typer.Exit(2)
        campaign = load_or_exit(config)
        target = out if out is not None else Path(f"{campaign.name}-export")
        try:
            report = export_campaign(campaign, target, fmt=fmt, include_pseudo="pseudo" in include, force=force,
                                     image_url=image_url, progress=True)
        except ExportError as err:
            typer.echo(f"medloop export: {err}", err=True)
            raise typer.Exit(1) from None
        typer.echo(report.summary())
