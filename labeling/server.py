"""A local Label Studio server for development, the demo and the tests.

* :func:`install` puts Label Studio's server (``label-studio==1.23.*``) in its own virtual
  environment (:func:`venv_path`: ``MEDLOOP_LS_VENV``, else ``.medloop/labelstudio-venv`` beside
  medloop's own virtual environment, whatever the working directory); quick when present.
* :func:`start` runs it on ``127.0.0.1:<port>`` (the port of ``labeling.url``: one address for
  start, push and sync) with its data folder in ``<campaign>/labelstudio``,
  an admin user and a legacy API token created without a browser (a random token generated on
  first start and kept in ``<campaign>/labelstudio/api-token``, mode 0600; never printed), local
  file serving rooted at the campaign folder, error reporting (Sentry), analytics and the version
  check off (:data:`NO_OUTBOUND_ENV`: no outbound calls), and waits until ``/health`` answers.
* :func:`stop` and :func:`status` use the pid file ``<campaign>/labelstudio/server.pid``;
  the server logs to ``<campaign>/labelstudio/server.log``.
* The data folder holds the SQLite database with the users and their API tokens: it is made
  private at every start (mode 0700; files directly inside lose every group/other bit) and the
  server runs with umask 077, so what it creates later (the database, exports, uploads) is
  readable by its owner only.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from medloop.config import Campaign

from . import server_launch
from .errors import LabelStudioInstallError

LS_REQUIREMENT = "label-studio==1.23.*"
ADMIN_USER = "admin@medloop.local"

# No outbound calls: the switches of Label Studio 1.23's settings (core/settings/base.py and
# label_studio.py read NAME, HEARTEX_NAME and LABEL_STUDIO_NAME, the last one first, so the prefixed
# form is set and wins over anything inherited). The community build's defaults send server errors
# and browser errors to Sentry (a DSN is built in), usage events to tele.labelstud.io and ask PyPI
# for the latest version at start.
NO_OUTBOUND_ENV = {
    "LABEL_STUDIO_SENTRY_DSN": "",  # empty: sentry_sdk is never initialised (server error reports)
    "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",  # empty: pages load no Sentry script (browser error reports)
    "LABEL_STUDIO_COLLECT_ANALYTICS": "false",  # no usage events (server contextlog, browser)
    "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",  # no PyPI version check at start
    "LABEL_STUDIO_FEATURE_FLAGS_OFFLINE": "true",  # feature flags from the built-in file, no LaunchDarkly
    # Anything else that still reaches out (the projects page's "tips", fetched by the server from
    # GitHub, has no switch) goes to a proxy on the discard port of loopback, where nothing listens:
    # it fails at once without leaving the machine. Loopback itself (webhooks to 127.0.0.1) is direct.
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost,::1",
    "no_proxy": "127.0.0.1,localhost,::1",
}


# ---- the server's virtual environment ---------------------------------------------------------


def venv_path(venv: str | Path | None = None) -> Path:
    """Label Studio's virtual environment, never relative to the working directory: ``venv``, else
    ``MEDLOOP_LS_VENV``, else beside medloop's own virtual environment (``<dir>/.venv`` ->
    ``<dir>/.medloop/labelstudio-venv``, the layout of scripts/setup.sh), else (medloop not in a
    virtual environment) ``$XDG_DATA_HOME/medloop/labelstudio-venv`` (``~/.local/share/...``)."""
    if venv is not None:
        return Path(venv).expanduser().resolve()
    env = os.environ.get("MEDLOOP_LS_VENV")
    if env:
        return Path(env).expanduser().resolve()
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix).resolve().parent / ".medloop" / "labelstudio-venv"
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home.expanduser().resolve() / "medloop" / "labelstudio-venv"


def executable(venv: str | Path | None = None) -> Path:
    return venv_path(venv) / "bin" / "label-studio"


def is_installed(venv: str | Path | None = None) -> bool:
    return executable(venv).exists()


def install(venv: str | Path | None = None, *, quiet: bool = True) -> Path:
    """Install Label Studio's server into ``venv`` when missing; returns the ``label-studio`` executable."""
    exe = executable(venv)
    if exe.exists():
        return exe
    root = venv_path(venv)
    python = root / "bin" / "python"
    try:
        if not python.exists():
            root.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        q = ["-q"] if quiet else []
        subprocess.run([str(python), "-m", "pip", "install", *q, "--upgrade", "pip"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", *q, LS_REQUIREMENT], check=True)
    except (subprocess.CalledProcessError, OSError) as err:
        raise LabelStudioInstallError(f"could not install {LS_REQUIREMENT} into {root}: {err}") from err
    if not exe.exists():
        raise LabelStudioInstallError(f"{LS_REQUIREMENT} installed into {root} but {exe} is missing")
    return exe


def install_gunicorn(venv: str | Path | None = None, *, quiet: bool = True) -> Path:
    """gunicorn in Label Studio's venv (for a server of several workers), installed when missing."""
    root = venv_path(venv)
    exe = server_launch.gunicorn_path(root)
    if exe.exists():
        return exe
    q = ["-q"] if quiet else []
    try:
        subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", *q,
                        server_launch.GUNICORN_REQUIREMENT], check=True)
    except (subprocess.CalledProcessError, OSError) as err:
        raise LabelStudioInstallError(
            f"could not install {server_launch.GUNICORN_REQUIREMENT} into {root} (needed for "
            f"labeling.server_workers > 1): {err}") from err
    return exe


