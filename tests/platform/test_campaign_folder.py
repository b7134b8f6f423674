"""A user's day: a mistyped campaign folder is refused (never created) by every command but ingest
and demo; ``root`` and the default folder start at the campaign file's folder; ``MEDLOOP_CONFIG`` is
the default ``--config`` of every command; Label Studio's venv does not depend on the working
directory; ``labeling.oracle`` is off unless asked for. Real CLI (typer's runner, or a subprocess
where the command would serve or loop), real SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from medloop.cli import app
from medloop.config import Campaign, load_campaign

runner = CliRunner()
MEDLOOP = Path(sys.executable).with_name("medloop")
# commands that would serve (dashboard) or loop (watch) if they did not stop: run with a time limit
SUBPROCESS = {("dashboard",), ("watch",)}


def leaf_commands(group=None, prefix: tuple[str, ...] = ()):  # noqa: ANN001, ANN201
    """(path, command) of every command of the CLI, sub-commands included (typer's own click types)."""
    group = group or typer.main.get_command(app)
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):  # a group
            yield from leaf_commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


def invoke(path: tuple[str, ...], args: list[str], env: dict[str, str]) -> tuple[int, str]:
    if path in SUBPROCESS:
        full = {**{k: v for k, v in os.environ.items() if k != "MEDLOOP_CONFIG"}, **env}
        try:
            out = subprocess.run([str(MEDLOOP), *path, *args], env=full, capture_output=True, text=True, timeout=90)
        except subprocess.TimeoutExpired:
            return -1, f"{' '.join(path)} did not stop within 90 s"
        return out.returncode, out.stdout + out.stderr
    result = runner.invoke(app, [*path, *args], env=env)
    return result.exit_code, result.output


# ---- a mistyped campaign folder -------------------------------------------------------------------------

READERS = [("status",), ("dashboard",), ("labelstudio", "push"), ("labelstudio", "sync"),
           ("labelstudio", "webhook"), ("tune",), ("round",), ("watch",)]


@pytest.mark.parametrize("path", READERS, ids=" ".join)
def test_a_missing_campaign_is_refused_in_one_line_and_not_created(tmp_path: Path, path: tuple[str, ...]) -> None:
    folder = tmp_path / "campaigns" / "typo"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "typo"\nroot = "{folder}"\n[labeling]\nurl = "http://127.0.0.1:9"\n')
    code, output = invoke(path, ["--config", str(cfg)], {})
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert code == 1, output
    assert len(lines) == 1 and str(folder) in lines[0] and "medloop ingest" in lines[0], output
    assert "Traceback" not in output
    assert not folder.exists() and not (tmp_path / "campaigns").exists()  # nothing created


@pytest.mark.parametrize("path", [("labelstudio", "status"), ("labelstudio", "stop")], ids=" ".join)
def test_label_studio_status_and_stop_create_nothing(tmp_path: Path, path: tuple[str, ...]) -> None:
    folder = tmp_path / "typo"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "typo"\nroot = "{folder}"\n')
    invoke(path, ["--config", str(cfg)], {})
    assert not folder.exists()


def test_an_existing_campaign_still_opens(tmp_path: Path) -> None:  # guard
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "t"\nroot = "{tmp_path / "camp"}"\n[data]\nimage_size = 16\nn_samples = 18\n')
    assert runner.invoke(app, ["ingest", "synthetic", "--config", str(cfg)]).exit_code == 0
    status = runner.invoke(app, ["status", "--config", str(cfg)])
    assert status.exit_code == 0 and "rounds: none yet" in status.output


# ---- MEDLOOP_CONFIG ---------------------------------------------------------------------------------------


