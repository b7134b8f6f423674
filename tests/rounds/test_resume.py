"""kill -9 at every step, then resume: the final ledger equals an uninterrupted round's.

The crash is caused on purpose: MEDLOOP_TEST_CRASH_AT=<step>:<before|after-commit> makes the
orchestrator send SIGKILL to its own process (``os.kill(os.getpid(), signal.SIGKILL)``) right after
the step is marked running ("before") or right after its result is committed ("after-commit").
The round runs in a real subprocess (round_runner.py); the resume runs in this test process.
Training and scoring are the small deterministic stand-ins of support.py, so every difference in
the final ledger comes from the orchestrator. The report step runs with real MLflow tracking.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import TINY, ingest_synthetic, ledger_snapshot, tiny_campaign, write_config

from medloop.ledger.schema import STEPS
from medloop.rounds.orchestrator import run_round

HERE = Path(__file__).parent
CASES = [(step, when) for step in STEPS for when in ("before", "after-commit")]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ingested campaign folder, copied for every case (ingesting is the slow part)."""
    root = tmp_path_factory.mktemp("template") / "camp"
    ingest_synthetic(tiny_campaign(root))
    return root


@pytest.fixture(scope="module")
def baseline(template: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("baseline") / "camp"
    shutil.copytree(template, root)
    c = tiny_campaign(root)
    out = run_round(c, extras={**TINY, "tracking": False})
    assert out.status == "done"
    snap = ledger_snapshot(c)
    assert snap["tasks"] and snap["selections"] and any(lab[1] == "pseudo" for lab in snap["labels"])
    assert any(lab[4] == "oracle" for lab in snap["labels"])
    return snap


@pytest.mark.parametrize("step,when", CASES, ids=[f"{s}-{w}" for s, w in CASES])
def test_kill9_then_resume_matches_uninterrupted(step: str, when: str, template: Path, baseline: dict,
                                                 tmp_path: Path) -> None:
    root = tmp_path / "camp"
    shutil.copytree(template, root)
    c = tiny_campaign(root)
    cfg = write_config(c, tmp_path / "campaign.toml")
    track = step == "report"
    cmd = [sys.executable, str(HERE / "round_runner.py"), str(cfg), "--tiny"] + ([] if track else ["--no-tracking"])
    env = {**os.environ, "MEDLOOP_TEST_CRASH_AT": f"{step}:{when}"}
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    states = dict((s, st) for r, s, st in ledger_snapshot(c)["steps"] if r == 1)
    assert states[step] == ("running" if when == "before" else "done")

    out = run_round(c, extras={**TINY, "tracking": track, "log_model": False})
    assert out.status == "done" and out.round_id == 1 and out.resumed
    assert ledger_snapshot(c) == baseline

    if track:
        from medloop.tracking import Tracker

        runs = Tracker(c).round_runs(1)
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and len(runs) == 4  # one parent + train/score/select, no leftovers
