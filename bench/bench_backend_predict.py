"""Benchmark: time per image of the Label Studio ML backend's ``/predict`` (``medloop labelstudio backend``),
p50 and p95, the way Label Studio calls it when an annotator opens a task: one task per request.

The backend is the real command, started as a subprocess on 127.0.0.1 with the campaign default model
(mtunet, width 16, at ``--image-size``; untrained weights: speed does not depend on them) saved as a
checkpoint. Each request carries one task whose image is a ``--size`` x ``--size`` PNG below the
campaign's document root (a ``/data/local-files/?d=`` URL, as Label Studio sends for local files); the
backend reads it, scores it with T passes and answers with the class choice and the native-size brush RLE.
The first ``--warmup`` requests of each T are not counted. Requests go one after another (an annotator
opening tasks), so the figure is the latency of one prediction, not the server's throughput.

    .venv/bin/python bench/bench_backend_predict.py                 # 200 requests for T = 1 and T = 10

Writes bench/results/backend_predict.json and backend_predict.md (``--out-dir`` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine, md_table, write_results  # noqa: E402


def medloop_cli() -> list[str]:
    exe = Path(sys.executable).parent / "medloop"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from medloop.cli import app; app()"]


def wait_health(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300.0) -> None:
    from medloop.labeling.server import healthy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the backend exited with {proc.returncode}:\n{log.read_text()}")
        if healthy(url):
            return
        time.sleep(0.5)
    raise SystemExit(f"the backend did not answer {url}/health in {timeout:.0f} s")


def time_requests(url: str, tasks: list[dict[str, object]], warmup: int) -> list[float]:
    """Seconds of each ``/predict`` request (one task each) after ``warmup`` uncounted ones."""
    import requests

    session = requests.Session()
    times: list[float] = []
    for i, task in enumerate(tasks):
        t0 = time.perf_counter()
        r = session.post(f"{url}/predict", json={"tasks": [task]}, timeout=300)
        dt = time.perf_counter() - t0
        r.raise_for_status()
        result = r.json()["results"][0]
        if "error" in result or len(result["result"]) < 1:
            raise SystemExit(f"request {i}: no prediction: {result}")
        if i >= warmup:
            times.append(dt)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=200, help="counted requests per T")
    ap.add_argument("--warmup", type=int, default=5, help="uncounted requests first")
    ap.add_argument("--size", type=int, default=256, help="side of the task images")
    ap.add_argument("--image-size", type=int, default=128, help="model input side (data.image_size)")
    ap.add_argument("--width", type=int, default=16, help="model.width")
    ap.add_argument("--passes", type=int, nargs="+", default=[1, 10], help="values of T (--mc-passes)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()

    import tomli_w
    import torch
    from PIL import Image

    from medloop.config import parse_campaign
    from medloop.data.synthetic import generate
    from medloop.labeling import server
    from medloop.trainers.checkpoints import build_model, model_spec, save_checkpoint
    from medloop.trainers.plain import LoopSettings

    work = Path(tempfile.mkdtemp(prefix="medloop-bench-backend-"))
    rows = []
    try:
        campaign = parse_campaign({
            "name": "bench-backend", "root": str(work / "camp"),
            "data": {"image_size": args.image_size}, "model": {"width": args.width},
            "labeling": {"url": "http://127.0.0.1:9", "token_env": "MEDLOOP_BENCH_NO_TOKEN"},
        }, "<bench>")
        cfg = work / "campaign.toml"
        cfg.write_text(tomli_w.dumps(campaign.model_dump(exclude_none=True)))
        torch.manual_seed(0)
        ckpt = save_checkpoint(work / "ckpt", build_model(model_spec(campaign)),
                               {**LoopSettings.from_campaign(campaign).meta(), "model_version": "bench"})
        images = campaign.folder / "tasks"
        images.mkdir(parents=True, exist_ok=True)
        ph = generate(32, args.size, seed=0, difficulty=0.3)
        n = args.warmup + args.requests
        for i in range(n):
            Image.fromarray(ph.images[i % len(ph.images)]).save(images / f"task{i:05d}.png")
        root = campaign.folder.resolve()
        rel = [(images / f"task{i:05d}.png").resolve().relative_to(root).as_posix() for i in range(n)]
        tasks: list[dict[str, object]] = [{"id": i, "data": {"image": f"/data/local-files/?d={r}"}}
                                          for i, r in enumerate(rel)]
        for t in args.passes:
            port = server.free_port()
            url = f"http://127.0.0.1:{port}"
            log = work / f"backend-T{t}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    [*medloop_cli(), "labelstudio", "backend", "-c", str(cfg), "--model", str(ckpt),
                     "--port", str(port), "--mc-passes", str(t)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                wait_health(url, proc, log)
                ms = 1000 * np.asarray(time_requests(url, tasks, args.warmup))
            finally:
                proc.terminate()
                proc.wait(30)
            rows.append({"T": t, "requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                         "p95_ms": round(float(np.percentile(ms, 95)), 1), "mean_ms": round(float(ms.mean()), 1),
                         "max_ms": round(float(ms.max()), 1), "load_1m": round(os.getloadavg()[0], 1)})
            print(f"T = {t}: p50 {rows[-1]['p50_ms']} ms, p95 {rows[-1]['p95_ms']} ms", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = md_table(rows, ["T", "requests", "p50_ms", "p95_ms", "mean_ms", "max_ms", "load_1m"],
                     ["T", "requests", "p50 ms", "p95 ms", "mean ms", "max ms", "load (1 min)"], digits=1)
    setup = (f"`medloop labelstudio backend` on 127.0.0.1, mtunet width {args.width} at {args.image_size} px "
             f"(untrained), one {args.size}x{args.size} PNG task per `/predict` request, requests one after "
             f"another, the first {args.warmup} of each T not counted. Time per request = time per image.")
    write_results("backend_predict", {
        "machine": machine(), "size": args.size, "image_size": args.image_size, "width": args.width,
        "warmup": args.warmup, "rows": rows,
    }, f"# Label Studio ML backend: /predict time per image\n\n{setup}\n\n{table}\n", out_dir=args.out_dir)


if __name__ == "__main__":
    main()
