"""``medloop labelstudio install|start|stop|status|push|sync|webhook``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True)

ConfigOption = typer.Option(
    None, "--config", "-c", envvar="MEDLOOP_CONFIG", help="campaign TOML file (default: built-in defaults)"
)
VenvOption = typer.Option(
    None, "--venv",
    help="Label Studio's virtual environment (default: MEDLOOP_LS_VENV, else .medloop/labelstudio-venv beside "
    "medloop's own virtual environment)",
)


def _campaign(config: Path | None):
    from medloop.config import ConfigError, load_campaign

    try:
        return load_campaign(config)
    except ConfigError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None


def _fail(err: Exception) -> None:
    typer.echo(f"medloop labelstudio: {err}", err=True)
    raise typer.Exit(1)


@app.command()
def install(venv: Path | None = VenvOption, quiet: bool = typer.Option(True, "--quiet/--verbose")) -> None:
    """Install Label Studio's server into its own virtual environment (nothing to do when present)."""
    from . import server
    from .errors import LabelStudioInstallError

    if server.is_installed(venv):
        typer.echo(f"Label Studio is installed: {server.executable(venv)}")
        return
    typer.echo(f"installing {server.LS_REQUIREMENT} into {server.venv_path(venv)} (a few minutes)", err=True)
    try:
        exe = server.install(venv, quiet=quiet)
    except LabelStudioInstallError as err:
        _fail(err)
    typer.echo(f"Label Studio is installed: {exe}")


@app.command()
def start(
    config: Path | None = ConfigOption,
    port: int | None = typer.Option(
        None, "--port", "-p",
        help="port on 127.0.0.1; must agree with labeling.url (the one address push and sync use)"),
    venv: Path | None = VenvOption,
    timeout: float = typer.Option(240.0, help="seconds to wait for /health"),
    workers: int | None = typer.Option(
        None, "--workers", min=1, max=64,
        help="processes serving it (default labeling.server_workers; more than 1 runs it under gunicorn)"),
    database: str | None = typer.Option(
        None, "--database",
        help="its PostgreSQL database, postgresql://user@host:port/name (default labeling.server_database, else "
             "SQLite); the password from MEDLOOP_LS_DB_PASSWORD or PGPASSWORD / ~/.pgpass"),
) -> None:
    """Start the campaign's Label Studio on 127.0.0.1 and wait until it answers."""
    from . import server
    from .errors import LabelStudioInstallError

    campaign = _campaign(config)
    options = {k: v for k, v in (("server_workers", workers), ("server_database", database)) if v is not None}
    if options:  # checked as the campaign keys are (no password in --database either)
        from medloop.config import ConfigError, with_labeling

        try:
            campaign = with_labeling(campaign, "--workers / --database", **options)
        except ConfigError as err:
            _fail(err)
    if port is not None and port != campaign.labeling.server_port:
        _fail(ValueError(f"--port {port} contradicts labeling.url = {campaign.labeling.url} (port "
                         f"{campaign.labeling.server_port}): rounds push to and sync from labeling.url; set "
                         "labeling.url (or labeling.port) in the campaign file instead"))
    try:
        info = server.start(campaign, port=port, venv=venv, timeout=timeout)
    except LabelStudioInstallError as err:
        _fail(err)
    typer.echo(f"Label Studio runs at {info.url} (pid {info.pid}); log: {info.log}")
    typer.echo(f"API token in {info.token_file} "
               f"(admin user {server.ADMIN_USER}, password in {server.files(campaign).password})")


@app.command()
def stop(config: Path | None = ConfigOption) -> None:
    """Stop the campaign's Label Studio."""
    from . import server

    campaign = _campaign(config)
    typer.echo("Label Studio stopped" if server.stop(campaign) else "Label Studio was not running")


