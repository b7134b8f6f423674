"""Benchmark: T-pass MC-dropout scoring, T full forward passes vs cached encoder + batched decode.

Prints a JSON object and a markdown table (images/s and the cached/full speed-up).
Uses ``medloop.trainers.models.build("mtunet", ...)`` when available, else a local
U-Net-like model. ``--device cuda`` for GPU figures.

    .venv/bin/python bench/bench_mc_sampler.py --passes 10 --batch 8 --size 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from medloop.trainers.models.base import JointModel, JointOutput
from medloop.trainers.uncertainty import score_batch


class LocalUNet(JointModel):
    """Fallback: a 3-level U-Net; encoder deterministic, dropout in decoder and classifier."""

    def __init__(self, in_channels: int = 1, width: int = 16, num_classes: int = 3, p: float = 0.2) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        w = width
        self.e1, self.e2, self.e3 = block(in_channels, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.d2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), block(4 * w, 2 * w)
        self.up1, self.d1 = nn.ConvTranspose2d(2 * w, w, 2, 2), block(2 * w, w)
        self.drop, self.seg = nn.Dropout2d(p), nn.Conv2d(w, 2, 1)
        self.cls = nn.Sequential(nn.Dropout(p), nn.Linear(4 * w, num_classes))

    def encode(self, x):
        s1 = self.e1(x)
        s2 = self.e2(self.pool(s1))
        return s1, s2, self.e3(self.pool(s2))

    def decode(self, f):
        s1, s2, b = f
        d2 = self.d2(torch.cat([self.up2(self.drop(b)), s2], 1))
        d1 = self.d1(torch.cat([self.up1(self.drop(d2)), s1], 1))
        emb = b.mean((2, 3))
        return JointOutput(self.cls(emb), self.seg(self.drop(d1)), {}, emb)


def make_model(width: int) -> tuple[nn.Module, str]:
    try:
        from medloop.trainers.models import build

        return build("mtunet", in_channels=1, num_classes=3, width=width), "mtunet"
    except Exception:  # noqa: BLE001 - any failure falls back to the local model
        return LocalUNet(width=width), "local_unet"


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    model, name = make_model(args.width)
    model = model.to(args.device)
    x = torch.rand(args.batch, 1, args.size, args.size, device=args.device)
    results = {}
    for mode, cached in (("full_passes", False), ("cached_batched", True)):
        sec = timed(lambda cached=cached: score_batch(model, x, passes=args.passes, cached=cached), args.device,
                    args.repeats)
        results[mode] = {"seconds": sec, "img_per_s": args.batch / sec}
    ratio = results["cached_batched"]["img_per_s"] / results["full_passes"]["img_per_s"]
    report = {
        "bench": "mc_sampler", "model": name, "device": args.device, "passes": args.passes,
        "batch": args.batch, "size": args.size, "width": args.width, "threads": torch.get_num_threads(),
        "results": results, "speedup_cached_over_full": ratio,
    }
    print(json.dumps(report, indent=2))
    print()
    print(f"| mode ({name}, T={args.passes}, B={args.batch}, {args.size}px, {args.device}) | s / batch | img/s |")
    print("|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['seconds']:.4f} | {r['img_per_s']:.1f} |")
    print(f"| speed-up cached / full | | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