def test_every_command_with_a_config_reads_medloop_config(tmp_path: Path) -> None:
    bad = tmp_path / "env-campaign.toml"
    bad.write_text("name = [unclosed\n")  # not TOML: a command that reads it stops at once, naming it
    commands = [(p, c) for p, c in leaf_commands() if any(param.name == "config" for param in c.params)]
    assert len(commands) >= 15, [p for p, _ in commands]
    values = {"fmt": "generic", "path": str(tmp_path / "new.toml")}
    ignored = []
    for path, cmd in commands:
        args = [values.get(p.name or "", "x") for p in cmd.params if p.param_type_name == "argument"]
        for p in cmd.params:  # required options (evaluate --format)
            if p.param_type_name == "option" and p.required:
                args += [p.opts[0], values.get(p.name or "", "x")]
        code, output = invoke(path, args, {"MEDLOOP_CONFIG": str(bad)})
        if code != 2 or f"{bad}: not valid TOML" not in output:
            ignored.append((" ".join(path), code, output[-300:]))
    assert not ignored, ignored
    assert not (tmp_path / "new.toml").exists()


def test_config_flag_wins_over_medloop_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = tmp_path / "chosen.toml"
    chosen.write_text('name = "chosen"\n')
    monkeypatch.setenv("MEDLOOP_CONFIG", str(tmp_path / "missing.toml"))
    assert load_campaign(chosen).name == "chosen"
    monkeypatch.setenv("MEDLOOP_CONFIG", str(chosen))
    assert load_campaign().name == "chosen"
    monkeypatch.setenv("MEDLOOP_CONFIG", "")
    assert load_campaign().name == "demo"  # empty: the defaults


# ---- locations start at the campaign file -------------------------------------------------------------------


def test_root_and_default_folder_are_relative_to_the_campaign_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    files = tmp_path / "project" / "campaigns"
    files.mkdir(parents=True)
    (files / "rel.toml").write_text('name = "rel"\nroot = "runs/rel"\n')
    (files / "plain.toml").write_text('name = "plain"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_campaign(Path("../project/campaigns/rel.toml")).folder == files / "runs" / "rel"
    assert load_campaign(files / "plain.toml").folder == files / ".medloop" / "plain"
    assert load_campaign(files / "plain.toml").ledger == f"sqlite:///{files / '.medloop' / 'plain' / 'ledger.db'}"
    assert Campaign().folder == Path(".medloop") / "demo"  # no file: the working directory, as before


def test_ingest_from_another_directory_writes_next_to_the_campaign_file(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    files = tmp_path / "campaigns"
    files.mkdir()
    cfg = files / "c.toml"
    cfg.write_text('name = "here"\n[data]\nimage_size = 16\nn_samples = 18\n')
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["ingest", "synthetic", "--config", "campaigns/c.toml"]).exit_code == 0
    assert (files / ".medloop" / "here" / "ledger.db").is_file()
    assert not (tmp_path / ".medloop").exists()
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    status = runner.invoke(app, ["status"], env={"MEDLOOP_CONFIG": str(cfg)})
    assert status.exit_code == 0 and "classes (hidden truth): benign" in status.output  # the ingested campaign
    assert not (other / ".medloop").exists()


def test_label_studio_venv_does_not_depend_on_the_working_directory(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from medloop.labeling.server import venv_path

    monkeypatch.delenv("MEDLOOP_LS_VENV", raising=False)
    seen = set()
    for where in (tmp_path, Path("/")):
        monkeypatch.chdir(where)
        seen.add(venv_path())
    assert len(seen) == 1 and next(iter(seen)).is_absolute()
    if sys.prefix != sys.base_prefix:  # medloop in a virtual environment: Label Studio's beside it
        assert seen == {Path(sys.prefix).resolve().parent / ".medloop" / "labelstudio-venv"}
    monkeypatch.setenv("MEDLOOP_LS_VENV", "ls-venv")
    assert venv_path() == Path("/") / "ls-venv"  # a relative setting is made absolute once, here


# ---- the oracle --------------------------------------------------------------------------------------------


def test_oracle_is_off_by_default_and_in_new_campaign_files(tmp_path: Path) -> None:
    assert Campaign().labeling.oracle is False
    target = tmp_path / "campaign.toml"
    assert runner.invoke(app, ["init", str(target)]).exit_code == 0
    text = target.read_text()
    assert "oracle = false" in text and load_campaign(target).labeling.oracle is False
