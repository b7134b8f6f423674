"""run_demo: ingest, then rounds with the oracle, and a round-by-round report."""

from __future__ import annotations

from pathlib import Path

from support import TINY, tiny_campaign

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
    assert c.compute.epochs == 8 and c.model.width == 8 and len(notes) == 3
    custom = Campaign.model_validate({"compute": {"epochs": 5}})
    c2, _ = demo_campaign(custom)
    assert c2.compute.epochs == 5 and c2.model.width == 8