@app.command()
def status(config: Path | None = ConfigOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Is the campaign's Label Studio running and healthy? (exit 1 when not)"""
    from . import server

    campaign = _campaign(config)
    info = server.status(campaign)
    if as_json:
        typer.echo(json.dumps(info.as_dict()))
    elif info.running:
        health = "healthy" if info.healthy else "NOT answering /health"
        typer.echo(f"Label Studio runs at {info.url} (pid {info.pid}), {health}")
    else:
        typer.echo(f"Label Studio is not running (data in {info.data_dir})")
    if not (info.running and info.healthy):
        raise typer.Exit(1)


@app.command()
def push(config: Path | None = ConfigOption) -> None:
    """Push the queued cases (AnnotationTask rows in state 'intent') to Label Studio."""
    from medloop.campaign_folder import ledger_or_exit
    from medloop.data.imagestore import ImageStore

    from .errors import LabelStudioError
    from .push import push_queue

    campaign = _campaign(config)
    ledger = ledger_or_exit(campaign, "labelstudio push")
    try:
        report = push_queue(campaign, ledger, ImageStore(campaign.store))
    except LabelStudioError as err:
        _fail(err)
    typer.echo(json.dumps(report.as_dict()))


@app.command()
def sync(
    config: Path | None = ConfigOption,
    wait: float = typer.Option(60.0, "--wait", help="seconds to wait for the campaign lock (a round or another sync)"),
) -> None:
    """Pull finished annotations from Label Studio into the ledger (under the campaign lock)."""
    from medloop.campaign_folder import ledger_or_exit
    from medloop.data.imagestore import ImageStore
    from medloop.rounds.lock import RoundLocked

    from .errors import LabelStudioError
    from .pull import locked_sync

    campaign = _campaign(config)
    ledger = ledger_or_exit(campaign, "labelstudio sync")
    try:
        report = locked_sync(campaign, ledger, ImageStore(campaign.store), wait_s=wait)
    except (LabelStudioError, RoundLocked) as err:
        _fail(err)
    typer.echo(json.dumps(report.as_dict()))


@app.command()
def webhook(
    config: Path | None = ConfigOption,
    port: int = typer.Option(8765, help="port on 127.0.0.1"),
    register: bool = typer.Option(True, help="register the webhook in the project"),
) -> None:
    """Run a receiver on 127.0.0.1 that syncs when Label Studio reports an annotation (Ctrl-C stops)."""
    from medloop.campaign_folder import require_campaign_or_exit

    from .webhook import serve_forever

    campaign = _campaign(config)
    require_campaign_or_exit(campaign, "labelstudio webhook")
    serve_forever(campaign, port=port, register=register)


@app.command()
def backend(
    config: Path | None = ConfigOption,
    model: str = typer.Option(
        "champion", "--model", "-m", help="champion | a registered model version number | a checkpoint folder"),
    port: int = typer.Option(9090, "--port", "-p", help="port to listen on"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (the backend has no authentication)"),
    mc_passes: int | None = typer.Option(None, "--mc-passes", min=1, help="T (default: uncertainty.mc_passes)"),
    project: int | None = typer.Option(
        None, "--project", help="connect the backend to this Label Studio project (POST /api/ml) once it serves"),
) -> None:
    """Serve the model as a Label Studio ML backend: class + lesion-mask pre-annotations on any task (Ctrl-C stops)."""
    import logging
    import threading

    from medloop.tracking.resolve import ModelNotFound
    from medloop.trainers.checkpoints import CheckpointError

    from .client import connect
    from .errors import LabelStudioError
    from .ml_backend import build_backend, connect_backend, make_server

    campaign = _campaign(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from medloop.trainers.inference import VolumeModelError

    try:
        ml, described = build_backend(campaign, model, passes=mc_passes)
    except (ModelNotFound, CheckpointError, VolumeModelError) as err:
        _fail(err)
    try:
        httpd = make_server(ml, host, port)
    except OSError as err:
        _fail(OSError(f"cannot listen on {host}:{port} ({err.strerror}); choose another --port"))
    url = f"http://{host}:{httpd.server_address[1]}"
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: the backend listens on {host}, beyond this machine, without authentication", err=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    typer.echo(f"Label Studio ML backend on {url}, model {described}", err=True)
    try:
        if project is not None:
            try:
                row = connect_backend(connect(campaign), project, url)
            except LabelStudioError as err:
                _fail(err)
            typer.echo(f"connected to Label Studio project {project} (ML backend {row['id']}, "
                       f"model version {row.get('model_version')})", err=True)
        else:
            typer.echo(f"connect it in the project's Settings > Model (URL {url}) or with --project ID", err=True)
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.shutdown()
        httpd.server_close()
