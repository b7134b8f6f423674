"""The dashboard's queries on a 100,000-sample ledger (slow): results stay small (aggregated in SQL,
paged, subsampled) and correct; the time of each query is written to test-output/dashboard/scale.json
for people to read (no timing asserts)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import insert

from medloop.dashboard import queries
from medloop.ledger.schema import STEPS, AnnotationTask, Label, Prediction, Round, RoundStep, Sample, Selection, utcnow
from medloop.ledger.store import Ledger

N = 100_000
ROUNDS = 3
OUT = Path(__file__).resolve().parents[2] / "test-output" / "dashboard"


def _fill(url: str) -> dict:
    rng = np.random.default_rng(0)
    ledger = Ledger.open(url)
    splits = np.where(np.arange(N) < 2_000, "val", np.where(np.arange(N) < 12_000, "train", "pool"))
    classes = ["normal", "benign", "malignant"]
    with ledger.transaction() as s:
        s.execute(insert(Sample), [
            {"id": i + 1, "uid": f"u{i}", "content_hash": f"h{i}", "image_path": f"images/u{i}.png",
             "source": "synthetic", "split": str(splits[i]), "height": 64, "width": 64, "channels": 1}
            for i in range(N)])
        truth = rng.integers(0, 3, N)
        s.execute(insert(Label), [{"sample_id": i + 1, "kind": "truth", "class_name": classes[truth[i]], "active": True}
                                  for i in range(N)])
        s.execute(insert(Label), [{"sample_id": i + 1, "kind": "human", "class_name": classes[truth[i]], "active": True,
                                   "author": "seed"} for i in range(12_000)])
    pool = np.arange(12_000, N) + 1
    for r in range(1, ROUNDS + 1):
        with ledger.transaction() as s:
            s.add(Round(id=r, status="done", finished_at=utcnow(), metrics={"ece": 0.1 / r}))
            for step in STEPS:
                s.add(RoundStep(round_id=r, step=step, state="done"))
            ids = np.concatenate([np.arange(1, 2_001), pool])
            conf = rng.uniform(0.34, 1.0, len(ids))
            pred = rng.integers(0, 3, len(ids))
            s.execute(insert(Prediction), [
                {"round_id": r, "sample_id": int(sid), "model_version": f"round-{r}", "probs": [0.0, 0.0, 0.0],
                 "pred_class": int(pred[j]), "confidence": float(conf[j]), "std": float(rng.uniform(0, 0.2)),
                 "vacuity": float(rng.uniform(0, 1))} for j, sid in enumerate(ids)])
            chosen = rng.permutation(pool)
            pseudo, queue = chosen[:5_000], pool[(r - 1) * 200 : r * 200]
            s.execute(insert(Selection), [{"round_id": r, "sample_id": int(x), "decision": "pseudo", "policy": "ups",
                                           "score": 0.01} for x in pseudo]
                      + [{"round_id": r, "sample_id": int(x), "decision": "rejected", "policy": "ups", "score": 0.3}
                         for x in chosen[5_200:40_000]])
            s.execute(insert(Label), [{"sample_id": int(x), "kind": "pseudo", "class_name": classes[int(x) % 3],
                                       "round_id": r, "selector": "ups", "active": True,
                                       "thresholds": {"tau_c": 0.9, "tau_u": 0.05}} for x in pseudo])
            s.execute(insert(AnnotationTask), [{"sample_id": int(x), "round_id": r, "state": "pushed"}
                                               for x in queue])
    ledger.close()
    return {"pseudo_per_round": 5_000, "queue_per_round": 200}


@pytest.mark.slow
def test_queries_on_100k_samples(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    t0 = time.perf_counter()
    facts = _fill(url)
    fill_s = time.perf_counter() - t0
    engine = queries.open_readonly(url)
    timings: dict[str, float] = {}

    def timed(name: str, fn, *args):  # noqa: ANN001, ANN202
        t = time.perf_counter()
        out = fn(engine, *args)
        timings[name] = round(time.perf_counter() - t, 4)
        return out

    pool = timed("pool_composition", queries.pool_composition)
    assert len(pool) == ROUNDS * 4
    assert (pool.groupby("round")["samples"].sum() == N - 2_000).all()
    per_class = timed("pseudo_per_class", queries.pseudo_per_class)
    assert per_class.groupby("round")["samples"].sum().tolist() == [facts["pseudo_per_round"]] * ROUNDS
    dec = timed("decision_counts", queries.decision_counts)
    assert set(dec["decision"]) == {"pseudo", "rejected"}
    scatter = timed("selection_scatter", queries.selection_scatter, ROUNDS, "std")
    assert len(scatter) == 4_000 and set(scatter["decision"]) >= {"pseudo", "rejected", "none"}
    pairs = timed("uncertainty_pairs", queries.uncertainty_pairs, ROUNDS)
    assert len(pairs) == 3_000
    binned = timed("per_class_calibration", queries.per_class_calibration, ROUNDS, ["normal", "benign", "malignant"])
    assert binned["n"].sum() == 2_000
    assert timed("explorer_count", queries.explorer_count, ROUNDS, None, "pseudo") == facts["pseudo_per_round"]
    assert timed("explorer_count (class filter)", queries.explorer_count, ROUNDS, 1, "rejected") > 0
    page = timed("explorer_page (page 100)", queries.explorer_page, ROUNDS, 1, None, 100, 12)
    assert len(page) == 12
    truth = timed("truth_precision", queries.truth_precision)
    assert truth["checked"].tolist() == [facts["pseudo_per_round"]] * ROUNDS
    states = timed("task_states", queries.task_states)
    assert states["tasks"].tolist() == [facts["queue_per_round"]] * ROUNDS
    engine.dispose()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps({"samples": N, "rounds": ROUNDS, "fill_seconds": round(fill_s, 1),
                                                "query_seconds": timings}, indent=2))
