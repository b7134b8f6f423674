"""AppTest on every page of the dashboard: what a user sees, against a campaign in a real ledger + MLflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from campaign_fixture import build_campaign
from conftest import APP, file_fingerprint
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from medloop.config import load_campaign
from medloop.ledger.schema import AnnotationTask, Label, Round, Sample
from medloop.ledger.store import Ledger

PAGES = ["Overview", "Calibration", "Selection", "Annotation", "Sample explorer"]
CURVE_TITLE = "Label efficiency: validation metrics vs human labels"
LABEL_CURVE_CAPTION = (
    "Label efficiency: each point is a round's model, its validation Dice and accuracy against the human "
    "labels it used (train + validation, test never counted); the bars show what each round trained on."
)


def run_app(config: Path, monkeypatch: pytest.MonkeyPatch, page: str = "Overview") -> AppTest:
    monkeypatch.setenv("MEDLOOP_CONFIG", str(config))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    if page != "Overview":
        at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def charts(at: AppTest) -> list[dict]:
    return [json.loads(e.proto.spec) for e in at.get("vega_lite_chart")]


def chart_rows(at: AppTest, title: str):  # noqa: ANN201 - the data a chart was given, as a DataFrame
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    element = next(e for e in at.get("vega_lite_chart") if json.loads(e.proto.spec).get("title") == title)
    return convert_arrow_bytes_to_pandas_df(element.proto.datasets[0].data.data)


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("info", "warning", "error", "caption", "markdown") for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def ledger_facts(config: Path) -> dict:
    campaign = load_campaign(config)
    ledger = Ledger.open(campaign.ledger, create=False)
    try:
        with ledger.reading() as s:
            rounds = s.scalars(select(Round).order_by(Round.id)).all()
            return {
                "samples": s.scalar(select(func.count()).select_from(Sample)),
                "rounds": len(rounds),
                "last_ece": (rounds[-1].metrics or {}).get("ece") if rounds else None,
                "last_seg_ece": (rounds[-1].metrics or {}).get("seg_ece") if rounds else None,
                "pseudo": s.scalar(select(func.count()).select_from(Label).where(Label.kind == "pseudo")),
                "open_tasks": s.scalar(
                    select(func.count())
                    .select_from(AnnotationTask)
                    .where(AnnotationTask.state.in_(("intent", "pushed")))
                ),
                "done_tasks": s.scalar(
                    select(func.count()).select_from(AnnotationTask).where(AnnotationTask.state == "completed")
                ),
            }
    finally:
        ledger.close()


# ---- every page on the session campaign (a real 2-round run when available) ---------------------------


def test_overview(campaign_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = ledger_facts(campaign_config)
    at = run_app(campaign_config, monkeypatch)
    assert [h.value for h in at.header] == ["Overview"]
    m = metrics(at)
    assert m["Samples"] == f"{facts['samples']:,}"
    assert m["Rounds"] == str(facts["rounds"]) == "2"
    assert m["Open annotation queue"] == str(facts["open_tasks"])
    assert "Champion model" in [h.value for h in at.subheader]
    titles = [c.get("title") for c in charts(at)]
    assert "Round steps" in titles and "Pool size per round by label kind" in titles
    steps = next(c for c in charts(at) if c.get("title") == "Round steps")
    assert steps["encoding"]["x"]["title"] == "step"
    # the label-efficiency curve and what each round trained on open the page, with their caption
    assert titles[:2] == [CURVE_TITLE, "What each round trained on"]
    curve = charts(at)[0]
    assert curve["encoding"]["x"]["field"] == "human_labels"
    assert curve["encoding"]["color"]["scale"]["domain"] == ["val Dice", "val accuracy"]
    assert LABEL_CURVE_CAPTION in [c.value for c in at.caption]
    rows = chart_rows(at, CURVE_TITLE)
    assert rows["round"].tolist() == list(range(1, facts["rounds"] + 1))
    assert rows["human_labels"].notna().all() and rows["val_dice"].notna().any()


def test_calibration(campaign_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = ledger_facts(campaign_config)
    at = run_app(campaign_config, monkeypatch, "Calibration")
    assert [h.value for h in at.header] == ["Calibration"]
    assert metrics(at)["ECE (round 2)"] == f"{facts['last_ece']:.4f}"
    titles = [c.get("title") for c in charts(at)]
    assert "Reliability, classification, round 2" in titles
    assert "Calibration over rounds" in titles
    rel = next(c for c in charts(at) if c.get("title") == "Reliability, classification, round 2")
    assert rel["layer"][1]["encoding"]["x"]["title"] == "mean confidence"
    at.radio(key="cal_task").set_value("seg").run()
    assert not at.exception
    assert "Reliability, segmentation, round 2" in [c.get("title") for c in charts(at)]
    assert metrics(at)["Pixel ECE (round 2)"] == f"{facts['last_seg_ece']:.4f}"


def test_selection(campaign_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = ledger_facts(campaign_config)
    at = run_app(campaign_config, monkeypatch, "Selection")
    assert [h.value for h in at.header] == ["Selection"]
    assert metrics(at)["Pseudo-labels (all rounds)"] == str(facts["pseudo"])
    assert "Thresholds in force" in [h.value for h in at.subheader]
    campaign = load_campaign(campaign_config)
    assert f"tau_c = **{campaign.selection.tau_c:g}**" in texts(at)
    if facts["pseudo"]:
        assert "Pseudo-labels per class per round" in [c.get("title") for c in charts(at)]


def test_annotation(campaign_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = ledger_facts(campaign_config)
    at = run_app(campaign_config, monkeypatch, "Annotation")
    assert [h.value for h in at.header] == ["Annotation"]
    m = metrics(at)
    assert m["Queue (waiting now)"] == str(facts["open_tasks"])
    assert m["Done"] == str(facts["done_tasks"])


def test_sample_explorer(campaign_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_app(campaign_config, monkeypatch, "Sample explorer")
    assert [h.value for h in at.header] == ["Sample explorer"]
    images = at.get("image")
    assert images, texts(at)
    assert len(images[0].proto.imgs) == 2  # overlay + uncertainty heat map
    assert "Outlines: human mask (green)" in texts(at)


# ---- exact numbers on the hand-filled campaign -----------------------------------------------------------


def test_hand_campaign_numbers(hand_campaign: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = run_app(hand_campaign, monkeypatch, "Annotation")
    m = metrics(at)
    # round 1 queued 4 (3 answered, 1 skipped) + 1 audit each round; round 2's 4 still pushed
    assert (m["Queue (waiting now)"], m["Done"], m["Skipped"]) == ("4", "5", "1")
    assert m["Kept the pre-annotation (all rounds)"].endswith("%")
    at.sidebar.radio(key="page").set_value("Selection").run()
    assert not at.exception
    assert metrics(at)["Audit precision (latest)"] == "100.0%"
    assert "PL / CPL / UPS comparison" in [h.value for h in at.subheader]  # ups and cpl were both run
    comparison = next(c for c in charts(at) if c.get("title") == "Pseudo-labels by policy")
    assert comparison["encoding"]["y"]["title"] == "pseudo-labels (samples)"


def test_hand_campaign_label_curve(hand_campaign: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Overview's curve carries the exact numbers of the hand-filled campaign (round 1 old-style)."""
    at = run_app(hand_campaign, monkeypatch)
    rows = chart_rows(at, CURVE_TITLE).set_index("round")
    assert rows["human_labels"].tolist() == [22, 26]
    assert rows["val_dice"].tolist() == pytest.approx([0.6, 0.7])
    assert rows["val_accuracy"].tolist() == pytest.approx([0.65, 0.75])
    assert rows.loc[2, "trained_txt"] == "human 14 · pseudo 19 · unlabeled 0 (validation 12)"
    assert rows.loc[1, "trained_txt"] == "human 10 · pseudo 0 · unlabeled — (validation 12)"
    assert rows["composition"].tolist() == ["reconstructed", "recorded"]
    bars = next(c for c in charts(at) if c.get("title") == "What each round trained on")
    assert bars["encoding"]["x"]["field"] == "round"
    assert "Round 1: no `trained_on` recorded (older ledger)" in texts(at)
    table = next(d.value for d in at.dataframe if "human_labels" in d.value.columns)
    assert table["pseudo"].tolist() == [0, 19]