# ---- files of a campaign's server ----------------------------------------------------------------


@dataclass(frozen=True)
class ServerFiles:
    folder: Path  # <campaign>/labelstudio: Label Studio's data folder

    @property
    def pid(self) -> Path:
        return self.folder / "server.pid"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    @property
    def token(self) -> Path:
        return self.folder / "api-token"

    @property
    def password(self) -> Path:
        return self.folder / "admin-password"

    @property
    def port(self) -> Path:
        return self.folder / "server.port"


def files(campaign: Campaign) -> ServerFiles:
    return ServerFiles((campaign.folder / "labelstudio").resolve())


def document_root(campaign: Campaign) -> Path:
    """The folder local-file URLs are relative to: ``labeling.document_root``, else the campaign folder."""
    if campaign.labeling.document_root:
        return campaign.resolve_path(campaign.labeling.document_root).resolve()
    return campaign.folder.resolve()


def make_private(folder: Path) -> None:
    """Create ``folder`` with mode 0700 (or set it) and take every group/other bit off what lies
    directly inside (the database, logs, ``media``, ``export``; deeper files are behind 0700)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    for child in folder.iterdir():
        if child.is_symlink():
            continue
        mode = child.stat().st_mode & 0o7777
        if mode & 0o077:
            os.chmod(child, mode & ~0o077)


def _secret_file(path: Path, nbytes: int) -> str:
    """Read a secret from ``path``, or generate one and write it with mode 0600."""
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    os.chmod(path, 0o600)
    return value


def local_token(campaign: Campaign) -> str | None:
    """The token of the campaign's local server, when it was started here."""
    path = files(campaign).token
    if path.exists():
        value = path.read_text().strip()
        return value or None
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _has_live_thread(pid)  # a zombie child of this process is not alive


def _has_live_thread(pid: int) -> bool:
    """Whether any thread of ``pid`` is not a zombie. The main thread of a process shows ``Z`` while its
    other threads still run (and hold its sockets): the process is alive until every thread is gone."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return Path(f"/proc/{pid}").exists()
    for task in tasks:
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except OSError:
            continue
    return False


def _read_pid(f: ServerFiles) -> int | None:
    try:
        return int(f.pid.read_text().strip())
    except (OSError, ValueError):
        return None


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        r = requests.get(url.rstrip("/") + "/health", timeout=timeout)
        return r.status_code == 200
    except requests.RequestException:
        return False


def port_free(port: int) -> bool:
    """True when no socket listens on 127.0.0.1:``port``. The probe binds with ``SO_REUSEADDR``, as
    servers do, so the closed connections of a server stopped a moment ago (TIME_WAIT) do not make
    the port look taken; a listening socket still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerInfo:
    url: str
    pid: int | None
    running: bool
    healthy: bool
    data_dir: Path
    log: Path
    token_file: Path
    document_root: Path

    def as_dict(self) -> dict:
        return {
            "url": self.url,
            "pid": self.pid,
            "running": self.running,
            "healthy": self.healthy,
            "data_dir": str(self.data_dir),
            "log": str(self.log),
            "token_file": str(self.token_file),
            "document_root": str(self.document_root),
        }


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def status(campaign: Campaign) -> ServerInfo:
    f = files(campaign)
    pid = _read_pid(f)
    running = pid is not None and _pid_alive(pid)
    try:
        port = int(f.port.read_text().strip())
    except (OSError, ValueError):
        port = campaign.labeling.server_port
    url = _url(port)
    return ServerInfo(
        url=url,
        pid=pid if running else None,
        running=running,
        healthy=running and healthy(url),
        data_dir=f.folder,
        log=f.log,
        token_file=f.token,
        document_root=document_root(campaign),
    )


