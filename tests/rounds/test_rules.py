"""Triggers, stopping rules, the calibration gate, the oracle path and the scheduler."""

from __future__ import annotations

import math

import pytest
from sqlalchemy import func, select
from support import TINY

from medloop.ledger import AnnotationTask, Label, Ledger, Round, RoundStep, Selection
from medloop.rounds.orchestrator import run_round
from medloop.rounds.scheduler import parse_every, watch
from medloop.rounds.stopping import no_gain


def _run(campaign, **kw):
    return run_round(campaign, extras={**TINY, "tracking": False}, **kw)


def _count(campaign, model, *where) -> int:
    led = Ledger.open(campaign.ledger)
    try:
        with led.reading() as s:
            return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)
    finally:
        led.close()


def test_trigger_needs_new_human_labels_or_force(campaign) -> None:
    c = campaign.model_copy(update={"selection": campaign.selection.model_copy(update={"min_new_labels": 1000})})
    assert _run(c).status == "done"  # the first round always runs
    out = _run(c)
    assert out.status == "not-triggered"
    assert "need 1000" in out.message and "--force" in out.message
    assert _count(c, Round) == 1
    forced = _run(c, force=True)
    assert forced.status == "done" and forced.round_id == 2


def test_trigger_counts_each_label_once(campaign) -> None:
    answered = None
    c = campaign.model_copy(update={"selection": campaign.selection.model_copy(update={"min_new_labels": 1})})
    assert _run(c).status == "done"
    answered = _count(c, Label, Label.author == "oracle")
    assert answered > 0  # the oracle answered round 1's queue -> new labels for round 2
    assert _run(c).status == "done"
    led = Ledger.open(c.ledger)
    with led.reading() as s:
        notes = [r.notes["trigger"] for r in s.scalars(select(Round).order_by(Round.id))]
    led.close()
    assert notes[1]["new_labels"] == answered
    assert notes[1]["new_labels"] != notes[0]["new_labels"] or notes[0]["new_labels"] == 0


def test_calibration_gate_blocks_pseudo_labels(campaign) -> None:
    strict = campaign.model_copy(update={"selection": campaign.selection.model_copy(update={"max_ece": 0.0})})
    out = _run(strict)
    assert out.status == "done"
    assert _count(strict, Label, Label.kind == "pseudo") == 0
    assert _count(strict, Selection, Selection.decision == "pseudo") == 0
    assert _count(strict, AnnotationTask) > 0  # the queue still goes out
    led = Ledger.open(strict.ledger)
    with led.reading() as s:
        gate = s.get(Round, 1).notes["gate"]
    led.close()
    assert "max_ece" in gate and "no pseudo-labels" in gate


def test_mask_only_pseudo_labels_leave_the_class_to_annotators(campaign) -> None:
    """Every pool mask is pseudo-labelled but no class is: the uncertain classes still fill the queue,
    and a case picked for the audit is not queued a second time."""
    sel = campaign.selection.model_copy(update={"tau_c": 0.99, "mask_gate": 1.0, "pixel_tau_u": 1.0,
                                                "audit_fraction": 0.5, "budget": 4})
    c = campaign.model_copy(update={"selection": sel})
    assert _run(c).status == "done"
    assert _count(c, Label, Label.kind == "pseudo", Label.class_name.is_not(None)) == 0
    masks_only = _count(c, Selection, Selection.decision == "pseudo", Selection.target == "mask")
    assert masks_only > 0
    assert _count(c, Selection, Selection.decision == "queue") == 4
    audits = _count(c, Selection, Selection.decision == "audit")
    assert audits == math.ceil(0.5 * masks_only)
    led = Ledger.open(c.ledger)
    with led.reading() as s:
        per_sample = s.execute(select(AnnotationTask.sample_id, func.count()).group_by(AnnotationTask.sample_id)).all()
    led.close()
    assert len(per_sample) == 4 + audits and all(n == 1 for _, n in per_sample)


