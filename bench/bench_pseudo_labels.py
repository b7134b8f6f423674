"""Pseudo-label quality of medloop's rounds: PL vs CPL vs UPS (Cheng et al., MTTU-Net, IEEE TMI 2022,
Table VII style), measured on real campaigns.

The arms ``pl``, ``cpl`` and ``ups`` of ``bench_label_efficiency.py`` (``ARMS``): ``--init-labels``
labelled training cases, no annotation after the start (``selection.budget = 0``, no audit), the rest of
the training split is the pool whose truth stays hidden from the loop. Each round the product selects
pseudo-labels with that policy (class-balanced, the calibration and segmentation gates, pixel-wise UPS
masks), and the next round trains on them. Per round, from the result files of
``bench/campaign_runner.py``: precision of the class pseudo-labels against the hidden truth (overall and
per predicted class), Dice of the pseudo-masks on their kept pixels, and the test metrics of the round's
model. Results: ``bench/results/pseudo_labels/<arm>-s<seed>.json`` (resumable, as the label-efficiency
runs), then ``bench/results/bench_pseudo_labels.{json,md}``.

    .venv/bin/python bench/bench_pseudo_labels.py [--busi PATH | --dataset synthetic] [--policies pl,cpl,ups] \\
        [--rounds 3] [--size 64] [--epochs 10] [--init-labels 100] [--seeds 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_label_efficiency as LE  # noqa: E402
import campaign_runner as R  # noqa: E402
import common as C  # noqa: E402

BENCH = "pseudo_labels"
POLICIES = ("pl", "cpl", "ups")


def run(args: argparse.Namespace, extras: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out_dir, res_dir = R.folders(args, BENCH)
    n_cases = R.count_cases(args.dataset, args.busi, args.n_synthetic)
    train_count = R.expected_train_count(n_cases, args.split)
    meta = {"bench": BENCH, "command": C.command_line(), "machine": C.machine()}
    results = []
    for seed in R.seeds_of(args):
        for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
            if policy not in POLICIES:
                raise SystemExit(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
            over, rounds = LE.arm_plan(policy, args)
            r = R.make_run(args, policy, seed, over, rounds, out_dir=out_dir, results_dir=res_dir, prefix="pl",
                           train_count=train_count, init_labels=args.init_labels)
            print(f"== {policy} seed {seed}: {rounds} round(s) in {r.folder}", file=sys.stderr)
            results.append(R.run_arm(r, extras=extras, meta=meta, echo=lambda s: print(s, file=sys.stderr)))
    return results


def summarise(args: argparse.Namespace, results: list[dict[str, Any]]) -> dict[str, Any]:
    classes = results[0]["campaign"].get("data", {}).get("classes") or ["normal", "benign", "malignant"]
    rows = []
    for res in results:
        for r in res["rows"]:
            t = r["test"]
            row = {"policy": res["arm"], "seed": res["seed"], "round": r["round"], "human_labels": r["human_labels"],
                   "n_class": sum((r.get("pseudo_per_class") or {}).values()), "n_mask": r["pseudo_masks"],
                   "precision": r["pseudo_precision"], "mask_dice": r["pseudo_mask_dice"],
                   "gate": r["gates"].get("calibration_open"), "seg_gate": r["gates"].get("segmentation_open"),
                   "test_dice": t.get("dice"), "test_accuracy": t.get("accuracy"), "test_ece": t.get("ece")}
            for c in classes:
                pc = (r.get("pseudo_class_precision") or {}).get(c) or {}
                row[f"n_{c}"] = (r.get("pseudo_per_class") or {}).get(c, 0)
                row[f"precision_{c}"] = pc.get("precision")
            rows.append(row)
    pols = list(dict.fromkeys(r["policy"] for r in rows))
    mean_prec = {p: R.mean_std(r["precision"] for r in rows if r["policy"] == p)[0] for p in pols}
    ranked = sorted([p for p in pols if mean_prec[p] is not None], key=lambda p: -mean_prec[p])
    order = " >= ".join(ranked) + ("; no class pseudo-label: " + ", ".join(p for p in pols if p not in ranked)
                                   if len(ranked) < len(pols) else "")
    pairs = [(a, b) for a, b in (("ups", "cpl"), ("cpl", "pl")) if a in ranked and b in ranked]
    expected = bool(pairs) and len(ranked) == len(pols) and all(mean_prec[a] >= mean_prec[b] for a, b in pairs)
    c0 = results[0]["campaign"]
    cfg = {"dataset": args.dataset, "size": args.size, "width": args.width, "epochs": args.epochs,
           "rounds": args.rounds, "init_labels": args.init_labels, "split": args.split, "seeds": R.seeds_of(args),
           "selection": {k: v for k, v in c0.get("selection", {}).items() if k != "policy"},
           "driver": "medloop.rounds.orchestrator.run_round (bench/campaign_runner.py)"}
    cols = ["policy", "seed", "round", "human_labels", "gate", "seg_gate", "n_class"] + [f"n_{c}" for c in classes] + \
        ["precision"] + [f"precision_{c}" for c in classes] + ["n_mask", "mask_dice", "test_dice", "test_accuracy",
                                                               "test_ece"]
    hdr = ["policy", "seed", "round", "human", "gate", "mask gate", "# PL"] + [f"# {c}" for c in classes] + \
        ["precision"] + [f"prec {c}" for c in classes] + ["# masks", "mask Dice", "test Dice", "test acc", "test ECE"]
    md = [f"## Pseudo-label quality in medloop rounds ({args.dataset}, {args.size} px)\n",
          f"{args.init_labels} labelled training cases, no annotation after the start, {args.rounds} rounds of "
          f"{args.epochs} epochs, mtunet width {args.width}; the product's selection (class-balanced, calibration "
          "and segmentation gates, pixel-wise UPS masks) and the oracle's hidden truth for precision. The "
          "pseudo-labels of round r train round r + 1.\n",
          C.md_table(rows, cols, hdr),
          f"\nMean precision over rounds: {', '.join(f'{p} {R.fmt(v)}' for p, v in mean_prec.items())}. "
          f"Order found: **{order}** ({'matches' if expected else 'does not match (or cannot confirm)'} the "
          "expected UPS >= CPL >= PL)."]
    payload = {"config": cfg, "rows": rows, "mean_precision": mean_prec, "order": order,
               "matches_expected": expected}
    _, res_dir = R.folders(args, BENCH)
    out = res_dir.parent if args.dataset == "busi" else res_dir  # bench/results/bench_pseudo_labels.* for BUSI
    C.write_results("bench_pseudo_labels", payload, "\n".join(md), out)
    return payload


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    R.add_common_args(ap, size=64, epochs=10, rounds=3, budget=0, init_labels=100, split="0.70,0.15,0.15",
                      seeds="0", n_synthetic=480)
    ap.add_argument("--policies", default="pl,cpl,ups")
    ap.add_argument("--summarise", "--summarize", action="store_true",
                    help="only summarise the result files of the policies and seeds asked for")
    args = ap.parse_args(argv)
    if args.summarise:
        _, res_dir = R.folders(args, BENCH)
        wanted = {(p.strip(), s) for p in args.policies.split(",") for s in R.seeds_of(args)}
        results = [f for f in R.load_results(res_dir) if (f["arm"], int(f["seed"])) in wanted]
        if not results:
            raise SystemExit(f"no result file in {res_dir}")
    else:
        results = run(args)
    summarise(args, results)


if __name__ == "__main__":
    main()
