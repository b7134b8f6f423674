"""Ledger backends for the tests: SQLite files and a real, throwaway PostgreSQL server.

``postgres_server`` (session) starts a private cluster with Debian's ``postgresql`` binaries
(``initdb`` + ``pg_ctl``): data in a temporary folder, listening on a unix socket in that folder only
(no TCP port), trust authentication, fsync off. As root it runs as the ``postgres`` system user the
package creates (PostgreSQL refuses to run as root). Each test gets a database of its own
(``create_database``; a template database can be copied, which is how a campaign folder is "copied"
on PostgreSQL). Where the binaries are missing the PostgreSQL cases skip with the reason;
``MEDLOOP_TEST_POSTGRES=0`` skips them on purpose.

``ledger_url`` (per test) is parametrized over ``sqlite`` and ``postgresql``: a test taking it runs
once on a SQLite file and once on a fresh PostgreSQL database.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BACKENDS = ("sqlite", "postgresql")
PORT = 5432  # only names the socket file inside the private socket folder; nothing listens on TCP
_names = itertools.count()


def postgres_bin_dir() -> Path | None:
    """The folder of ``initdb`` / ``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
                      if p.parts[-3].isdigit() else 0)
    return versions[-1].parent if versions else None


@dataclass
class PostgresServer:
    """A running throwaway PostgreSQL cluster reached through its unix socket."""

    bin_dir: Path
    root: Path
    run_as: str | None  # a user name when started by root
    _databases: list[str] = field(default_factory=list)

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={PORT}"

    def psql(self, sql: str) -> None:
        """Run one statement as the superuser on the ``postgres`` database (CREATE/DROP DATABASE)."""
        cmd = [str(self.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
               "-p", str(PORT), "-U", "postgres", "-d", "postgres", "-c", sql]
        if not (self.bin_dir / "psql").exists():
            cmd[0] = "psql"
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)

    def create_database(self, prefix: str = "ledger", *, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); returns its name."""
        name = f"{prefix}_{os.getpid()}_{next(_names)}"
        self.psql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        self._databases.append(name)
        return name

    def stop(self) -> None:
        _as_user(self.run_as, [str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate",
                               "-w", "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _as_user(user: str | None, cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)


def start_postgres() -> PostgresServer:
    """Start a private cluster; raises RuntimeError (with the reason) when it cannot."""
    if os.environ.get("MEDLOOP_TEST_POSTGRES", "1") == "0":
        raise RuntimeError("PostgreSQL ledger tests turned off (MEDLOOP_TEST_POSTGRES=0)")
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's `postgresql`")
    run_as = None
    if os.geteuid() == 0:  # postgres refuses to run as root: use the system user the package creates
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root and there is no `postgres` user to run the server as") from None
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root and `runuser` is missing")
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="medloop-pg-"))  # short: a socket path is limited to ~107 bytes
    (root / "socket").mkdir()
    if run_as is not None:
        ids = pwd.getpwnam(run_as)
        for p in (root, root / "socket"):
            os.chown(p, ids.pw_uid, ids.pw_gid)
    try:
        _as_user(run_as, [str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust",
                          "-E", "UTF8", "--locale=C", "--no-sync"])
        opts = (f"-c listen_addresses='' -k {root / 'socket'} -p {PORT} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200")
        _as_user(run_as, [str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-o", opts,
                          "-l", str(root / "server.log"), "-w", "-t", "60", "start"])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        log = (root / "server.log").read_text()[-1500:] if (root / "server.log").exists() else ""
        detail = getattr(err, "stderr", "") or ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL could not be started: {err} {detail} {log}".strip()) from None
    return PostgresServer(bin_dir, root, run_as)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster per test session; skips (with the reason) where it cannot start."""
    try:
        server = start_postgres()
    except RuntimeError as err:
        pytest.skip(str(err))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def ledger_backend(request: pytest.FixtureRequest) -> str:
    """The backend name, ``sqlite`` or ``postgresql`` (PostgreSQL skips where no server can start)."""
    if request.param == "postgresql":
        request.getfixturevalue("postgres_server")
    return str(request.param)


@pytest.fixture
def ledger_url(ledger_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for a new, empty ledger on each backend: a SQLite file, or a fresh PostgreSQL database."""
    if ledger_backend == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.url(server.create_database())