def start(
    campaign: Campaign,
    *,
    port: int | None = None,
    venv: str | Path | None = None,
    timeout: float = 240.0,
    install_missing: bool = True,
) -> ServerInfo:
    """Start the campaign's Label Studio server (or return the running one) and wait for ``/health``.

    ``labeling.server_workers`` > 1 serves it under gunicorn, ``labeling.server_database`` keeps its data in
    PostgreSQL (:mod:`labeling.server_launch`)."""
    current = status(campaign)
    if current.running:
        if current.healthy or _wait_health(current.url, current.pid, timeout):
            current.healthy = True
            return current
        raise LabelStudioInstallError(
            f"Label Studio (pid {current.pid}) runs but {current.url}/health does not answer; see {current.log}"
        )
    if port is None and not campaign.labeling.is_local:
        raise LabelStudioInstallError(
            f"labeling.url = {campaign.labeling.url} is not on this machine: `medloop labelstudio start` runs a "
            "server on 127.0.0.1 only (set labeling.url = \"http://127.0.0.1:<port>\" for a local one)"
        )
    exe = install(venv) if install_missing else executable(venv)
    if not exe.exists():
        raise LabelStudioInstallError(
            f"Label Studio is not installed ({exe} missing); run `medloop labelstudio install`"
        )
    workers = campaign.labeling.server_workers
    if workers > 1:
        install_gunicorn(venv)
    port = port or campaign.labeling.server_port  # one address: the port of labeling.url
    if not port_free(port):
        raise LabelStudioInstallError(f"port {port} on 127.0.0.1 is taken; choose another with --port")
    f = files(campaign)
    make_private(f.folder)
    token = _secret_file(f.token, 20)
    password = _secret_file(f.password, 12)
    root = document_root(campaign)
    env = dict(os.environ)
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(f.folder),
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_USERNAME": ADMIN_USER,
            "LABEL_STUDIO_PASSWORD": password,
            "LABEL_STUDIO_USER_TOKEN": token,
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LOCAL_FILES_DOCUMENT_ROOT": str(root),
            # webhooks to a receiver on 127.0.0.1 (labeling/webhook.py) need this on loopback
            "SSRF_PROTECTION_ENABLED": "false",
            # and an ML backend on 127.0.0.1 (`medloop labelstudio backend`, labeling/ml_backend.py) this
            "ML_BLOCK_LOCAL_IP": "false",
            # Label Studio gives an ML backend 1 s to answer /health and 3 s for /setup: a backend on a
            # busy CPU (training or scoring beside it) misses that and the project shows it disconnected
            "ML_TIMEOUT_HEALTH": "15",
            "ML_TIMEOUT_SETUP": "30",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(server_launch.database_env(campaign.labeling.server_database, os.environ))
    for key in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_URL", "ALL_PROXY", "all_proxy"):
        env.pop(key, None)
    env.update(NO_OUTBOUND_ENV)
    cmd = server_launch.server_command(venv_path(venv), port=port, data_dir=f.folder, workers=workers)
    with os.fdopen(os.open(f.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(f.folder), start_new_session=True, umask=0o077,  # the token database: owner only
        )
    for path, value in ((f.pid, proc.pid), (f.port, port)):
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            fh.write(f"{value}\n")
    url = _url(port)
    if not _wait_health(url, proc.pid, timeout):
        alive = _pid_alive(proc.pid)
        stop(campaign)
        why = "did not answer /health in time" if alive else "exited"
        raise LabelStudioInstallError(f"Label Studio on {url} {why}; see {f.log}")
    return status(campaign)


def _wait_health(url: str, pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return True
        if pid is not None and not _pid_alive(pid):
            return False
        time.sleep(0.5)
    return False


def stop(campaign: Campaign, *, timeout: float = 30.0) -> bool:
    """Stop the campaign's server; returns False when none was running."""
    f = files(campaign)
    pid = _read_pid(f)
    if pid is None or not _pid_alive(pid):
        f.pid.unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)  # started in its own session: pgid == pid
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    # stopped = the leader AND every process of its group gone (Django's runserver serves from a child of
    # the process medloop started: the port is released only when that child has exited too)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (_pid_alive(pid) or _group_members(pid)):
        _reap(pid)
        time.sleep(0.2)
    if _pid_alive(pid) or _group_members(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _reap(pid)
        end = time.monotonic() + 5.0
        while time.monotonic() < end and _group_members(pid):
            time.sleep(0.1)
    try:  # and its port released (a `start` right after must find it free)
        port = int(f.port.read_text().strip())
    except (OSError, ValueError):
        port = None
    end = time.monotonic() + 10.0
    while port is not None and time.monotonic() < end and not port_free(port):
        time.sleep(0.1)
    f.pid.unlink(missing_ok=True)
    return True


def _group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` with a live (not zombie) thread, from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and _has_live_thread(int(entry.name)):  # after the name: state, ppid, pgrp
            out.append(int(entry.name))
    return out


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