def test_segmentation_gate_keeps_masks_out_below_min_val_dice(campaign) -> None:
    """The stand-in trainer reports validation Dice 0.5 in round 1: min_val_dice 0.6 closes pseudo-masks
    (class pseudo-labels still flow) and the round's notes say why."""
    sel = campaign.selection.model_copy(update={"min_val_dice": 0.6, "mask_gate": 1.0, "pixel_tau_u": 1.0})
    c = campaign.model_copy(update={"selection": sel})
    assert _run(c).status == "done"
    assert _count(c, Label, Label.kind == "pseudo", Label.mask_path.is_not(None)) == 0
    assert _count(c, Label, Label.kind == "pseudo", Label.class_name.is_not(None)) > 0
    led = Ledger.open(c.ledger)
    with led.reading() as s:
        note = s.get(Round, 1).notes["seg_gate"]
    led.close()
    assert note == "validation Dice 0.5000 < min_val_dice 0.6000: no pseudo-masks this round"
    opened = campaign.model_copy(update={"selection": sel.model_copy(update={"min_val_dice": 0.5}),
                                         "root": str(campaign.folder.parent / "camp-open")})
    from support import ingest_synthetic

    ingest_synthetic(opened)
    assert _run(opened).status == "done"
    assert _count(opened, Label, Label.kind == "pseudo", Label.mask_path.is_not(None)) > 0


def test_gate_open_adds_pseudo_labels(campaign) -> None:
    assert _run(campaign).status == "done"
    assert _count(campaign, Label, Label.kind == "pseudo", Label.active.is_(True)) > 0


def test_a_human_label_arriving_during_select_wins_over_its_pseudo_label(campaign, monkeypatch) -> None:
    """A human label that lands after the select step read the scores (a Label Studio webhook sync
    racing the round) wins at write time: no pseudo-label, no ``pseudo`` selection row for that case,
    counted in ``skipped_human``; the other pseudo-labels are written. The race is made certain by
    adding the label in the select step's own transaction, just before its pseudo-labels are written
    (the timing of a real race cannot be caused on demand)."""
    from medloop.ledger import add_human_label
    from medloop.rounds.steps import select as select_module

    raced: list[int] = []
    real = select_module.add_pseudo_labels

    def with_a_late_human_label(session, rows, **kw):  # noqa: ANN001, ANN202
        raced.extend(r.sample_id for r in rows[:2])
        for sid in raced:
            add_human_label(session, sid, class_name="benign", mask_path=None, author="late annotator")
        return real(session, rows, **kw)

    monkeypatch.setattr(select_module, "add_pseudo_labels", with_a_late_human_label)
    assert _run(campaign).status == "done" and len(raced) == 2
    led = Ledger.open(campaign.ledger)
    with led.reading() as s:
        detail = s.get(RoundStep, (1, "select")).detail
        for sid in raced:
            kinds = s.execute(select(Label.kind, Label.active).where(Label.sample_id == sid)).all()
            assert ("human", True) in kinds and not any(k == "pseudo" and a for k, a in kinds)
            assert s.scalar(select(func.count()).select_from(Selection).where(
                Selection.sample_id == sid, Selection.decision == "pseudo")) == 0
        # every pseudo-label the step wrote (the oracle's answers to the audit retire some of them since)
        written = s.scalar(select(func.count()).select_from(Label).where(Label.kind == "pseudo", Label.round_id == 1))
    led.close()
    assert detail["skipped_human"] == 2
    assert detail["pseudo_labels"] == written > 0


def test_oracle_answers_queue_directly_as_human_labels(campaign) -> None:
    _run(campaign)
    tasks = _count(campaign, AnnotationTask)
    assert tasks > 0
    assert _count(campaign, AnnotationTask, AnnotationTask.state == "completed") == tasks
    led = Ledger.open(campaign.ledger)
    with led.reading() as s:
        oracle = s.scalars(select(Label).where(Label.author == "oracle")).all()
        for lab in oracle:
            truth = s.scalars(select(Label).where(Label.sample_id == lab.sample_id, Label.kind == "truth")).one()
            assert lab.kind == "human" and lab.class_name == truth.class_name and lab.mask_path == truth.mask_path
            # a human label is never overwritten by a pseudo-label afterwards
            assert not s.scalars(select(Label).where(Label.sample_id == lab.sample_id, Label.kind == "pseudo",
                                                     Label.active.is_(True))).all()
    led.close()
    assert len(oracle) == tasks


def test_without_oracle_tasks_stay_queued(campaign) -> None:
    c = campaign.model_copy(update={"labeling": campaign.labeling.model_copy(update={"oracle": False})})
    _run(c)
    assert _count(c, AnnotationTask, AnnotationTask.state == "intent") == _count(c, AnnotationTask) > 0
    assert _count(c, Label, Label.author == "oracle") == 0


