"""Benchmark: push N queued tasks with predictions to a local Label Studio, at native resolution.

Each task: a native-size image (default 256x200, like a small BUSI image; ``--height/--width``),
the model-size maps scoring writes (``--model-size`` 64: lesion probability, predicted mask,
pixel-uncertainty map), pushed as the class + a native-size brush pre-annotation (probability
resized bilinearly, then >= 0.5) + the uncertainty image (a PNG written at push time). ``--native 0``
gives the earlier square 64x64 images and masks without maps.

    .venv/bin/python bench/bench_ls_push.py --n 2000            # starts (and stops) its own server
    .venv/bin/python bench/bench_ls_push.py --n 2000 --root DIR # reuse a server started for campaign root DIR
    .venv/bin/python bench/bench_ls_push.py --n 2000 --workers 4 --postgres --concurrency 4  # a team's setup

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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # ledger_backends (throwaway PostgreSQL)

from labeling_queue import build_queue  # noqa: E402  (the tests' queue builder: ledger rows + images + predictions)

from medloop.config import Campaign  # noqa: E402
from medloop.labeling import push as push_module  # noqa: E402
from medloop.labeling import server  # noqa: E402
from medloop.labeling.push import existing_tasks, push_queue  # noqa: E402

TARGET = 500  # the performance issue's figure (tasks/s, predictions included)


def _timed(name: str, totals: dict[str, float]) -> None:
    """Wrap ``medloop.labeling.push.<name>`` to add up the seconds spent in it."""
    fn = getattr(push_module, name)

    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t

    setattr(push_module, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--size", type=int, default=64, help="square image size without --native")
    ap.add_argument("--native", type=int, default=1, help="1: native-size images + model-size maps (default)")
    ap.add_argument("--height", type=int, default=200)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--model-size", type=int, default=64)
    ap.add_argument("--root", help="campaign root of an already running server (medloop labelstudio start)")
    ap.add_argument("--workers", type=int, default=1, help="labeling.server_workers of the server it starts")
    ap.add_argument("--postgres", action="store_true",
                    help="the server's database on a throwaway PostgreSQL 15 (tests/ledger_backends.py), not SQLite")
    ap.add_argument("--concurrency", type=int, default=1, help="labeling.push_concurrency (imports in flight)")
    args = ap.parse_args()

    own = args.root is None
    root = Path(args.root or tempfile.mkdtemp(prefix="medloop-lsbench-")).resolve()
    pg = None
    labeling: dict[str, object] = {"server_workers": args.workers}
    if args.postgres:
        from ledger_backends import PORT, start_postgres

        pg = start_postgres()
        labeling["server_database"] = f"postgresql://postgres@/{pg.create_database('labelstudio')}" \
                                      f"?host={pg.socket_dir}&port={PORT}"
    srv = Campaign.model_validate({"name": "lsbench", "root": str(root), "labeling": labeling})
    t0 = time.perf_counter()
    info = server.start(srv, port=None if not own else server.free_port())
    start_s = time.perf_counter() - t0
    try:
        name = f"bench{int(time.time())}"
        campaign = Campaign.model_validate({
            "name": name, "root": str(root / "campaigns" / name),
            "labeling": {"url": info.url, "token_env": "MEDLOOP_BENCH_NO_TOKEN", "token_file": str(info.token_file),
                         "project_title": f"bench-{name}", "document_root": str(root),
                         "push_concurrency": args.concurrency},
        })
        native = (args.height, args.width) if args.native else None
        q = build_queue(campaign, args.n, size=args.size, audit_every=20, native=native, model_size=args.model_size)
        from medloop.labeling.client import connect
        from medloop.labeling.project import ensure_project

        pid = ensure_project(campaign, q.ledger, connect(campaign))
        totals: dict[str, float] = {}
        _timed("build_task", totals)  # building payloads (runs while the previous chunk is imported)
        _timed("import_tasks", totals)  # Label Studio's bulk import calls
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
        if pg is not None:
            pg.stop()
    mask = (f"native {args.width}x{args.height} (maps {args.model_size}x{args.model_size})" if args.native
            else f"{args.size}x{args.size}")
    out = {
        "n": args.n, "chunk": args.chunk, "mask": mask, "server_workers": args.workers,
        "database": "postgresql" if args.postgres else "sqlite", "push_concurrency": args.concurrency,
        "pushed": report.pushed,
        "tasks_in_project": in_ls, "push_s": round(push_s, 3), "tasks_per_s": round(report.pushed / push_s, 1),
        "build_s": round(totals.get("build_task", 0.0), 3), "import_s": round(totals.get("import_tasks", 0.0), 3),
        "second_push_pushed": again.pushed, "second_push_s": round(again_s, 3), "server_start_s": round(start_s, 1),
        "target_tasks_per_s": TARGET,
    }
    print(json.dumps(out))
    print()
    print("| tasks | chunk | images, masks | server | imports in flight | push (s) | tasks/s | target | build (s) "
          "| LS import (s, summed) | re-push (s) | duplicates |")
    print("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.n} | {args.chunk} | {mask} | {args.workers} worker(s), {out['database']} | {args.concurrency} | "
          f"{out['push_s']} | {out['tasks_per_s']} | {TARGET} | {out['build_s']} | {out['import_s']} | "
          f"{out['second_push_s']} | {in_ls - args.n} |")


if __name__ == "__main__":
    main()
