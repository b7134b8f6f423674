"""run_demo: ingest, then rounds with the oracle, and a round-by-round report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import TINY, tiny_campaign, write_config

from medloop.config import Campaign
from medloop.demo import demo_campaign, run_demo


def test_demo_runs_rounds_and_reports_changes(tmp_path: Path) -> None:
    c = tiny_campaign(tmp_path / "camp")
    printed: list[str] = []
    report = run_demo(c, progress=False, rounds=3, echo=printed.append, extras={**TINY, "tracking": False})
    assert [r["round"] for r in report.rounds] == [1, 2, 3]
    humans = [r["human"] for r in report.rounds]
    assert humans[0] < humans[1] < humans[2]  # the oracle answered each round's queue
    assert [r["mask_gate"] for r in report.rounds] == ["open"] * 3 and all(r["gate"] == "open" for r in report.rounds)
    text = report.summary()
    assert "round by round" in text and "changed: human" in text
    assert len(printed) == 3


def test_demo_profile_only_touches_default_sections() -> None:
    c, notes = demo_campaign(Campaign())
    assert c.compute.epochs == 8 and c.model.width == 8 and len(notes) == 4  # + the oracle
    custom = Campaign.model_validate({"compute": {"epochs": 5}})
    c2, _ = demo_campaign(custom)
    assert c2.compute.epochs == 5 and c2.model.width == 8


def test_demo_sets_the_oracle_unless_the_file_does() -> None:
    c, notes = demo_campaign(Campaign())
    assert c.labeling.oracle and any("labeling.oracle = true" in n for n in notes)
    off, notes = demo_campaign(Campaign.model_validate({"labeling": {"oracle": False}}))
    assert not off.labeling.oracle and not any("oracle" in n for n in notes)


# Ray's and MLflow's log lines as they appeared in `medloop demo` before it was quiet
NOISE = re.compile(r"\b(INFO|WARNING)\b.*(worker\.py|streaming_executor|mlflow|authentication_token)"
                   r"|Started a local Ray instance|\((TrainController|RayTrainWorker|PlacementGroupCleaner) pid="
                   r"|core_worker\.cc|Successfully registered model|Created version")


@pytest.mark.slow  # two real one-round demos (Ray Train, Ray Data scoring, MLflow): ~5 min on 2 busy cores
def test_demo_command_shows_steps_and_tables_and_keeps_log_lines_in_a_file(tmp_path: Path) -> None:
    c = tiny_campaign(tmp_path / "camp", model={"name": "mtunet", "width": 4, "depth": 2},
                      uncertainty={"mc_passes": 2},
                      compute={"num_workers": 1, "epochs": 1, "batch_size": 8, "score_batch_size": 16})
    cfg = write_config(c, tmp_path / "demo.toml")
    medloop = Path(sys.executable).with_name("medloop")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MEDLOOP_CONFIG")}

    def demo(*flags: str) -> str:
        out = subprocess.run([str(medloop), "demo", "--config", str(cfg), "--rounds", "1", *flags], env=env,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout + out.stderr

    quiet = demo()
    lines = quiet.splitlines()
    assert not [ln for ln in lines if NOISE.search(ln)], quiet
    assert len(lines) < 60, quiet  # before: 88 lines for this one round, half of them Ray's and MLflow's
    for step in ("sync", "train", "score", "select", "push", "report"):  # one bar per step
        assert sum(f"round 1  {step}" in ln for ln in lines) == 1, quiet
    assert "round 1: done, class gate open, mask gate open" in quiet  # the round's table
    logs = list((tmp_path / "camp" / "logs").glob("demo-*.log"))
    assert len(logs) == 1 and str(logs[0]) in quiet
    assert "Started a local Ray instance" in logs[0].read_text()  # kept, in the file

    verbose = demo("--verbose")
    assert "Started a local Ray instance" in verbose and NOISE.search(verbose)
    assert "round 2: train" in verbose and "round 2: done" in verbose


def test_demo_on_volumes_writes_nifti_phantoms_and_runs_rounds(tmp_path: Path) -> None:
    """``medloop demo --dataset volumes``: 3D phantoms written as NIfTI files, ingested as volumes, two real
    rounds (in-process training, Ray Data scoring, MLflow) with the oracle answering each queue."""
    import torch

    c = tiny_campaign(tmp_path / "camp", data={"n_samples": 24, "split": [0.5, 0.25, 0.25]},
                      model={"width": 4, "depth": 3}, uncertainty={"mc_passes": 2}, selection={"budget": 3},
                      compute={"num_workers": 0, "epochs": 1, "batch_size": 4, "score_batch_size": 8})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_demo(c, dataset="volumes", progress=False, rounds=2, echo=None)
    finally:
        torch.set_num_threads(threads)
    folder = c.folder / "phantoms3d"
    assert len(list((folder / "images").glob("*.nii.gz"))) == 24 and (folder / "labels.csv").is_file()
    assert report.ingest.volumes and report.ingest.added == 24
    assert [r["round"] for r in report.rounds] == [1, 2] and all(r["status"] == "done" for r in report.rounds)
    assert report.rounds[0]["human"] < report.rounds[1]["human"]  # the oracle answered round 1's queue
    assert "24 volume(s) found, 24 added" in report.summary()
    from medloop.ledger import Ledger, Round

    led = Ledger.open(c.ledger)
    with led.reading() as s:
        metrics = s.get(Round, 2).metrics or {}
    led.close()
    assert {"dice_whole_tumour", "dice_tumour_core"} <= set(metrics)  # the BraTS regions, per round
