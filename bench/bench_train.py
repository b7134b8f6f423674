"""Benchmark: plain PyTorch loop vs Ray Train (TorchTrainer, DDP) training throughput, same model and settings.

Throughput = training images / training seconds per epoch, data loading included (the
DataLoader over the in-memory uint8 arrays), validation excluded; the first epoch is dropped
(warm-up, torch.compile). Ray's start-up (worker group, process group) is reported apart as
``wall_seconds``. Prints JSON + a markdown table and writes bench/results/bench_train.{json,md}.

    .venv/bin/python bench/bench_train.py --size 32 --width 4 --n 64 --epochs 3            # CPU smoke
    .venv/bin/python bench/bench_train.py --device cuda --size 256 --width 16 --n 2048 --batch 64 --epochs 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, md_table, write_results  # noqa: E402


def throughput(history: list[dict]) -> float:
    rows = history[1:] if len(history) > 1 else history
    images = sum(h["images"] for h in rows)
    seconds = sum(h["train_seconds"] for h in rows)
    return images / seconds if seconds > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="mtunet")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--n", type=int, default=64, help="training images")
    ap.add_argument("--batch", type=int, default=8, help="batch size (per worker)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: 1 on cuda, 2 on cpu)")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--channels-last", action="store_true", help="channels_last (GPU)")
    ap.add_argument("--compile", action="store_true", help="torch.compile")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import ray
    import torch

    from medloop.ledger.store import Ledger
    from medloop.trainers.dataset import load_arrays
    from medloop.trainers.plain import LoopSettings, train_plain
    from medloop.trainers.toydata import populate, toy_campaign
    from medloop.trainers.train import train_round

    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    workers = args.workers or (1 if gpu else 2)
    folder = Path(tempfile.mkdtemp(prefix="bench-train-"))
    campaign = toy_campaign(
        folder,
        data={"image_size": args.size, "channels": 1},
        model={"name": args.model, "width": args.width, "depth": args.depth, "dropout": 0.2, "options": {}},
        compute={"num_workers": workers, "use_gpu": gpu, "epochs": args.epochs, "batch_size": args.batch,
                 "augment": ["flip"], "amp": args.amp, "channels_last": args.channels_last,
                 "compile": args.compile, "patience": 100},
    )
    ledger = Ledger.open(campaign.ledger)
    populate(campaign, ledger, n_train=args.n, n_val=max(6, args.n // 8))
    train, val = load_arrays(campaign, ledger, "train"), load_arrays(campaign, ledger, "val")
    settings = LoopSettings.from_campaign(campaign)
    rows = []

    t0 = time.perf_counter()
    plain = train_plain(settings, train, val, device=args.device)
    rows.append({"runner": "plain loop", "workers": 1, "img_s": throughput(plain.history),
                 "wall_s": time.perf_counter() - t0, "val_dice": plain.history[-1].get("val_dice"),
                 "val_accuracy": plain.history[-1].get("val_accuracy")})

    ray.init(num_gpus=1 if gpu else 0, include_dashboard=False, log_to_driver=False)
    t0 = time.perf_counter()
    res = train_round(campaign, ledger, round_id=1, resume=False)
    rows.append({"runner": "Ray Train (TorchTrainer)", "workers": workers, "img_s": throughput(res.history),
                 "wall_s": time.perf_counter() - t0, "val_dice": res.history[-1].get("val_dice"),
                 "val_accuracy": res.history[-1].get("val_accuracy")})
    ray.shutdown()
    ratio = rows[1]["img_s"] / rows[0]["img_s"]
    settings_desc = {k: v for k, v in vars(args).items() if k != "out"}
    payload = {"machine": machine(), "settings": settings_desc, "results": rows, "ray_over_plain": ratio,
               "target": "Ray Train on one GPU >= 0.90 x plain loop (issue 4)",
               "gpu_figure": gpu}
    md = md_table(rows, ["runner", "workers", "img_s", "wall_s", "val_dice", "val_accuracy"],
                  ["runner", "workers", "img/s (train, data incl.)", "wall s (start-up incl.)", "val Dice",
                   "val accuracy"], digits=3)
    md += f"\n\nRay / plain throughput: **{ratio:.3f}** (target on one GPU: >= 0.90).\n"
    if not gpu:
        md += "\nCPU run: no GPU figure was taken here; run with `--device cuda` on a GPU machine.\n"
    write_results("bench_train", payload, md, args.out)


if __name__ == "__main__":
    main()
