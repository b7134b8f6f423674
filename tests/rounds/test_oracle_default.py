"""``labeling.oracle`` is off unless a campaign asks for it: a round on a campaign that leaves it unset
queues cases for annotators and writes no label from the hidden truth (before: the truth came back as
human labels, author "oracle", or as Label Studio annotations)."""

from __future__ import annotations

from sqlalchemy import func, select
from support import TINY

from medloop.config import LabelingConfig
from medloop.ledger import AnnotationTask, Label, Ledger
from medloop.rounds.orchestrator import run_round


def test_a_round_with_labeling_left_at_its_defaults_writes_no_truth_as_labels(campaign) -> None:
    c = campaign.model_copy(update={"labeling": LabelingConfig()})  # the [labeling] section unset
    assert c.labeling.oracle is False
    out = run_round(c, extras={**TINY, "tracking": False})
    assert out.status == "done"
    led = Ledger.open(c.ledger)
    try:
        with led.reading() as s:
            from_truth = s.scalar(select(func.count()).select_from(Label).where(Label.author == "oracle"))
            tasks = dict(s.execute(select(AnnotationTask.state, func.count()).group_by(AnnotationTask.state)).all())
    finally:
        led.close()
    assert from_truth == 0
    assert tasks and "completed" not in tasks  # queued for people, none answered
    assert out.steps.get("push") == "done"
