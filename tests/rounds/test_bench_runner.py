"""The label-efficiency benchmark drives the product: real rounds through run_round on a tiny synthetic
campaign, a result row per round with test metrics, and a rerun that adds nothing. Plus its summary
(labels to 95 %, gain at a label fraction) on hand-made result files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def le():
    return _load("bench_label_efficiency")


@pytest.fixture(scope="module")
def ray_cleanup():
    import ray

    started = not ray.is_initialized()
    yield
    if started and ray.is_initialized():
        ray.shutdown()


TINY = ["--dataset", "synthetic", "--n-synthetic", "60", "--size", "32", "--width", "4", "--epochs", "1",
        "--rounds", "2", "--budget", "4", "--init-labels", "8", "--split", "0.6,0.2,0.2", "--seeds", "0",
        "--arms", "hybrid", "--set", "compute.num_workers=0", "--set", "uncertainty.mc_passes=2"]


def test_runner_two_real_rounds_then_resume(tmp_path: Path, le, ray_cleanup, monkeypatch) -> None:
    argv = [*TINY, "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res" / "label_efficiency")]
    args = le.parser().parse_args(argv)
    le.run(args, extras={"tracking": False})

    folder = tmp_path / "out" / "hybrid-s0"
    assert (folder / "campaign.toml").exists() and (folder / "ledger.db").exists()
    from medloop.config import load_campaign

    c = load_campaign(folder / "campaign.toml")
    assert c.root == str(folder.resolve()) and c.labeling.oracle and not c.labeling.enabled
    assert c.selection.policy == "none" and c.selection.acquisition == "hybrid" and c.data.seed == 0
    assert c.data.unlabeled_fraction == pytest.approx(1 - 8 / 36)  # 60 cases, 36 in train before the pool

    result_file = tmp_path / "res" / "label_efficiency" / "hybrid-s0.json"
    result = json.loads(result_file.read_text())
    rows = result["rows"]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["trained_on"]["human"] == 8 and rows[0]["trained_on"]["val"] == 12
    assert rows[0]["human_labels"] == 8 + 12
    assert rows[1]["human_labels"] - rows[0]["human_labels"] == 4  # the oracle answered the budget
    assert rows[0]["queue_size"] == 4 and rows[0]["oracle"]["oracle_answered"] == 4
    for r in rows:
        t = r["test"]
        assert t["split"] == "test" and t["n"] == 12 and t["n_class"] == 12
        assert 0.0 <= t["accuracy"] <= 1.0 and t["ece"] is not None and t["nll"] > 0
        assert t["n_lesion"] + t["n_no_lesion"] == 12 and (t["dice"] is None) == (t["n_lesion"] == 0)
        assert r["pseudo_labels"] == 0 and r["pseudo_masks"] == 0  # policy none + mask_gate 0
        assert "val_accuracy" in r["val"] and r["checkpoint"].endswith("best") and r["epochs_run"] == 1
    before = result_file.read_text()

    # a rerun runs no round and adds nothing
    import medloop.rounds.orchestrator as orch

    def no_round(*a, **k):
        raise AssertionError("a finished campaign must not run another round")

    monkeypatch.setattr(orch, "run_round", no_round)
    le.run(args, extras={"tracking": False})
    assert result_file.read_text() == before

    # a row lost after its round finished (killed between the round and the file) is evaluated again
    result["rows"] = rows[:1]
    result_file.write_text(json.dumps(result))
    le.run(args, extras={"tracking": False})
    again = json.loads(result_file.read_text())["rows"]
    assert [r["round"] for r in again] == [1, 2] and again[1]["test"] == rows[1]["test"]

    # other settings for an existing campaign are refused
    other = le.parser().parse_args([*argv, "--budget", "5"])
    with pytest.raises(SystemExit, match="other settings"):
        le.run(other, extras={"tracking": False})


# ---- summary on hand-made result files ---------------------------------------------------------------


def _file(arm: str, seed: int, rows: list[tuple[int, float, float]]) -> dict:
    return {"arm": arm, "seed": seed, "dataset": "busi", "init_labels": 22, "expected_train_count": 499,
            "campaign": {"data": {"image_size": 128}},
            "rows": [{"round": i + 1, "human_labels": h, "test": {"dice": d, "accuracy": a, "ece": 0.1},
                      "pseudo_precision": None, "pseudo_mask_dice": None}
                     for i, (h, d, a) in enumerate(rows)]}


def test_summary_labels_to_95_and_gain(tmp_path: Path, le) -> None:
    res = tmp_path / "results" / "label_efficiency"
    res.mkdir(parents=True)
    files = {
        "full-s0": _file("full", 0, [(500, 0.80, 0.90)]),
        "full-s1": _file("full", 1, [(500, 0.60, 0.70)]),  # means: Dice 0.70, accuracy 0.80
        # hybrid: round 2 reaches Dice 0.665 (= 95 % of 0.70) but accuracy 0.75 < 0.76; round 3 both
        "hybrid-s0": _file("hybrid", 0, [(50, 0.50, 0.60), (100, 0.665, 0.75), (150, 0.70, 0.80)]),
        "hybrid-s1": _file("hybrid", 1, [(50, 0.50, 0.60), (100, 0.665, 0.75), (150, 0.68, 0.78)]),
        "hybrid_ups_semi-s0": _file("hybrid_ups_semi", 0, [(50, 0.60, 0.60), (100, 0.70, 0.75), (150, 0.70, 0.8)]),
        "hybrid_ups_semi-s1": _file("hybrid_ups_semi", 1, [(50, 0.52, 0.60), (100, 0.70, 0.75), (150, 0.70, 0.8)]),
        "random-s0": _file("random", 0, [(50, 0.50, 0.60), (100, 0.60, 0.70)]),
    }
    for name, f in files.items():
        (res / f"{name}.json").write_text(json.dumps(f))
    args = le.parser().parse_args(["--results", str(res), "--summarise"])
    out = le.summarise(args)
    written = json.loads((tmp_path / "results" / "label_efficiency_busi.json").read_text())
    assert written["labels_to_95"] == out["labels_to_95"]
    assert (tmp_path / "results" / "label_efficiency_busi.png").exists()
    assert out["image_size"] == 128 and out["seeds"] == [0, 1]
    full = out["full_label"]
    assert full["human_labels"] == 500 and full["dice"] == pytest.approx(0.70)
    assert full["dice_std"] == pytest.approx(0.10)
    assert full["accuracy"] == pytest.approx(0.80)
    hit = out["labels_to_95"]["hybrid"]
    assert hit["round"] == 3 and hit["human_labels"] == 150 and hit["fraction"] == pytest.approx(0.30)
    arms = {a["name"]: a for a in out["arms"]}
    assert arms["hybrid"]["human_labels"] == [50, 100, 150]
    assert arms["hybrid"]["dice"] == pytest.approx([0.50, 0.665, 0.69])
    assert arms["hybrid"]["dice_std"] == pytest.approx([0.0, 0.0, 0.01])
    # 10 % of 500 = 50 labels -> round 1 of both; per seed gains 0.10 and 0.02
    elsewhere = tmp_path / "current" / "summary.json"
    le.summarise(le.parser().parse_args(["--results", str(res), "--summarise", "--summary-out", str(elsewhere)]))
    assert json.loads(elsewhere.read_text())["labels_to_95"] == out["labels_to_95"]
    assert elsewhere.with_suffix(".png").exists()
    g10 = out["gain_at"]["10%"]
    assert g10["hybrid"]["round"] == 1 and g10["hybrid_ups_semi"]["round"] == 1
    assert g10["dice_gain"] == pytest.approx(0.06) and g10["dice_gain_std"] == pytest.approx(0.04)
    # 20 % = 100 labels -> round 2: 0.70 - 0.665
    assert out["gain_at"]["20%"]["dice_gain"] == pytest.approx(0.035)
    # against random (seed 0 only, the seed both arms have): 0.60 - 0.50 at 50 labels, 0.70 - 0.60 at 100
    over_random = out["gain_over_random_by_arm"]["hybrid_ups_semi"]
    assert over_random["10%"]["per_seed"] == {"0": pytest.approx(0.10)}
    assert over_random["20%"]["dice_gain"] == pytest.approx(0.10)


def test_summary_takes_the_reference_from_another_folder(tmp_path: Path, le) -> None:
    """--reference-results: the full arm's files come from that folder, and only from it; the other arms from
    --results."""
    res, ref = tmp_path / "results" / "new_default", tmp_path / "results" / "reference"
    res.mkdir(parents=True)
    ref.mkdir(parents=True)
    (res / "full-s0.json").write_text(json.dumps(_file("full", 0, [(500, 0.10, 0.10)])))  # must be ignored
    (res / "hybrid-s0.json").write_text(json.dumps(_file("hybrid", 0, [(50, 0.50, 0.60), (100, 0.67, 0.77)])))
    (ref / "full-s0.json").write_text(json.dumps(_file("full", 0, [(500, 0.70, 0.80)])))
    (ref / "hybrid-s0.json").write_text(json.dumps(_file("hybrid", 0, [(50, 0.0, 0.0)])))  # not the full arm
    out = le.summarise(le.parser().parse_args(["--results", str(res), "--summarise",
                                               "--reference-results", str(ref)]))
    assert out["full_label"]["dice"] == pytest.approx(0.70) and out["full_label"]["accuracy"] == pytest.approx(0.80)
    assert {a["name"]: a["dice"] for a in out["arms"]} == {"hybrid": pytest.approx([0.50, 0.67])}
    assert out["labels_to_95"]["hybrid"]["human_labels"] == 100
    assert sorted(out["result_files"]) == sorted([str(ref / "full-s0.json"), str(res / "hybrid-s0.json")])
    assert json.loads((tmp_path / "results" / "label_efficiency_busi_new_default.json").read_text())["full_label"]


def test_class_threshold_bench_reads_a_campaign_without_changing_it(campaign) -> None:
    """bench/bench_class_thresholds.py re-decides a finished round's pool at other tau_c with the product's
    own decide_pseudo_labels and reports per-class counts and precision against the hidden truth; it only
    reads."""
    from sqlalchemy import func, select
    from test_rules import _count, _run

    from medloop.ledger import Label, Ledger, Selection

    bench = _load("bench_class_thresholds")
    assert _run(campaign).status == "done"
    ledger_file = campaign.folder / "ledger.db"
    before = ledger_file.stat().st_mtime_ns, _count(campaign, Selection), _count(campaign, Label)
    res = bench.campaign_tables(campaign, [0.0, 0.5, 0.9, 1.01])
    assert (ledger_file.stat().st_mtime_ns, _count(campaign, Selection), _count(campaign, Label)) == before
    (rnd,) = res["rounds"]
    led = Ledger.open(campaign.ledger)
    with led.reading() as s:  # an audited case has two rows (pseudo, audit): count the cases
        seen = s.scalar(select(func.count(func.distinct(Selection.sample_id))).where(Selection.round_id == 1))
    led.close()
    assert rnd["unlabeled"] == seen == sum(rnd["truth"].values()) > 0
    for align in (False, True):
        rows = [r for r in rnd["by_tau"] if r["aligned"] == align]
        assert [r["tau_c"] for r in rows] == [0.0, 0.5, 0.9, 1.01]
        for name in campaign.data.classes:
            n = [r["per_class"][name]["n"] for r in rows]
            assert n == sorted(n, reverse=True) and n[-1] == 0  # fewer as tau_c rises; none above 1
            assert all(r["per_class"][name]["precision"] is None or 0 <= r["per_class"][name]["precision"] <= 1
                       for r in rows)
        assert sum(rows[0]["per_class"][c]["n"] for c in campaign.data.classes) > 0
    assert bench.markdown([res]).count("\n") == 2 + 2 * len(campaign.data.classes)