def test_stopping_rule_total_budget(campaign) -> None:
    c = campaign.model_copy(update={"selection": campaign.selection.model_copy(update={"total_budget": 1})})
    assert _run(c).status == "done"
    out = _run(c)
    assert out.status == "stopped" and "annotation budget spent" in out.message


def test_labelstudio_unreachable_push_fails_and_keeps_state(campaign, monkeypatch) -> None:
    from medloop.rounds.orchestrator import RoundStepFailed

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret-token-not-logged")
    c = campaign.model_copy(update={"labeling": campaign.labeling.model_copy(
        update={"enabled": True, "url": "http://127.0.0.1:9"})})
    with pytest.raises(RoundStepFailed, match="push") as info:
        _run(c)
    assert "Label Studio unreachable" in str(info.value)
    assert "secret-token-not-logged" not in str(info.value)
    intents = _count(c, AnnotationTask, AnnotationTask.state == "intent")
    assert intents > 0  # select's results stay committed
    with pytest.raises(RoundStepFailed, match="push"):  # the retry resumes at push, adds nothing
        _run(c)
    assert _count(c, AnnotationTask) == intents
    assert _count(c, Round) == 1


def test_no_gain_rule() -> None:
    assert not no_gain([0.5, 0.6, 0.7], 2)
    assert no_gain([0.5, 0.7, 0.6, 0.65], 2)
    assert not no_gain([0.5], 3)


def test_parse_every_and_watch(campaign) -> None:
    assert parse_every("6h") == 21600 and parse_every("1h30m") == 5400 and parse_every("90s") == 90
    with pytest.raises(ValueError, match="duration"):
        parse_every("soon")
    slept: list[float] = []
    outs = watch(campaign, 5.0, max_rounds=2, run=lambda c: _run(c), sleep=slept.append, echo=lambda m: None)
    assert [o.status for o in outs] == ["done", "done"] and slept == [5.0]


def test_distribution_alignment_in_the_select_step(campaign) -> None:
    """``selection.distribution_alignment = true``: the step decides on the pool's probabilities aligned to
    the human class ratio (the same pure function, on the round's own stored predictions), says how the pool
    was predicted before and after, and records the option with every pseudo-label it writes."""
    import numpy as np

    from medloop.rounds.scores import human_class_counts, load_scores
    from medloop.selection.balance import align_to_prior

    c = campaign.model_copy(update={"selection": campaign.selection.model_copy(
        update={"distribution_alignment": True, "max_ece": 1.0})})
    assert _run(c).status == "done"
    classes = c.data.classes
    led = Ledger.open(c.ledger)
    with led.reading() as s:
        detail = s.get(RoundStep, (1, "select")).detail
        version = s.get(RoundStep, (1, "train")).detail["model_version"]
        pool = load_scores(s, version, "pool", len(classes))
        # the counts the step saw: the oracle's answers came after it
        counts = np.asarray(detail["human_class_counts"])
        thresholds = s.scalars(select(Label.thresholds).where(Label.kind == "pseudo")).all()
        answered = s.scalars(select(Label.sample_id).where(Label.author == "oracle")).all()  # after the step
        scored = dict(s.execute(select(Selection.sample_id, Selection.score).where(
            Selection.round_id == 1, Selection.decision == "pseudo")).all())
        assert human_class_counts(s, classes).sum() == counts.sum() + len(answered) > 0
    led.close()
    unlabeled = ~pool.has_human | np.isin(pool.sample_ids, answered)
    model = np.bincount(pool.arrays["pred_class"][unlabeled].astype(int), minlength=len(classes))
    aligned_probs = align_to_prior(pool.arrays["probs"], counts)
    aligned = aligned_probs.argmax(axis=1)
    decided = np.bincount(aligned[unlabeled], minlength=len(classes))
    # a pseudo-label's recorded score is the aligned confidence the policy judged, not the model's own
    row = {int(sid): i for i, sid in enumerate(pool.sample_ids)}
    assert scored
    for sid, score in scored.items():
        assert score == pytest.approx(aligned_probs[row[sid]].max())
        assert abs(score - pool.arrays["confidence"][row[sid]]) > 1e-6
    assert detail["pool_predicted_per_class"] == {
        "model": dict(zip(classes, model.tolist(), strict=True)),
        "decided": dict(zip(classes, decided.tolist(), strict=True)),
    }
    assert detail["thresholds"]["distribution_alignment"] is True
    assert thresholds and all(t["distribution_alignment"] is True for t in thresholds)

