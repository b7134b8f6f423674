"""One address for Label Studio: `labelstudio start`, push and sync use labeling.url (labeling.port is
a shorthand for a local URL); a contradiction is refused at load, naming both keys. No server needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medloop.config import ConfigError, load_campaign, parse_campaign


def test_port_alone_gives_the_url_push_and_sync_use(tmp_path: Path) -> None:
    from medloop.labeling import server
    from medloop.labeling.client import connect

    c = parse_campaign({"root": str(tmp_path), "labeling": {"port": 8093, "token_file": str(tmp_path / "t")}})
    assert c.labeling.url == "http://127.0.0.1:8093" and c.labeling.server_port == 8093
    (tmp_path / "t").write_text("x\n")
    assert connect(c).url == "http://127.0.0.1:8093"  # push and sync
    assert server.status(c).url == "http://127.0.0.1:8093"  # start / status (no server running)


def test_url_alone_sets_the_port_of_start(tmp_path: Path) -> None:
    c = parse_campaign({"root": str(tmp_path), "labeling": {"url": "http://127.0.0.1:8111"}})
    assert c.labeling.port is None and c.labeling.server_port == 8111 and c.labeling.is_local
    assert parse_campaign({"labeling": {"url": "http://127.0.0.1:8111", "port": 8111}}).labeling.server_port == 8111
    remote = parse_campaign({"labeling": {"url": "https://labelstudio.example.org"}}).labeling
    assert remote.server_port == 443 and not remote.is_local


def test_contradiction_is_refused_at_load_naming_both_keys(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[labeling]\nurl = "http://127.0.0.1:8080"\nport = 8093\n')
    with pytest.raises(ConfigError) as err:
        load_campaign(f)
    msg = str(err.value)
    assert "labeling.port = 8093" in msg and "labeling.url = 'http://127.0.0.1:8080'" in msg
    assert "(got" not in msg  # the cross-check's own sentence, not a dump of the section
    with pytest.raises(ConfigError, match="labeling.url: expected an http"):
        parse_campaign({"labeling": {"url": "127.0.0.1:8080"}})


def test_start_refuses_a_remote_url_and_cli_refuses_a_contradicting_port(tmp_path: Path) -> None:
    from medloop.cli import app
    from medloop.labeling import server
    from medloop.labeling.errors import LabelStudioInstallError

    remote = parse_campaign({"root": str(tmp_path / "r"), "labeling": {"url": "https://ls.example.org"}})
    with pytest.raises(LabelStudioInstallError, match="not on this machine"):
        server.start(remote, install_missing=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'root = "{tmp_path / "c"}"\n[labeling]\nport = 8093\n')
    out = CliRunner().invoke(app, ["labelstudio", "start", "-c", str(cfg), "--port", "8080"])
    assert out.exit_code == 1
    assert "--port 8080 contradicts labeling.url = http://127.0.0.1:8093" in out.output
