"""Benchmark: push N queued tasks with predictions (class + 64x64 brush mask) to a local Label Studio.

    .venv/bin/python bench/bench_ls_push.py --n 2000            # starts (and stops) its own server
    .venv/bin/python bench/bench_ls_push.py --n 2000 --root DIR # reuse a server started for campaign root DIR

Prints one JSON line and a markdown table; target: at least 500 tasks/s, predictions included.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "labeling"))

from conftest import build_queue  # noqa: E402  (test fixture builder: ledger rows + images + predictions)

from medloop.config import Campaign  # noqa: E402
from medloop.labeling import server  # noqa: E402
from medloop.labeling.push import existing_tasks, push_queue  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--root", help="campaign root of an already running server (medloop labelstudio start)")
    args = ap.parse_args()

    own = args.root is None
    root = Path(args.root or tempfile.mkdtemp(prefix="medloop-lsbench-")).resolve()
    srv = Campaign(name="lsbench", root=str(root))
    t0 = time.perf_counter()
    info = server.start(srv, port=None if not own else server.free_port())
    start_s = time.perf_counter() - t0
    try:
        name = f"bench{int(time.time())}"
        campaign = Campaign.model_validate({
            "name": name, "root": str(root / "campaigns" / name),
            "labeling": {"url": info.url, "token_env": "MEDLOOP_BENCH_NO_TOKEN", "token_file": str(info.token_file),
                         "project_title": f"bench-{name}", "document_root": str(root)},
        })
        q = build_queue(campaign, args.n, size=args.size, audit_every=20)
        from medloop.labeling.client import connect
        from medloop.labeling.project import ensure_project

        pid = ensure_project(campaign, q.ledger, connect(campaign))
        t = time.perf_counter()
        report = push_queue(campaign, q.ledger, q.store, chunk_size=args.chunk)
        push_s = time.perf_counter() - t
        t = time.perf_counter()
        again = push_queue(campaign, q.ledger, q.store)  # idempotent re-run: reconcile only
        again_s = time.perf_counter() - t
        in_ls = len(existing_tasks(connect(campaign), pid))
    finally:
        if own:
            server.stop(srv)
    out = {
        "n": args.n, "chunk": args.chunk, "mask": f"{args.size}x{args.size}", "pushed": report.pushed,
        "tasks_in_project": in_ls, "push_s": round(push_s, 3), "tasks_per_s": round(report.pushed / push_s, 1),
        "second_push_pushed": again.pushed, "second_push_s": round(again_s, 3), "server_start_s": round(start_s, 1),
        "target_tasks_per_s": 500,
    }
    print(json.dumps(out))
    print()
    print("| tasks | chunk | mask | push (s) | tasks/s | target | re-push (s) | duplicates |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    print(f"| {args.n} | {args.chunk} | {out['mask']} | {out['push_s']} | {out['tasks_per_s']} | 500 | "
          f"{out['second_push_s']} | {in_ls - args.n} |")


if __name__ == "__main__":
    main()
