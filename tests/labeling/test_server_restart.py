"""The local server: `start` right after `stop` on the same port, and a private data folder."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
import requests

from medloop.config import Campaign
from medloop.labeling import server


def _time_wait_on(port: int) -> None:
    """A real closed connection whose server side lingers in TIME_WAIT on ``port`` (the server
    closed first, as a stopped server does), then no listener."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen()
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = srv.accept()
    conn.close()  # the server side closes first -> TIME_WAIT on 127.0.0.1:port
    client.recv(1)
    client.close()
    srv.close()


def _states(port: int) -> set[str]:
    """TCP states of the sockets bound to 127.0.0.1:``port`` (/proc/net/tcp, hex state codes)."""
    names = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT", "0A": "LISTEN"}
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, st = line.split()[1], line.split()[3]
        if int(local.split(":")[1], 16) == port:
            out.add(names.get(st, st))
    return out


def test_port_probe_is_not_fooled_by_time_wait():
    port = server.free_port()
    _time_wait_on(port)
    assert "TIME_WAIT" in _states(port)
    assert server.port_free(port)  # the old probe (bind without SO_REUSEADDR) said "taken"


def test_port_probe_still_sees_a_listener():
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not server.port_free(s.getsockname()[1])


def test_make_private_tightens_an_existing_folder(tmp_path):
    folder = tmp_path / "labelstudio"
    (folder / "media").mkdir(parents=True)
    (folder / "label_studio.sqlite3").write_text("tokens")
    folder.chmod(0o755)
    (folder / "media").chmod(0o755)
    (folder / "label_studio.sqlite3").chmod(0o644)
    server.make_private(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "media").stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "label_studio.sqlite3").stat().st_mode) == 0o600


@pytest.mark.labelstudio
def test_start_stop_start_on_the_same_port_with_a_private_data_folder(labelstudio_server, tmp_path):
    """A real server: its data folder (the token database) is owner-only, and `start` right after
    `stop` reuses the port although the stopped server's connections linger (TIME_WAIT)."""
    port = server.free_port()
    campaign = Campaign.model_validate({"name": "restart", "root": str(tmp_path / "campaign"),
                                        "labeling": {"url": f"http://127.0.0.1:{port}"}})
    data = server.files(campaign).folder
    data.mkdir(parents=True)  # as an older medloop left it: world-readable
    data.chmod(0o755)
    old = data / "server.log"
    old.write_text("an older log\n")
    old.chmod(0o644)
    try:
        info = server.start(campaign, timeout=900, install_missing=False)
        assert info.healthy and info.url == f"http://127.0.0.1:{port}"
        modes = {child.name: stat.S_IMODE(child.lstat().st_mode) for child in data.iterdir()}
        folder_mode = stat.S_IMODE(data.stat().st_mode)
        token = server.local_token(campaign)
        with requests.Session() as s:  # keep-alive connections the server closes when it stops
            for _ in range(3):
                assert s.get(info.url + "/api/projects", headers={"Authorization": f"Token {token}"},
                             timeout=60).status_code == 200
            assert server.stop(campaign)
            assert "LISTEN" not in _states(port), _states(port)  # every process of the server is gone
        if not _states(port) & {"TIME_WAIT", "FIN_WAIT2", "FIN_WAIT1"}:
            _time_wait_on(port)  # the server's own closed connections may not linger on every kernel
        assert _states(port) & {"TIME_WAIT", "FIN_WAIT2", "FIN_WAIT1"}, _states(port)
        again = server.start(campaign, timeout=900, install_missing=False)  # at once, same port
        assert again.healthy and again.url == info.url
        r = requests.get(again.url + "/api/projects", headers={"Authorization": f"Token {token}"}, timeout=60)
        assert r.status_code == 200  # same data folder, same token
        # the data folder and everything directly in it (the token database, its journal, the token,
        # the log, pid, media, export) is owner-only, after the first start and after the second
        assert "label_studio.sqlite3" in modes and folder_mode == 0o700
        assert {name: oct(m) for name, m in modes.items() if m & 0o077} == {}
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert {c.name: oct(c.lstat().st_mode) for c in data.iterdir() if c.lstat().st_mode & 0o077} == {}
    finally:
        server.stop(campaign)
