"""The round's ``score`` step on BUSI: MC-dropout scoring of the pool and validation split through Ray Data.

    .venv/bin/python bench/bench_score_step.py [--size 128] [--threads 1,auto] [--repeat 2]

What runs is the product's scoring (``medloop.trainers.score.score_samples``, which the round's ``score``
step calls with ``splits=("pool", "val")``): Ray Data decode tasks, one ``Scorer`` actor
(``compute.score_actors = 1``), T = ``uncertainty.mc_passes`` cached MC-dropout passes per image, the masks
and maps written to the store and the ``Prediction`` rows to the ledger. The campaign is the
label-efficiency benchmark's (``bench_label_efficiency.py``: BUSI ingested by the product at ``--size`` px,
split 0.80 / 0.05 / 0.15, 22 labelled training cases, the rest of the training split in the pool:
477 pool + 31 validation cases at seed 0), built once in ``--out``. The checkpoint is the campaign's model
(mtunet width 16) as built, untrained: the cost of a pass does not depend on the weights.

Each setting of ``--threads`` (``1``: the actor's torch threads as Ray set them before
``compute.score_threads`` existed, one; ``auto``: the product's default, the cluster's CPUs / actors) is
timed ``--repeat`` times, the settings alternating, each under a model version of its own (nothing
skipped); the local Ray is started before the first timed call. Writes ``bench/results/score_step.json``
and ``.md``: seconds, images/s, the threads the actor reported, CPU load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import campaign_runner as R  # noqa: E402
import common as C  # noqa: E402


def campaign_settings(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """The label-efficiency benchmark's campaign at seed ``--seed`` (no arm overrides)."""
    n_cases = R.count_cases("busi", args.busi, 0)
    train_count = R.expected_train_count(n_cases, [0.8, 0.05, 0.15])
    ns = argparse.Namespace(dataset="busi", busi=args.busi, size=args.size, split=[0.8, 0.05, 0.15],
                            epochs=1, model="mtunet", width=args.width, budget=18)
    settings = R.base_settings(ns, args.seed, train_count=train_count, init_labels=22)
    return {"name": "score-step-bench", "root": str(folder), **settings}


def checkpoint_for(campaign: Any, folder: Path) -> str:
    """The campaign's model, untrained, saved as a checkpoint (once)."""
    from medloop.trainers.checkpoints import build_model, save_checkpoint
    from medloop.trainers.plain import LoopSettings

    target = folder / "untrained-checkpoint"
    if not target.exists():
        settings = LoopSettings.from_campaign(campaign)
        save_checkpoint(target, build_model(settings.model), {**settings.meta(), "global_step": 0, "epoch": 0,
                                                                "metrics": {}})
    return str(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busi", default=str(R.DEFAULT_BUSI))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", default="1,auto", help="comma list of 1, 2, ... or auto")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", default=str(R.OUT_ROOT / "score_step"))
    args = ap.parse_args()

    import tomli_w
    from sqlalchemy import func, select

    from medloop.config import load_campaign
    from medloop.ledger.schema import Sample
    from medloop.ledger.store import Ledger
    from medloop.trainers.ray_local import ensure_ray, shutdown_local_ray
    from medloop.trainers.score import score_samples

    folder = Path(args.out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "campaign.toml").write_text(tomli_w.dumps(campaign_settings(args, folder)))
    campaign = load_campaign(folder / "campaign.toml")
    R.ensure_ingested(campaign, "busi", args.busi)
    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        per_split = dict(s.execute(select(Sample.split, func.count()).group_by(Sample.split)).all())
    checkpoint = checkpoint_for(campaign, folder)
    ensure_ray(campaign)

    settings = [t.strip() for t in args.threads.split(",") if t.strip()]
    rows: list[dict[str, Any]] = []
    stamp = time.strftime("%Y%m%d%H%M%S")
    for rep in range(args.repeat):
        for setting in settings:
            threads = None if setting == "auto" else int(setting)
            c = campaign.model_copy(update={"compute": campaign.compute.model_copy(update={"score_threads": threads})})
            cpu0, t0 = os.times(), time.perf_counter()
            report = score_samples(c, ledger, round_id=1, checkpoint_path=checkpoint,
                                   model_version=f"bench-{stamp}-{setting}-{rep}", splits=("pool", "val"))
            seconds = time.perf_counter() - t0
            cpu1 = os.times()
            row = {"threads_setting": setting, "run": rep + 1, "images": report.written, "seconds": round(seconds, 2),
                   "images_per_s": round(report.written / seconds, 2),
                   "actor_torch_threads": report.extra.get("torch_threads"),
                   "driver_cpu_s": round((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system), 1),
                   "load_1m": round(os.getloadavg()[0], 2)}
            rows.append(row)
            print(row, file=sys.stderr, flush=True)
    shutdown_local_ray()
    ledger.close()

    summary = {}
    for setting in settings:
        mine = [r for r in rows if r["threads_setting"] == setting]
        summary[setting] = {"median_seconds": round(statistics.median(r["seconds"] for r in mine), 2),
                            "median_images_per_s": round(statistics.median(r["images_per_s"] for r in mine), 2),
                            "actor_torch_threads": mine[0]["actor_torch_threads"]}
    payload = {"dataset": "busi", "image_size": args.size, "model": "mtunet", "width": args.width,
               "mc_passes": campaign.uncertainty.mc_passes, "score_batch_size": campaign.compute.score_batch_size,
               "score_actors": campaign.compute.score_actors, "splits": per_split, "summary": summary, "rows": rows}
    text = (f"# The round's score step on BUSI\n\nBUSI at {args.size} px, mtunet width {args.width} (untrained "
            f"weights), the pool and validation split of the label-efficiency campaign (seed {args.seed}: "
            f"{per_split.get('pool', 0)} pool + {per_split.get('val', 0)} validation cases), "
            f"T = {campaign.uncertainty.mc_passes} MC passes, one Ray Data scoring actor, batch "
            f"{campaign.compute.score_batch_size}. `threads_setting` 1: one torch thread in the actor (what Ray "
            f"gave a one-CPU actor before `compute.score_threads`); auto: the default, the cluster's CPUs / actors.\n\n"
            + C.md_table(rows, ["threads_setting", "run", "images", "seconds", "images_per_s", "actor_torch_threads",
                                "driver_cpu_s", "load_1m"]))
    C.write_results("score_step", payload, text)


if __name__ == "__main__":
    main()
