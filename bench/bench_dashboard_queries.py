"""Every ledger query the dashboard's pages run, timed on a large ledger (target: each <= 2 s).

    .venv/bin/python bench/bench_dashboard_queries.py [--ledger bench/out/select_step/run/ledger.db]

The ledger is the one ``bench/bench_select_step.py`` leaves after its round (10^6 pool cases with a
prediction each, ~10^6 selection rows, ~2.6 x 10^5 pseudo-labels). The queries are
``medloop.dashboard.queries``' own, called with the arguments the pages give them, through the
dashboard's read-only engine (``queries.open_readonly``); each is timed on its first call (what a
user waits for before the page's 30 s cache holds it) and the median of ``--repeats`` more.
Writes ``bench/results/dashboard_queries_1m.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

TARGET_S = 2.0
CLASSES = ["normal", "benign", "malignant"]


def page_queries(round_id: int) -> dict[str, tuple[str, Callable[..., Any], tuple[Any, ...]]]:
    """name -> (page, query function, arguments after the engine), as dashboard/app.py calls them."""
    from medloop.dashboard import queries as q

    return {
        "label_curve": ("Overview", q.label_curve, ()),
        "split_counts": ("Overview", q.split_counts, ()),
        "open_queue_size": ("Overview", q.open_queue_size, ()),
        "round_steps": ("Overview", q.round_steps, ()),
        "pool_composition": ("Overview", q.pool_composition, ()),
        "rounds": ("every page", q.rounds, ()),
        "per_class_calibration": ("Calibration", q.per_class_calibration, (round_id, CLASSES)),
        "uncertainty_pairs": ("Calibration", q.uncertainty_pairs, (round_id,)),
        "pseudo_per_class": ("Selection", q.pseudo_per_class, ()),
        "thresholds": ("Selection", q.thresholds, ()),
        "selection_scatter": ("Selection", q.selection_scatter, (round_id, "std")),
        "decision_counts": ("Selection", q.decision_counts, ()),
        "audit_precision": ("Selection", q.audit_precision, ()),
        "truth_precision": ("Selection", q.truth_precision, ()),
        "task_states": ("Annotation", q.task_states, ()),
        "kept_prediction": ("Annotation", q.kept_prediction, ()),
        "quarantined": ("Annotation", q.quarantined, ()),
        "explorer_count": ("Sample explorer", q.explorer_count, (round_id, None, None)),
        "explorer_page": ("Sample explorer", q.explorer_page, (round_id, None, None, 0)),
        "explorer_page_benign_pseudo": ("Sample explorer", q.explorer_page, (round_id, 1, "pseudo", 3)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ledger", type=Path, default=ROOT / "bench" / "out" / "select_step" / "run" / "ledger.db")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="dashboard_queries_1m")
    args = ap.parse_args()
    from common import machine, md_table, write_results
    from sqlalchemy import func, select, text

    from medloop.dashboard import queries as q

    if not args.ledger.exists():
        sys.exit(f"{args.ledger}: no such ledger; run bench/bench_select_step.py first")
    engine = q.open_readonly(f"sqlite:///{args.ledger}")
    with engine.connect() as con:
        sizes = {t: int(con.execute(select(func.count()).select_from(text(t))).scalar() or 0)
                 for t in ("samples", "predictions", "selections", "labels", "annotation_tasks")}
        round_id = int(con.execute(text("SELECT max(id) FROM rounds")).scalar() or 1)
    info = machine()
    rows = []
    for name, (page, fn, extra) in page_queries(round_id).items():
        t0 = time.perf_counter()
        out = fn(engine, *extra)
        first = time.perf_counter() - t0
        again = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn(engine, *extra)
            again.append(time.perf_counter() - t0)
        rows.append({"query": name, "page": page, "first_s": round(first, 3),
                     "median_s": round(statistics.median(again), 3) if again else None,
                     "rows": int(len(out)) if hasattr(out, "__len__") else 1, "meets_target": first <= TARGET_S})
        print(f"{name}: {first:.2f} s", file=sys.stderr)
    slowest = max(rows, key=lambda r: r["first_s"])
    payload = {"machine": info, "ledger_rows": sizes, "round": round_id, "target_s": TARGET_S, "queries": rows,
               "slowest": slowest["query"], "slowest_s": slowest["first_s"],
               "meets_target": all(r["meets_target"] for r in rows)}
    table = md_table(rows, ["page", "query", "first_s", "median_s", "rows", "meets_target"],
                     ["page", "query", "first call s", f"median of {args.repeats} s", "rows", "<= 2 s"])
    head = ", ".join(f"{k} {v:,}" for k, v in sizes.items())
    write_results(args.name, payload, f"## Dashboard queries on a large ledger\n\nLedger rows: {head}.\n\n{table}\n")


if __name__ == "__main__":
    main()
