"""One round of a volume campaign whose volumes are larger than the network's input (``data.patch_size``).

    .venv/bin/python bench/bench_volume_patches.py [--n 16] [--size 128] [--patch 64] [--epochs 2] [--passes 10]

What a user runs: synthetic four-sequence MRI phantoms (``medloop.data.phantoms3d``) of ``size``^3 voxels written
as NIfTI files, ``medloop.data.ingest.ingest`` (generic layout), then one ``run_round`` (sync -> train on random
patches with whole-grid sliding-window validation -> MC scoring of the pool over the whole grid -> selection ->
the oracle's push -> report, MLflow included) with ``data.patch_size`` = ``patch``^3 and the published MTTU-Net
(``mttu``). The wall time of each step comes from the ledger's ``RoundStep`` rows; with it, training patches/s
(patches drawn per epoch x epochs / train step), pool volumes scored per second, and the peak RSS of the process.
Writes ``bench/results/volume_patches.json`` and ``.md``; the campaign lives in ``bench/out/volume_patches``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
OUT = ROOT / "bench" / "out" / "volume_patches"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16, help="phantom volumes")
    ap.add_argument("--size", type=int, default=128, help="volume side (voxels)")
    ap.add_argument("--patch", type=int, default=64, help="patch side the model trains on")
    ap.add_argument("--model", default="mttu")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--passes", type=int, default=10, help="uncertainty.mc_passes")
    ap.add_argument("--workers", type=int, default=0, help="compute.num_workers (0: in-process, n: Ray Train)")
    args = ap.parse_args()

    from common import machine, md_table, write_results
    from sqlalchemy import func, select

    from medloop.config import parse_campaign
    from medloop.data.ingest import ingest
    from medloop.data.phantoms3d import write_phantom_folder
    from medloop.ledger import Ledger, Prediction, Round, RoundStep, Sample
    from medloop.rounds.orchestrator import run_round

    data = OUT / f"phantoms-{args.size}"
    t0 = time.perf_counter()
    write_phantom_folder(data, args.n, seed=0, size=args.size)
    write_s = time.perf_counter() - t0
    camp_dir = OUT / "campaign"
    shutil.rmtree(camp_dir, ignore_errors=True)
    side = [args.size] * 3
    campaign = parse_campaign({
        "name": "volume-patches", "root": str(camp_dir),
        "data": {"source": "generic", "path": str(data), "classes": ["idh_mutant", "idh_wildtype"],
                 "volume_size": side, "patch_size": [args.patch] * 3, "unlabeled_fraction": 0.5},
        "model": {"name": args.model, "width": args.width},
        "uncertainty": {"mc_passes": args.passes},
        "compute": {"num_workers": args.workers, "epochs": args.epochs, "batch_size": 2, "score_batch_size": 1},
        "selection": {"budget": 2},
        "labeling": {"enabled": False, "oracle": True},
    }, "<bench>")
    t0 = time.perf_counter()
    ingest(campaign, "generic")
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outcome = run_round(campaign, force=True)
    round_s = time.perf_counter() - t0
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        rows = list(s.scalars(select(RoundStep).where(RoundStep.round_id == outcome.round_id)))
        steps = {st.step: (st.finished_at - st.started_at).total_seconds() for st in rows
                 if st.started_at and st.finished_at}
        train_detail = next((dict(st.detail or {}) for st in rows if st.step == "train"), {})
        trained_on = dict(train_detail.get("trained_on") or {})
        history = list(train_detail.get("history") or [])
        rnd = s.get(Round, outcome.round_id)
        metrics = dict(rnd.metrics or {})
        scored = int(s.scalar(select(func.count()).select_from(Prediction)
                              .where(Prediction.round_id == outcome.round_id)) or 0)
        splits = {str(k): int(n) for k, n in s.execute(select(Sample.split, func.count()).group_by(Sample.split))}
    ledger.close()
    # one random patch per training item an epoch, at least compute.min_epoch_samples items
    n_train = max(int(trained_on.get("human", 0)) + int(trained_on.get("pseudo", 0)),
                  campaign.compute.min_epoch_samples)
    train_s = steps.get("train")
    score_s = steps.get("score")
    payload = {
        "machine": machine(), "status": outcome.status, "volumes": args.n, "size": args.size, "patch": args.patch,
        "sequences": 4, "model": args.model, "width": args.width, "epochs": args.epochs, "mc_passes": args.passes,
        "workers": args.workers, "splits": splits, "trained_on": trained_on, "patches_per_epoch": n_train,
        "write_phantoms_s": round(write_s, 1), "ingest_s": round(ingest_s, 1),
        "round_s": round(round_s, 1), "steps_s": {k: round(v, 1) for k, v in steps.items()},
        # the epochs' own training time (the train step adds whole-grid validation each epoch, the checkpoint, MLflow)
        "train_patches_per_s": round(sum(h.get("images", 0) for h in history)
                                     / max(1e-9, sum(h.get("train_seconds", 0) for h in history)), 3),
        "train_epoch_seconds": [round(h.get("train_seconds", 0), 1) for h in history],
        "train_step_other_s": round(train_s - sum(h.get("train_seconds", 0) for h in history), 1) if train_s else None,
        "scored_volumes": scored, "score_s_per_volume": round(score_s / scored, 2) if score_s and scored else None,
        "val_dice": metrics.get("dice"), "val_accuracy": metrics.get("accuracy"),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    rows = [{"step": k, "seconds": round(v, 1)} for k, v in steps.items()]
    text = (f"## One round on {args.n} four-sequence {args.size}^3 volumes, the model on {args.patch}^3 patches\n\n"
            f"`{args.model}` width {args.width}, {args.epochs} epochs, T = {args.passes} MC passes, "
            f"compute.num_workers = {args.workers}; splits {splits}.\n\n"
            + md_table(rows, ["step", "seconds"], digits=1)
            + f"\n\nIngest {payload['ingest_s']} s; the round {payload['round_s']} s; training "
              f"{payload['train_patches_per_s']} patches/s (epochs {payload['train_epoch_seconds']} s; the rest of the "
              f"train step, mostly whole-grid validation, {payload['train_step_other_s']} s); "
              f"scoring {payload['score_s_per_volume']} s per pool volume "
              f"({scored} volumes, whole grid by sliding window); peak RSS {payload['peak_rss_gib']} GiB.\n")
    write_results("volume_patches", payload, text)


if __name__ == "__main__":
    main()
