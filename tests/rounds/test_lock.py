"""One round at a time per campaign: a second invocation exits with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import write_config

from medloop.rounds.lock import RoundLocked, round_lock

HERE = Path(__file__).parent
PY = sys.executable


def test_lock_in_process_is_exclusive(campaign) -> None:
    with round_lock(campaign):
        with pytest.raises(RoundLocked, match="another round is already running"):
            with round_lock(campaign):
                pass
    with round_lock(campaign):  # released afterwards
        pass


def test_second_cli_invocation_exits_with_clear_message(campaign, tmp_path: Path) -> None:
    cfg = write_config(campaign, tmp_path / "campaign.toml")
    hold = tmp_path / "release"
    first = subprocess.Popen(
        [PY, str(HERE / "round_runner.py"), str(cfg), "--tiny", "--no-tracking", "--hold", str(hold)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "holding").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "first round never reached its sync step"
            time.sleep(0.2)
        second = subprocess.run([PY, "-m", "medloop.cli", "round", "--config", str(cfg)],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 3
        assert "another round is already running" in second.stderr
        assert f"process {first.pid}" in second.stderr
    finally:
        hold.write_text("go")
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert out.split() == ["done", "1"]


def test_lock_released_after_sigkill(campaign, tmp_path: Path) -> None:
    """flock dies with its process: a round killed with SIGKILL does not block the next one."""
    cfg = write_config(campaign, tmp_path / "campaign.toml")
    env = {**os.environ, "MEDLOOP_TEST_CRASH_AT": "sync:before"}
    r = subprocess.run([PY, str(HERE / "round_runner.py"), str(cfg), "--tiny", "--no-tracking"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9
    with round_lock(campaign):
        pass
