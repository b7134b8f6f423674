"""The ``medloop`` command line (typer). Heavy imports (torch, ray, mlflow) stay inside commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="medloop: self-training rounds for joint classification + segmentation.")


# ---- sub-commands that live next to the code they drive --------------------------------
from medloop.labeling.cli import app as _labelstudio_app  # noqa: E402
from medloop.dashboard.cli import register as _register_dashboard_command  # noqa: E402
from medloop.rounds.cli import register as _register_round_commands  # noqa: E402
from medloop.tune_cli import register as _register_tune_command  # noqa: E402

app.add_typer(_labelstudio_app, name="labelstudio", help="Run or check a local Label Studio server.")
_register_round_commands(app)
_register_tune_command(app)
_register_dashboard_command(app)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
