"""``medloop predict`` and ``medloop evaluate``: use a campaign's model outside the rounds (read-only)."""

from __future__ import annotations

from pathlib import Path

import typer

ModelOption = typer.Option(
    "champion", "--model", "-m",
    help="champion (the registry alias), a registered version number, or a checkpoint folder")
ConfigOption = typer.Option(None, "--config", "-c", envvar="MEDLOOP_CONFIG",
                            help="campaign TOML file (default: built-in defaults)")


def register(app: typer.Typer) -> None:
    """Add the ``predict`` and ``evaluate`` commands to ``app``."""

    @app.command()
    def predict(
        inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="image files or folders (png, jpg, bmp, "
                                            "tif, single-frame DICOM .dcm)"),
        model: str = ModelOption,
        out: Path = typer.Option(Path("predictions"), "--out", "-o", help="output folder (must not hold files)"),
        mc_passes: int | None = typer.Option(None, "--mc-passes", "-T", min=1,
                                             help="MC-dropout passes T (default uncertainty.mc_passes; 1 = one "
                                                  "deterministic pass)"),
        overlays: bool = typer.Option(False, "--overlays", help="also write overlays/<name>.png (image + mask "
                                      "outline | uncertainty map)"),
        force: bool = typer.Option(False, "--force", help="replace an existing non-empty --out folder"),
        ray: bool = typer.Option(False, "--ray", help="run the batches through Ray Data (large folders): the "
                                 "campaign's Ray cluster, else a local Ray on 127.0.0.1 stopped afterwards"),
        ray_actors: int | None = typer.Option(None, "--ray-actors", min=1, help="Ray Data actors, each holding "
                                              "the model (default compute.score_actors)"),
        config: Path | None = ConfigOption,
    ) -> None:
        """Predict class, lesion mask and uncertainty for images: masks/<name>.png at each image's own size,
        predictions.csv, unreadable.csv (files that could not be used, with the reason)."""
        from medloop.cli import load_or_exit
        from medloop.data.errors import DataError
        from medloop.outdir import OutputExists
        from medloop.predict import run_predict
        from medloop.tracking.resolve import ModelNotFound
        from medloop.trainers.checkpoints import CheckpointError
        from medloop.trainers.ray_local import shutdown_local_ray

        campaign = load_or_exit(config)
        try:
            report = run_predict(campaign, inputs, model=model, out=out, passes=mc_passes, overlays=overlays,
                                 force=force, progress=True, ray=ray, actors=ray_actors)
        except (DataError, ModelNotFound, OutputExists, CheckpointError, ValueError) as err:
            typer.echo(f"predict: {err}", err=True)
            raise typer.Exit(1) from None
        finally:
            if ray:
                shutdown_local_ray()  # the local Ray this command started (a cluster is left alone)
        typer.echo(report.summary())

    @app.command()
    def evaluate(
        path: Path = typer.Argument(..., help="labeled dataset folder (never ingested into the campaign)"),
        fmt: str = typer.Option(..., "--format", "-f", help="busi | generic"),
        model: str = ModelOption,
        out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="report folder (must not hold files)"),
        mc_passes: int = typer.Option(1, "--mc-passes", "-T", min=1,
                                      help="MC-dropout passes T (default 1: one deterministic pass, as the "
                                           "campaign's test metrics)"),
        bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="bootstrap resamples for the 95 % CIs"),
        seed: int = typer.Option(0, "--seed", help="seed of the bootstrap"),
        mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log the evaluation run to MLflow"),
        force: bool = typer.Option(False, "--force", help="replace an existing non-empty --out folder"),
        config: Path | None = ConfigOption,
    ) -> None:
        """Evaluate a campaign's model on a labeled dataset it has not seen: Dice, IoU, HD95, empty-mask rate,
        accuracy, macro-F1, AUC, ECE, Brier (overall and per class) with bootstrap 95 % CIs; report.md,
        report.json, plots; an MLflow evaluation run tagged with the model version."""
        from medloop.cli import load_or_exit
        from medloop.data.errors import DataError
        from medloop.evaluation import run_evaluate
        from medloop.outdir import OutputExists
        from medloop.tracking.resolve import ModelNotFound
        from medloop.trainers.checkpoints import CheckpointError

        campaign = load_or_exit(config)
        try:
            report = run_evaluate(campaign, path, fmt, model=model, out=out, passes=mc_passes, n_boot=bootstrap,
                                  seed=seed, log_mlflow=mlflow, force=force, progress=True)
        except (DataError, ModelNotFound, OutputExists, CheckpointError, ValueError) as err:
            typer.echo(f"evaluate: {err}", err=True)
            raise typer.Exit(1) from None
        typer.echo(report.summary())
