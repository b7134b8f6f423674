"""Writing N Prediction rows to the SQLite ledger (target: 1,000,000 rows in <= 60 s).

    .venv/bin/python bench/bench_ledger_writes.py [--rows 1000000] [--batch 50000]

``--mode scorer`` (default) is the real path: ``medloop.trainers.score.write_predictions`` per batch of
``--batch`` rows (one transaction each, with its check for rows already written by that model version, then
an ORM bulk insert). ``core`` (table-level Core executemany) and ``driver`` (DB-API executemany of tuples)
are lower bounds for comparison. All go through ``Ledger.transaction()`` (WAL, synchronous=NORMAL).
Prints JSON, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


COLUMNS = ("round_id", "sample_id", "model_version", "probs", "pred_class", "confidence", "std", "entropy",
           "mutual_info", "vacuity", "margin", "seg_uncertainty", "seg_uncertainty_image", "lesion_fraction",
           "mask_path", "umap_path")
DRIVER_SQL = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--mode", choices=("scorer", "core", "driver"), default="scorer")
    args = ap.parse_args()
    from medloop.ledger import Ledger, Prediction, Sample
    from medloop.trainers.score import write_predictions

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger.open(f"sqlite:///{tmp}/ledger.db")
        n_samples = args.rows
        t0 = time.perf_counter()
        with ledger.transaction() as s:
            s.connection().execute(insert(Sample.__table__), [
                {"uid": f"s{i}", "content_hash": f"h{i}", "image_path": f"images/s{i}.png", "source": "bench",
                 "split": "pool", "height": 64, "width": 64, "channels": 1} for i in range(n_samples)])
        samples_s = time.perf_counter() - t0
        probs = rng.dirichlet(np.ones(3), size=args.rows)
        t1 = time.perf_counter()
        for start in range(0, args.rows, args.batch):
            stop = min(args.rows, start + args.batch)
            rows = [{
                "round_id": 1, "sample_id": i + 1, "model_version": "round-1", "probs": probs[i].tolist(),
                "pred_class": int(probs[i].argmax()), "confidence": float(probs[i].max()), "std": 0.01,
                "entropy": 0.5, "mutual_info": 0.01, "vacuity": None, "margin": 0.2, "seg_uncertainty": 0.1,
                "seg_uncertainty_image": 0.05, "lesion_fraction": 0.1,
                "mask_path": f"masks/pred/round-1/s{i}.png", "umap_path": f"arrays/umap/round-1/s{i}.npy",
            } for i in range(start, stop)]
            if args.mode == "scorer":
                write_predictions(ledger, rows, "round-1")
                continue
            with ledger.transaction() as s:
                if args.mode == "core":
                    s.connection().execute(insert(Prediction.__table__), rows)
                else:  # DB-API executemany with tuples (JSON encoded here), no per-row SQLAlchemy work
                    s.connection().exec_driver_sql(DRIVER_SQL, [tuple(
                        json.dumps(r[c]) if c == "probs" else r[c] for c in COLUMNS) for r in rows])
        write_s = time.perf_counter() - t1
        size_mb = Path(f"{tmp}/ledger.db").stat().st_size / 2**20
        ledger.close()
    result = {"bench": "ledger_writes", "mode": args.mode, "rows": args.rows, "batch": args.batch,
              "seconds": round(write_s, 2),
              "rows_per_s": round(args.rows / write_s), "target_s": 60.0 * args.rows / 1_000_000,
              "meets_target": write_s <= 60.0 * args.rows / 1_000_000, "sample_rows_s": round(samples_s, 2),
              "db_mb": round(size_mb, 1)}
    print(json.dumps(result))
    print()
    print("| mode | rows | batch | seconds | rows/s | target s | meets target |")
    print("|---|---:|---:|---:|---:|---:|:---:|")
    print(f"| {args.mode} | {args.rows:,} | {args.batch:,} | {result['seconds']} | {result['rows_per_s']:,} | "
          f"{result['target_s']:.0f} | {'yes' if result['meets_target'] else 'no'} |")


if __name__ == "__main__":
    main()
