"""The round's ``select`` step on a large pool (target: 1,000,000 pool cases in <= 30 s and <= 4 GiB RSS).

    .venv/bin/python bench/bench_select_step.py [--pool 1000000] [--out bench/out/select_step]

What runs is the product's own ``select`` step (``medloop.rounds.steps.select.select_step``) inside
``run_round`` (lock, state machine, one transaction with its ``done`` state), on a SQLite ledger built
here once (cached in ``--out``, copied fresh for every run): ``--pool`` pool cases with a prediction of
model ``round-1`` each, ``--val`` validation cases and ``--train`` training cases with human labels (the
calibration gate and the class ratio), predictions drawn so that part of the pool passes the UPS
thresholds. Only the steps around it are stand-ins (``sync``, ``push`` and ``report`` do nothing;
``train`` records the model version and a validation Dice; ``score`` is the prediction rows already
written). The run happens in a child process, so its peak RSS (``VmHWM``) is the select step's plus
the interpreter and imports (reported separately: ``rss_before_gib``).

Writes ``bench/results/select_step_1m.json`` (``pool``, ``seconds``, ``peak_rss_gib``, ...) and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

CLASSES = ["normal", "benign", "malignant"]
TARGET_S, TARGET_GIB = 30.0, 4.0


def campaign_dict(root: Path) -> dict:
    return {"name": "select-bench", "root": str(root), "data": {"classes": CLASSES, "no_lesion_class": "normal"},
            "labeling": {"enabled": False, "oracle": False}, "selection": {"budget": 64}}


def build(folder: Path, pool: int, val: int, train: int, seed: int = 0) -> Path:
    """The campaign folder with its ledger (samples, human labels, predictions); skipped when present."""
    from sqlalchemy import insert

    from medloop.config import parse_campaign
    from medloop.ledger import Label, Ledger, Prediction, Sample

    done = folder / "built.json"
    if done.exists() and json.loads(done.read_text()) == {"pool": pool, "val": val, "train": train, "seed": seed}:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    campaign = parse_campaign(campaign_dict(folder), "<bench>")
    ledger = Ledger.open(campaign.ledger)
    rng = np.random.default_rng(seed)
    splits = ["train"] * train + ["val"] * val + ["pool"] * pool
    n = len(splits)
    t0 = time.perf_counter()
    with ledger.transaction() as s:
        s.connection().execute(insert(Sample.__table__), [
            {"id": i + 1, "uid": f"s{i}", "content_hash": f"h{i}", "image_path": f"images/s{i}.png",
             "source": "bench", "split": sp, "height": 256, "width": 256, "channels": 1}
            for i, sp in enumerate(splits)])
    truth = rng.choice(3, size=n, p=[0.2, 0.55, 0.25])
    with ledger.transaction() as s:
        s.connection().execute(insert(Label.__table__), [
            {"sample_id": i + 1, "kind": "human", "class_name": CLASSES[int(truth[i])], "author": "bench",
             "active": True} for i in range(train + val)])
    # a model that is right 80 % of the time; its confidence sharp on a third of the cases
    pred = np.where(rng.random(n) < 0.8, truth, rng.integers(0, 3, n))
    sharp = rng.random(n) < 0.35
    conc = np.where(sharp, 40.0, 2.0)[:, None]
    alpha = np.ones((n, 3)) + conc * np.eye(3)[pred]
    gamma = rng.standard_gamma(alpha)
    probs = gamma / gamma.sum(1, keepdims=True)
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    std = np.where(sharp, rng.uniform(0.0, 0.06, n), rng.uniform(0.03, 0.3, n))
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(1)
    first = train  # predictions for val + pool (as the score step writes them)
    for start in range(first, n, 50_000):
        stop = min(n, start + 50_000)
        with ledger.transaction() as s:
            s.connection().execute(insert(Prediction.__table__), [{
                "round_id": 1, "sample_id": i + 1, "model_version": "round-1", "probs": probs[i].tolist(),
                "pred_class": int(probs[i].argmax()), "confidence": float(probs[i].max()), "std": float(std[i]),
                "entropy": float(entropy[i]), "mutual_info": float(std[i]) / 2, "vacuity": None,
                "margin": float(margin[i]),
                "seg_uncertainty": float(std[i]), "seg_uncertainty_image": float(std[i]) / 4,
                "lesion_fraction": 0.0 if probs[i].argmax() == 0 else 0.1, "mask_path": None, "umap_path": None,
            } for i in range(start, stop)])
    ledger.close()
    print(f"built {n:,} samples and {n - first:,} predictions in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    done.write_text(json.dumps({"pool": pool, "val": val, "train": train, "seed": seed}))
    return folder


def peak_rss_gib() -> float:
    """This process's peak resident set (VmHWM: reset at exec, unlike ``ru_maxrss``, which a child
    inherits from the parent it was forked from)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_child(folder: Path) -> dict:
    """In this (child) process: one round with the real select step; its seconds and this process's peak RSS."""
    from medloop.config import parse_campaign
    from medloop.rounds.orchestrator import run_round
    from medloop.rounds.steps import STEP_FUNCTIONS

    campaign = parse_campaign(campaign_dict(folder), "<bench>")
    rss_before = peak_rss_gib()
    timing: dict[str, float] = {}

    def train(ctx):  # noqa: ANN001, ANN202 - records what the real train step records for select
        with ctx.ledger.transaction() as s:
            rnd = ctx.round(s)
            rnd.checkpoint_path, rnd.model_version = str(folder / "no-checkpoint"), "round-1"
            ctx.complete(s, {"best_metrics": {"val_dice": 0.8}, "model_version": "round-1"})
        return None

    def timed_select(ctx):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        detail = STEP_FUNCTIONS["select"](ctx)
        timing["select"] = time.perf_counter() - t0
        return detail

    nothing = lambda ctx: {}  # noqa: E731
    steps = {"sync": nothing, "train": train, "score": nothing, "select": timed_select, "push": nothing,
             "report": nothing}
    out = run_round(campaign, force=True, steps=steps, extras={"tracking": False})
    from medloop.ledger import Ledger
    from medloop.rounds import state

    led = Ledger.open(campaign.ledger, create=False)
    with led.reading() as s:
        detail = state.step_detail(s, out.round_id, "select")
    led.close()
    return {"status": out.status, "seconds": round(timing["select"], 2),
            "peak_rss_gib": round(peak_rss_gib(), 3),
            "rss_before_gib": round(rss_before, 3),
            "pseudo_labels": detail.get("pseudo_labels"), "queue_size": detail.get("queue_size"),
            "audit_size": detail.get("audit_size"), "rejected": detail.get("rejected"),
            "pool_scored": detail.get("pool_scored")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pool", type=int, default=1_000_000)
    ap.add_argument("--val", type=int, default=2_000)
    ap.add_argument("--train", type=int, default=500)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "select_step")
    ap.add_argument("--name", default=None, help="result name (default select_step_1m for 1,000,000)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(run_child(args.child)))
        return
    from common import machine, md_table, write_results

    cached = build(args.out / f"pool-{args.pool}", args.pool, args.val, args.train)
    run = args.out / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(cached, run)  # the select step writes; every run starts from the same ledger
    info = machine()
    child = subprocess.run([sys.executable, __file__, "--child", str(run)], capture_output=True, text=True,
                           check=False)
    if child.returncode != 0:
        sys.exit(f"the select run failed:\n{child.stderr[-4000:]}")
    res = json.loads(child.stdout.strip().splitlines()[-1])
    res.update(pool=args.pool, target_s=TARGET_S, target_gib=TARGET_GIB,
               meets_target=res["seconds"] <= TARGET_S and res["peak_rss_gib"] <= TARGET_GIB)
    name = args.name or ("select_step_1m" if args.pool == 1_000_000 else f"select_step_{args.pool}")
    table = md_table([res], ["pool", "seconds", "peak_rss_gib", "rss_before_gib", "pseudo_labels", "queue_size",
                             "rejected", "meets_target"],
                     ["pool cases", "select s", "peak RSS GiB", "RSS before GiB", "pseudo-labels", "queued",
                      "rejected rows", "meets target"], digits=2)
    write_results(name, {"machine": info, **res}, f"## select step on {args.pool:,} pool cases\n\n{table}\n")


if __name__ == "__main__":
    main()