def test_explorer_filters_and_pages(hand_campaign: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    campaign = load_campaign(hand_campaign)
    at = run_app(hand_campaign, monkeypatch, "Sample explorer")
    at.selectbox(key="ex_round").set_value(1).run()
    at.selectbox(key="ex_decision").set_value("pseudo").run()
    ledger = Ledger.open(campaign.ledger, create=False)
    with ledger.reading() as s:
        n = s.scalar(select(func.count()).select_from(Label).where(Label.kind == "pseudo", Label.round_id == 1))
    ledger.close()
    caption = next(c.value for c in at.caption if "samples; showing" in c.value)
    assert caption.startswith(f"{n} samples; showing 1–12")
    assert len(at.get("image")) == 12
    at.number_input(key="ex_page").set_value(2).run()
    assert not at.exception
    assert len(at.get("image")) == n - 12
    assert "pseudo: " in texts(at) and "· pseudo ·" in texts(at)
    at.selectbox(key="ex_decision").set_value("rejected").run()
    at.selectbox(key="ex_class").set_value("malignant").run()
    assert not at.exception


# ---- empty / missing data: helpful messages, no tracebacks --------------------------------------------


def test_empty_campaign_every_page(empty_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for page in PAGES:
        at = run_app(empty_config, monkeypatch, page)
        assert [h.value for h in at.header] == [page]
        msgs = " ".join(i.value for i in at.info)
        assert "No rounds yet" in msgs or "No annotation tasks yet" in msgs, (page, msgs)


def test_no_ledger_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'name = "nothing"\nroot = "{tmp_path / "nothing"}"\n')
    at = run_app(cfg, monkeypatch)
    msg = " ".join(i.value for i in at.info)
    assert "has no data yet" in msg and "medloop round" in msg
    assert not (tmp_path / "nothing" / "ledger.db").exists()  # the dashboard created nothing


def test_bad_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "x"\n[selection]\ntau_c = "high"\n')
    at = run_app(cfg, monkeypatch)
    assert "selection.tau_c" in at.error[0].value


def test_missing_mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = build_campaign(tmp_path / "nomlflow", name="nomlflow", n_pool=12, with_mlflow=False)
    at = run_app(cfg, monkeypatch)
    warning = " ".join(w.value for w in at.warning)
    assert "No MLflow store at" in warning
    assert "Best round in the ledger" in texts(at)
    assert not (tmp_path / "nomlflow" / "mlflow.db").exists()  # never created by the dashboard
    for page in PAGES[1:]:
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception


# ---- read-only ---------------------------------------------------------------------------------------------


def test_ledger_and_mlflow_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = build_campaign(tmp_path / "ro", name="readonly", n_pool=12)
    folder = tmp_path / "ro"
    before = {p.name: file_fingerprint(p) for p in (folder / "ledger.db", folder / "mlflow.db")}
    at = run_app(cfg, monkeypatch)
    for page in PAGES[1:]:
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception
    after = {p.name: file_fingerprint(p) for p in (folder / "ledger.db", folder / "mlflow.db")}
    assert after == before


def test_readonly_engine_refuses_writes(hand_campaign: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from medloop.dashboard.queries import open_readonly

    engine = open_readonly(load_campaign(hand_campaign).ledger)
    with pytest.raises(OperationalError, match="readonly"):
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM rounds"))
    engine.dispose()


def test_store_folder_may_move(tmp_path: Path, hand_campaign: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images missing from the store show a warning per sample, not a traceback."""
    src = load_campaign(hand_campaign).folder
    dst = tmp_path / "moved"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("store"))
    cfg = dst / "campaign.toml"
    cfg.write_text(cfg.read_text().replace(str(src.resolve()), str(dst.resolve())))
    at = run_app(cfg, monkeypatch, "Sample explorer")
    assert any("Image missing in the store" in w.value for w in at.warning)


def test_a_killed_round_reads_interrupted_and_a_live_one_running(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A round left ``running`` in the ledger with no live holder of the round lock (its process was
    killed) is ``interrupted`` on the Overview, as in ``medloop status``; while a process holds the
    lock (the real round lock, taken here) it is ``running``."""
    from medloop.ledger.schema import RoundStep
    from medloop.rounds.lock import round_lock

    config = build_campaign(tmp_path / "camp", with_mlflow=False)
    campaign = load_campaign(config)
    ledger = Ledger.open(campaign.ledger, create=False)
    try:
        with ledger.transaction() as s:
            last = s.scalar(select(func.max(Round.id)))
            s.get(Round, last).status = "running"
            step = s.scalar(select(RoundStep).where(RoundStep.round_id == last, RoundStep.step == "report"))
            step.state = "running"
    finally:
        ledger.close()

    def shown() -> tuple[str, set[str]]:
        at = run_app(config, monkeypatch)
        steps = chart_rows(at, "Round steps")
        return metrics(at)["Last round"], set(steps.loc[steps["round"] == last, "state"])

    last_round, states = shown()
    assert last_round == f"{last}: interrupted" and "interrupted" in states and "running" not in states
    with round_lock(campaign):
        last_round, states = shown()
    assert last_round == f"{last}: running" and "running" in states and "interrupted" not in states
