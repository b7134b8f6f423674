"""How `medloop labelstudio start` launches Label Studio: its own one-process server, or a team setup.

A team deployment serves Label Studio from several worker processes with PostgreSQL behind it (as Label
Studio's own Docker image does with uWSGI). Here:

* :func:`server_command` is ``label-studio start ...`` for one worker. For more, the same start runs
  through :data:`LAUNCHER` (Label Studio's venv's Python): Label Studio's own ``start`` applies the
  migrations and creates the admin user with its token, and then, instead of Django's one-process
  ``runserver``, the process becomes a gunicorn master (``exec``; the pid medloop recorded stays the
  server's) with ``workers`` sync workers on the same address.
* :func:`database_env` turns ``labeling.server_database`` (a PostgreSQL URL without password) into the
  ``LABEL_STUDIO_DJANGO_DB`` / ``LABEL_STUDIO_POSTGRE_*`` variables Label Studio 1.23's settings read;
  the password comes from ``MEDLOOP_LS_DB_PASSWORD``, else libpq finds it (``PGPASSWORD``, ``~/.pgpass``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import make_url

GUNICORN_REQUIREMENT = "gunicorn==23.*"
PASSWORD_ENV = "MEDLOOP_LS_DB_PASSWORD"

#: run by Label Studio's Python: argv = workers, gunicorn executable, then `label-studio` arguments
LAUNCHER = """
import os, sys
import label_studio.server as ls

workers, gunicorn = sys.argv[1], sys.argv[2]

def serve(host, port):
    from django.db import connections
    connections.close_all()  # the migrations' connection is not handed to the workers
    os.execv(gunicorn, [gunicorn, "label_studio.core.wsgi:application", "--pythonpath", ls.LS_PATH,
                        "--bind", f"{host}:{port}", "--workers", workers, "--timeout", "300",
                        "--graceful-timeout", "10", "--log-level", "warning"])

ls._app_run = serve
sys.argv = ["label-studio", *sys.argv[3:]]
sys.exit(ls.main())
"""


def gunicorn_path(venv_root: Path) -> Path:
    return venv_root / "bin" / "gunicorn"


def server_command(venv_root: Path, *, port: int, data_dir: Path, workers: int) -> list[str]:
    """The command that starts Label Studio on 127.0.0.1:``port`` with ``workers`` processes."""
    args = ["start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), "--enable-legacy-api-token", "--log-level", "WARNING"]
    if workers == 1:
        return [str(venv_root / "bin" / "label-studio"), *args]
    return [str(venv_root / "bin" / "python"), "-c", LAUNCHER, str(workers), str(gunicorn_path(venv_root)), *args]


def database_env(url: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """Label Studio's database variables for ``labeling.server_database`` (``None``: its SQLite file).

    ``postgresql://user@host:port/name``; a unix-socket folder goes in ``?host=/path`` (libpq's form).
    """
    if url is None:
        return {"LABEL_STUDIO_DJANGO_DB": "sqlite"}
    parsed = make_url(url)
    query = {k: (v[0] if isinstance(v, tuple) else v) for k, v in parsed.query.items()}
    host = parsed.host or query.get("host") or "localhost"
    port = parsed.port or int(query.get("port") or 5432)
    env = {
        "DJANGO_DB": "default",  # Label Studio 1.23: "default" is its PostgreSQL entry
        "POSTGRE_HOST": host,
        "POSTGRE_PORT": str(port),
        "POSTGRE_NAME": parsed.database or "labelstudio",
        "POSTGRE_USER": parsed.username or "postgres",
        # empty: Django passes no password and libpq looks for one (PGPASSWORD, ~/.pgpass)
        "POSTGRE_PASSWORD": environ.get(PASSWORD_ENV, ""),
    }
    # the prefixed names: Label Studio reads LABEL_STUDIO_<name> first, so an inherited one cannot win
    return {f"LABEL_STUDIO_{k}": v for k, v in env.items()}
