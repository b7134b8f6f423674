"""Benchmark: images/s of ``medloop predict`` (the command's code path, ``medloop.predict.run_predict``) on N
synthetic 256x256 PNG files, with T = 1 (one deterministic pass) and T = 10 (MC dropout).

Each run reads the PNGs, fits them to the model input, scores them with ``score_batch``, resizes the lesion
probability back to 256x256 and writes masks/<name>.png and predictions.csv (``--overlays`` adds the overlay
PNGs). The model is the campaign default (mtunet, width 16) at ``--image-size`` with untrained weights (speed
does not depend on the weights). ``seconds`` excludes loading the model; ``wall_s`` includes it; ``cpu_s`` is the
process's CPU time (every thread), so ``images_per_cpu_s`` says what the code costs on a machine shared with
other work (the load average is recorded beside it).

    nice -n 19 .venv/bin/python bench/bench_predict.py --n 200              # quick check
    .venv/bin/python bench/bench_predict.py --n 10000                         # the issue's target size
    .venv/bin/python bench/bench_predict.py --n 10000 --device cuda           # on a GPU

Writes bench/results/predict.json and predict.md (``--out-dir`` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine, md_table, write_results  # noqa: E402


def make_inputs(folder: Path, n: int, size: int, unique: int = 64, seed: int = 0) -> None:
    """``n`` PNG files of ``size`` x ``size`` phantoms (``unique`` different pictures, repeated)."""
    from PIL import Image

    from medloop.data.synthetic import generate

    ph = generate(min(unique, n), size, seed=seed, difficulty=0.3)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(ph.images[i % len(ph.images)]).save(folder / f"img{i:06d}.png", compress_level=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="images (the issue's target: 10000)")
    ap.add_argument("--size", type=int, default=256, help="side of the input images")
    ap.add_argument("--image-size", type=int, default=128, help="model input side (data.image_size)")
    ap.add_argument("--width", type=int, default=16, help="model.width")
    ap.add_argument("--passes", type=int, nargs="+", default=[1, 10], help="values of T")
    ap.add_argument("--batch", type=int, default=32, help="compute.score_batch_size")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--overlays", action="store_true", help="also write the overlay PNGs")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args()

    import torch

    from medloop.config import parse_campaign
    from medloop.predict import run_predict
    from medloop.trainers.checkpoints import build_model, model_spec, save_checkpoint
    from medloop.trainers.plain import LoopSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    work = Path(tempfile.mkdtemp(prefix="medloop-bench-predict-"))
    try:
        campaign = parse_campaign({
            "name": "bench-predict", "root": str(work / "camp"),
            "data": {"image_size": args.image_size}, "model": {"width": args.width},
            "compute": {"use_gpu": args.device == "cuda", "score_batch_size": args.batch},
        }, "<bench>")
        torch.manual_seed(0)
        ckpt = save_checkpoint(work / "ckpt", build_model(model_spec(campaign)),
                               LoopSettings.from_campaign(campaign).meta())
        t0 = time.perf_counter()
        make_inputs(work / "in", args.n, args.size)
        write_s = time.perf_counter() - t0
        rows = []
        for t in args.passes:
            t0, c0 = time.perf_counter(), time.process_time()
            rep = run_predict(campaign, [work / "in"], model=str(ckpt), out=work / f"out-T{t}", passes=t,
                              overlays=args.overlays)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert rep.predicted == args.n and not rep.unreadable
            rows.append({"T": t, "method": rep.method, "images": rep.predicted, "seconds": round(rep.seconds, 2),
                         "wall_s": round(wall, 2), "images_per_s": round(rep.images_per_s, 2),
                         "ms_per_image": round(1000 * rep.seconds / rep.predicted, 2), "cpu_s": round(cpu, 2),
                         "images_per_cpu_s": round(rep.predicted / cpu, 2) if cpu > 0 else None,
                         "load_1m": round(os.getloadavg()[0], 1), "device": rep.device})
            print(f"T = {t}: {rep.predicted} images in {rep.seconds:.1f} s = {rep.images_per_s:.1f} images/s",
                  file=sys.stderr)
            shutil.rmtree(work / f"out-T{t}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = md_table(rows, ["T", "method", "images", "seconds", "images_per_s", "ms_per_image", "wall_s", "cpu_s",
                            "images_per_cpu_s", "load_1m", "device"],
                     ["T", "scoring", "images", "s (no model load)", "images/s", "ms/image", "wall s",
                      "CPU s (all threads)", "images per CPU s", "load (1 min)", "device"])
    setup = (f"{args.n} PNG files of {args.size}x{args.size} px -> model input {args.image_size} px, mtunet width "
             f"{args.width}, batch {args.batch}, overlays {'on' if args.overlays else 'off'}; writing the inputs "
             f"took {write_s:.1f} s.")
    print("\n" + table)
    write_results("predict", {
        "machine": machine(), "n": args.n, "size": args.size, "image_size": args.image_size, "width": args.width,
        "batch": args.batch, "overlays": args.overlays, "rows": rows,
        "target": "the issue's figure is N = 10,000 (T = 1 and T = 10, 2-core CPU, and a GPU where one is available)",
    }, f"# medloop predict throughput\n\n{setup}\n\n{table}\n", out_dir=args.out_dir)


if __name__ == "__main__":
    main()
