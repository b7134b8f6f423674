"""Fixtures shared by every test folder. Area-specific fixtures live in tests/<area>/conftest.py."""

# ---- Label Studio (owned by the labeling area) --------------------------------------------------
import dataclasses as _dc
import os
from pathlib import Path as _Path

import pytest as _pytest


@_dc.dataclass
class LabelStudioServer:
    """A real Label Studio server on 127.0.0.1, started once per test run.

    ``document_root`` is its LOCAL_FILES_DOCUMENT_ROOT: put campaign folders below it
    (``campaign(name)`` does) so that their images are served.
    """

    url: str
    token_file: _Path
    document_root: _Path
    server_campaign: object
    # every name lookup and connection of the server's Python processes (JSON lines, written by an
    # audit hook, see _NET_AUDIT); None for a reused server (MEDLOOP_TEST_LS_ROOT)
    net_audit: _Path | None = None

    @property
    def token(self) -> str:
        return self.token_file.read_text().strip()

    def campaign(self, name: str, **overrides):
        """A campaign whose folder lies below the document root, connected to this server."""
        from medloop.config import Campaign

        data = {
            "name": name,
            "root": str(self.document_root / "campaigns" / name),
            "labeling": {"enabled": True, "url": self.url, "token_env": "MEDLOOP_TEST_LS_TOKEN_NOT_SET",
                         "token_file": str(self.token_file), "project_title": f"test-{name}",
                         "document_root": str(self.document_root)},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return Campaign.model_validate(data)


# sitecustomize.py for the server's Python processes (on PYTHONPATH): a sys.addaudithook that logs every
# name lookup and socket connection (the interpreter raises these audit events for any library:
# requests, urllib3, sentry_sdk, ldclient), so a test can check that nothing leaves 127.0.0.1.
_NET_AUDIT = """
import json, os, sys
_path = os.environ.get("MEDLOOP_NET_AUDIT")
def _audit(event, args):
    if event not in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
                     "socket.sendto"):
        return
    try:
        if event in ("socket.connect", "socket.sendto"):
            addr = args[1]
            host, port = (addr[0], addr[1]) if isinstance(addr, tuple) else (str(addr), None)
        else:
            host, port = args[0], (args[1] if len(args) > 1 else None)
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        line = json.dumps({"pid": os.getpid(), "event": event, "host": host, "port": port}, default=str)
        with open(_path, "a") as fh:
            fh.write(line + "\\n")
    except Exception:
        pass
if _path:
    with open(_path, "a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "event": "audit.start", "argv": sys.argv[:2]}) + "\\n")
    sys.addaudithook(_audit)
"""


@_pytest.fixture(scope="session")
def labelstudio_venv() -> _Path:
    """Label Studio's virtual environment, installed when missing; skip when impossible."""
    from medloop.labeling import server
    from medloop.labeling.errors import LabelStudioInstallError

    venv = server.venv_path()
    if not server.is_installed(venv):
        try:
            server.install(venv)
        except LabelStudioInstallError as err:
            _pytest.skip(f"Label Studio server cannot be installed ({err}); run `medloop labelstudio install`")
    return venv


@_pytest.fixture(scope="session")
def labelstudio_server(tmp_path_factory, labelstudio_venv):
    """Start Label Studio once per test run (installing it when missing); skip when impossible."""
    from medloop.config import Campaign
    from medloop.labeling import server
    from medloop.labeling.errors import LabelStudioInstallError

    venv = labelstudio_venv
    reuse = os.environ.get("MEDLOOP_TEST_LS_ROOT")  # development: a server already started there
    if reuse:
        campaign = Campaign(name="ls-tests", root=reuse)
        info = server.status(campaign)
        if info.healthy:
            yield LabelStudioServer(url=info.url, token_file=info.token_file,
                                    document_root=_Path(reuse).resolve(), server_campaign=campaign)
            return
    root = tmp_path_factory.mktemp("labelstudio")
    campaign = Campaign(name="ls-tests", root=str(root))
    hook = tmp_path_factory.mktemp("ls-net-audit")
    (hook / "sitecustomize.py").write_text(_NET_AUDIT)
    audit = hook / "net-audit.jsonl"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "MEDLOOP_NET_AUDIT")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(hook)] + ([saved["PYTHONPATH"]] if saved["PYTHONPATH"] else []))
    os.environ["MEDLOOP_NET_AUDIT"] = str(audit)
    try:  # the server inherits the environment of this moment; the tests' own processes keep theirs
        info = server.start(campaign, port=server.free_port(), venv=venv, install_missing=False)
    except LabelStudioInstallError as err:
        _pytest.skip(f"Label Studio server cannot be started: {err}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield LabelStudioServer(url=info.url, token_file=info.token_file, document_root=root.resolve(),
                                server_campaign=campaign, net_audit=audit)
    finally:
        server.stop(campaign)


# ---- ledger backends: SQLite and a real, throwaway PostgreSQL server (tests/ledger_backends.py) ----------
import sys as _sys  # noqa: E402

_sys.path.append(str(_Path(__file__).parent))  # after everything else: tests/platform is no `platform`
from ledger_backends import ledger_backend, ledger_url, postgres_server  # noqa: E402, F401  (fixtures)
