"""Scoring one 128x128x128 four-sequence volume with T = 10 MC-dropout passes (issue 16's figure).

    .venv/bin/python bench/bench_volume_scoring.py [--size 128] [--passes 10] [--roi 128 --roi 64] [--device cpu]

The product's ``medloop.trainers.uncertainty.volume.score_volume`` (MONAI sliding-window inference,
T passes with dropout on) on a synthetic multimodal phantom (``medloop.data.phantoms3d``), with the
published MTTU-Net (``mttu3d``: 4 sequences, 2 genotype classes, 4 regions; random weights: speed
does not depend on them) and the 3D multi-task U-Net (``mtunet3d``). For each model and patch size:
seconds for one deterministic pass and for T passes, the ratio, and the peak RSS of the process.
Writes ``bench/results/volume_scoring.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--roi", type=int, action="append", default=None, help="patch side (repeatable; default 128, 64)")
    ap.add_argument("--models", default="mttu3d,mtunet3d")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--placement", action="append", default=None,
                    help="model.dropout_placement as a comma list (repeatable; default decoder,classifier)")
    ap.add_argument("--name", default="volume_scoring", help="results name (bench/results/<name>.json / .md)")
    args = ap.parse_args()
    import torch
    from common import machine, md_table, write_results

    from medloop.data.phantoms3d import phantom3d
    from medloop.trainers.models import build
    from medloop.trainers.uncertainty.volume import score_volume

    device = torch.device(args.device)
    vol = torch.from_numpy(phantom3d(0, 0, "idh_wildtype", size=args.size).image).to(device)
    rows = []
    for name, placement in [(n, p) for n in args.models.split(",") for p in args.placement or ["decoder,classifier"]]:
        options = {"in_channels": 4, "num_classes": 2, "seg_classes": 4, "dropout_placement": placement.split(",")}
        if name == "mttu3d":
            options["image_size"] = args.size
        model = build(name, **options).to(device)
        params = sum(p.numel() for p in model.parameters())
        for roi in args.roi or [128, 64]:
            roi = min(roi, args.size)
            timing = {}
            for passes in (1, args.passes):
                score_volume(model, vol, roi_size=(roi,) * 3, passes=1, sw_batch_size=1)  # warm-up
                t0 = time.perf_counter()
                score_volume(model, vol, roi_size=(roi,) * 3, passes=passes, sw_batch_size=1)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                timing[passes] = time.perf_counter() - t0
            rows.append({"model": name, "placement": placement.replace(",", " + "), "params": params, "roi": roi,
                         "one_pass_s": round(timing[1], 2),
                         "mc_s": round(timing[args.passes], 2),
                         "mc_vs_one_pass": round(timing[args.passes] / timing[1], 2),
                         "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)})
            print(rows[-1], file=sys.stderr)
    payload = {"machine": machine(), "size": args.size, "passes": args.passes, "sequences": 4, "device": args.device,
               "rows": rows}
    table = md_table(rows, ["model", "placement", "params", "roi", "one_pass_s", "mc_s", "mc_vs_one_pass",
                            "peak_rss_gib"],
                     ["model", "dropout placement", "parameters", "patch side", "1 pass s", f"T = {args.passes} s",
                      "T / 1", "peak RSS GiB"], digits=2)
    write_results(args.name, payload,
                  f"## One {args.size}^3 four-sequence volume, T = {args.passes} MC-dropout passes ({args.device})\n\n"
                  f"{table}\n")


if __name__ == "__main__":
    main()
