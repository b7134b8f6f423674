"""The CLI as a user sees it (typer's CliRunner), and the `platform` shadowing check (subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medloop.cli import app
from medloop.config import Campaign, load_campaign

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _config(tmp_path: Path, extra: str = "") -> Path:
    f = tmp_path / "c.toml"
    f.write_text(f'name = "t"\nroot = "{tmp_path / "camp"}"\n[data]\nimage_size = 16\nn_samples = 18\n{extra}')
    return f


def test_stdlib_platform_not_shadowed() -> None:
    code = "import platform, torch, ray, mlflow, medloop; print(platform.system())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in {"Linux", "Darwin", "Windows"}


@pytest.mark.parametrize("command", ["init", "ingest", "status", "demo"])
def test_help_everywhere(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "--config" in result.output


def test_init_writes_defaults_and_refuses_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "campaign.toml"
    assert runner.invoke(app, ["init", str(target)]).exit_code == 0
    assert load_campaign(target).model_dump() == Campaign().model_dump()
    again = runner.invoke(app, ["init", str(target)])
    assert again.exit_code == 1 and "already exists" in again.output


def test_config_error_exits_2_without_traceback(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[compute]\nepochs = 'x'\nbogus = 1\n")
    result = runner.invoke(app, ["status", "--config", str(f)])
    assert result.exit_code == 2
    assert "compute.epochs" in result.output and "integer" in result.output
    assert "compute.bogus: unknown key" in result.output
    assert "Traceback" not in result.output


def test_ingest_status_and_demo(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    result = runner.invoke(app, ["ingest", "synthetic", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "18 case(s) found, 18 added" in result.output
    status = runner.invoke(app, ["status", "--config", str(cfg)])
    assert status.exit_code == 0
    assert "pool" in status.output and "rounds: none yet" in status.output
    assert "quarantined annotations: 0" in status.output
    # --rounds 0: the demo's ingest + status path; its rounds are tested in tests/rounds/test_demo.py
    demo = runner.invoke(app, ["demo", "--config", str(cfg), "--rounds", "0"])
    assert demo.exit_code == 0 and "0 added, 18 already present" in demo.output
    assert "round by round" not in demo.output and "rounds: none yet" in demo.output


def test_ingest_bad_data_exits_1_and_names_file(tmp_path: Path, lay) -> None:
    root = lay.write_generic(tmp_path / "g", n=6, labels=["benign", "x-ray", "normal", "benign", "malignant", ""])
    cfg = _config(tmp_path)
    result = runner.invoke(app, ["ingest", "generic", str(root), "--config", str(cfg)])
    assert result.exit_code == 1 and "case1.png" in result.output and "unknown class 'x-ray'" in result.output
    ok = runner.invoke(app, ["ingest", "generic", str(root), "--config", str(cfg), "--skip-bad"])
    assert ok.exit_code == 0 and "5 added" in ok.output and "skipped" in ok.output


def test_ingest_needs_path_for_busi(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", "busi", "--config", str(_config(tmp_path))])
    assert result.exit_code == 1 and "a dataset path is needed" in result.output


def test_status_shows_rounds_and_quarantine(tmp_path: Path) -> None:
    from medloop.ledger import Ledger, Quarantine, Round, RoundStep

    cfg = _config(tmp_path)
    ledger = Ledger.open(load_campaign(cfg).ledger)
    with ledger.transaction() as s:
        s.add(Round(id=1, status="done"))
        s.flush()
        s.add_all([RoundStep(round_id=1, step="train", state="done"),
                   RoundStep(round_id=1, step="score", state="failed")])
        s.add_all([Quarantine(ls_annotation_id=i, reason="empty brush mask") for i in range(2)])
        s.add(Quarantine(ls_annotation_id=9, reason="unknown class 'cyst'"))
    ledger.close()
    result = runner.invoke(app, ["status", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "train:done" in result.output and "score:failed" in result.output
    assert "quarantined annotations: 3" in result.output and "2 x empty brush mask" in result.output
