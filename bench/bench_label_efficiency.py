"""Label efficiency of medloop itself: real campaigns, one per arm and seed, run round by round.

Every arm is a small set of campaign overrides (``ARMS``) on shared settings; the product runs the
rounds (``bench/campaign_runner.py``: ``medloop.data.ingest.ingest`` once, then
``medloop.rounds.orchestrator.run_round`` with the oracle answering the queue from the hidden truth),
and after every round the round's checkpoint is evaluated on the test split. Result files:
``bench/results/label_efficiency/<arm>-s<seed>.json`` (one row per round, rewritten after each round;
a rerun continues where it stopped). ``--summarise`` reads them all and writes
``bench/results/label_efficiency_busi.json`` + ``.png`` and prints a markdown table.

Arms (``--arms``, comma list):

* ``full``: the reference, every training and validation label (``data.unlabeled_fraction = 0``), one
  round of ``--full-epochs`` epochs;
* ``random``: random acquisition, no pseudo-label;
* ``hybrid``: hybrid acquisition (class + segmentation uncertainty), no pseudo-label;
* ``hybrid_ups``: hybrid acquisition + UPS pseudo-labels (the product's default policy, gates included);
* ``hybrid_ups_semi``: the same + ``[training] semi = "fixmatch"`` (its settings as recorded in the result
  files, so finished campaigns resume; the results of 2026-11-23 to 25 predate both gates, ``semi_seg_gate``
  and ``semi_cls_gate``, on by default since 2026-11-25: they ran with the unlabeled terms from the first step);
* ``hybrid_ups_semi_gate``: the same with ``semi_seg_gate = true``: the pixel term only while the student's
  validation Dice passes the segmentation gate (its seed-1 rounds ran with the class gate off, then the default);
* ``hybrid_ups_semi_gates``: the same + ``semi_cls_gate = true``: the class term only while the student's
  validation ECE passes the calibration gate (both gates: the product's semi-supervised defaults);
* ``hybrid_ups_align``: ``hybrid_ups`` with ``selection.distribution_alignment = true`` (class pseudo-labels
  decided on the pool's probabilities aligned to the human class ratio);
* ``hybrid_ups_mt``: the same with ``[training] semi = "mean_teacher"`` (the other semi-supervised variant);
* ``random_ups``, ``random_ups_semi_gates``: ``hybrid_ups`` and ``hybrid_ups_semi_gates`` with random
  acquisition (random beat hybrid on test Dice without pseudo-labels, so it is the best acquisition by Dice);
* ``hybrid_last_decoder``: ``hybrid`` with ``model.dropout_placement = ["last_decoder", "classifier"]``
  (cheap MC sampling: does the acquisition still pick as well?); ``hybrid_ups_last_decoder``: ``hybrid_ups``
  so (are the pseudo-labels and pseudo-masks, decided on that placement's smaller pixel std, as good?);
* ``entropy``, ``seg_uncertainty``: other acquisitions, no pseudo-label;
* ``pl``, ``cpl``, ``ups``: no annotation after the start (budget 0), pseudo-labels by that policy
  (the pseudo-label quality measurement of ``bench_pseudo_labels.py``).

"No pseudo-label" is ``selection.policy = "none"`` (no class and no mask pseudo-label). Shared settings:
``--size 128``, mtunet width 16, ``--epochs 30`` per round, ``--rounds 5``, ``--budget 18`` cases queued per round,
``data.split = 0.80,0.05,0.15`` (validation labels count as human labels, so validation is small),
``--init-labels 22`` labelled training cases at the start; ``data.seed = compute.seed = selection.seed``
= the seed, so every arm of a seed has the same split and test set. Everything else is the product
default (Ray Train workers, MC passes, thresholds, gates, MLflow).

    .venv/bin/python bench/bench_label_efficiency.py --arms full,hybrid --seeds 0,1,2
    .venv/bin/python bench/bench_label_efficiency.py --summarise
    .venv/bin/python bench/bench_label_efficiency.py --dataset synthetic --size 32 --width 4 --epochs 1 \\
        --rounds 2 --budget 8 --init-labels 12 --seeds 0 --set compute.num_workers=0   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import campaign_runner as R  # noqa: E402

BENCH = "label_efficiency"
FULL = "full"
NO_PSEUDO = {"policy": "none"}

#: arm -> campaign overrides on the shared settings (FULL also gets one round of --full-epochs epochs)
ARMS: dict[str, dict[str, Any]] = {
    FULL: {"data": {"unlabeled_fraction": 0.0}, "selection": dict(NO_PSEUDO)},
    "random": {"selection": {"acquisition": "random", **NO_PSEUDO}},
    "hybrid": {"selection": {"acquisition": "hybrid", **NO_PSEUDO}},
    "hybrid_ups": {"selection": {"acquisition": "hybrid", "policy": "ups"}},
    "hybrid_ups_semi": {"selection": {"acquisition": "hybrid", "policy": "ups"}, "training": {"semi": "fixmatch"}},
    "hybrid_ups_semi_gate": {"selection": {"acquisition": "hybrid", "policy": "ups"},
                             "training": {"semi": "fixmatch", "semi_seg_gate": True}},
    "hybrid_ups_semi_gates": {"selection": {"acquisition": "hybrid", "policy": "ups"},
                              "training": {"semi": "fixmatch", "semi_seg_gate": True, "semi_cls_gate": True}},
    "hybrid_ups_mt": {"selection": {"acquisition": "hybrid", "policy": "ups"}, "training": {"semi": "mean_teacher"}},
    "random_ups": {"selection": {"acquisition": "random", "policy": "ups"}},
    "random_ups_semi_gates": {"selection": {"acquisition": "random", "policy": "ups"},
                              "training": {"semi": "fixmatch", "semi_seg_gate": True, "semi_cls_gate": True}},
    "hybrid_ups_semi_da": {"selection": {"acquisition": "hybrid", "policy": "ups"},
                           "training": {"semi": "fixmatch", "distribution_alignment": True}},
    "hybrid_ups_align": {"selection": {"acquisition": "hybrid", "policy": "ups", "distribution_alignment": True}},
    "hybrid_last_decoder": {"selection": {"acquisition": "hybrid", **NO_PSEUDO},
                            "model": {"dropout_placement": ["last_decoder", "classifier"]}},
    "hybrid_ups_last_decoder": {"selection": {"acquisition": "hybrid", "policy": "ups"},
                                "model": {"dropout_placement": ["last_decoder", "classifier"]}},
    "entropy": {"selection": {"acquisition": "entropy", **NO_PSEUDO}},
    "seg_uncertainty": {"selection": {"acquisition": "seg_uncertainty", **NO_PSEUDO}},
    "pl": {"selection": {"policy": "pl", "budget": 0, "audit_fraction": 0.0}},
    "cpl": {"selection": {"policy": "cpl", "budget": 0, "audit_fraction": 0.0}},
    "ups": {"selection": {"policy": "ups", "budget": 0, "audit_fraction": 0.0}},
}
DEFAULT_ARMS = "full,random,hybrid,hybrid_ups,hybrid_ups_semi"
#: per-round summary keys: (name in the summary, where in a row)
SUMMARY_KEYS = {
    "human_labels": ("human_labels",), "dice": ("test", "dice"), "accuracy": ("test", "accuracy"),
    "iou": ("test", "iou"), "hd95": ("test", "hd95"), "f1": ("test", "f1"), "auc": ("test", "auc"),
    "ece": ("test", "ece"),
    "empty_rate": ("test", "empty_rate"), "pseudo_labels": ("pseudo_labels",), "pseudo_masks": ("pseudo_masks",),
    "pseudo_precision": ("pseudo_precision",), "pseudo_mask_dice": ("pseudo_mask_dice",),
}


def arm_plan(arm: str, args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """(campaign overrides, rounds) of an arm."""
    if arm not in ARMS:
        raise SystemExit(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")
    over = json.loads(json.dumps(ARMS[arm]))
    if arm == FULL:
        return R.deep_merge(over, {"compute": {"epochs": args.full_epochs}}), 1
    return over, args.rounds


def plan_runs(args: argparse.Namespace, arms: list[str], seeds: list[int]) -> list[R.ArmRun]:
    out_dir, res_dir = R.folders(args, BENCH)
    n_cases = R.count_cases(args.dataset, args.lidc if args.dataset == "lidc" else args.busi, args.n_synthetic)
    train_count = R.expected_train_count(n_cases, args.split)
    runs = []
    for seed in seeds:
        for arm in arms:
            over, rounds = arm_plan(arm, args)
            runs.append(R.make_run(args, arm, seed, over, rounds, out_dir=out_dir, results_dir=res_dir,
                                   prefix="le", train_count=train_count, init_labels=args.init_labels))
    return runs


def run(args: argparse.Namespace, extras: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    meta = {"bench": BENCH, "command": R.command_line(), "machine": R.machine(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results = []
    for r in plan_runs(args, arms, R.seeds_of(args)):
        print(f"== {r.arm} seed {r.seed}: {r.rounds} round(s) in {r.folder} -> {r.result_file}", file=sys.stderr)
        results.append(R.run_arm(r, extras=extras, meta=meta, echo=lambda s: print(s, file=sys.stderr)))
    return results


# ---- summary ------------------------------------------------------------------------------------------


def _get(row: dict[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = row
    for p in path:
        v = v.get(p) if isinstance(v, dict) else None
    return v


def arm_rounds(files: list[dict[str, Any]], arm: str) -> list[dict[str, Any]]:
    """Per round of ``arm``: mean and std over seeds of every SUMMARY_KEYS value, and the seeds."""
    by_round: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for f in files:
        if f["arm"] == arm:
            for row in f["rows"]:
                by_round.setdefault(int(row["round"]), []).append((int(f["seed"]), row))
    out = []
    for rnd in sorted(by_round):
        rows = by_round[rnd]
        entry: dict[str, Any] = {"round": rnd, "seeds": sorted(s for s, _ in rows)}
        for key, path in SUMMARY_KEYS.items():
            m, s = R.mean_std(_get(r, path) for _, r in rows)
            entry[key], entry[f"{key}_std"] = m, s
        entry["per_seed"] = {str(s): {"human_labels": r.get("human_labels"), "dice": _get(r, ("test", "dice")),
                                      "accuracy": _get(r, ("test", "accuracy"))} for s, r in rows}
        out.append(entry)
    return out


def labels_to_95(rounds: list[dict[str, Any]], full: dict[str, Any]) -> dict[str, Any] | None:
    """The fewest mean human labels at which the mean test Dice AND accuracy reach 95 % of the full-label means."""
    if full.get("dice") is None or full.get("accuracy") is None or not full.get("human_labels"):
        return None
    hits = [r for r in rounds if r["dice"] is not None and r["accuracy"] is not None and r["human_labels"]
            and r["dice"] >= 0.95 * full["dice"] and r["accuracy"] >= 0.95 * full["accuracy"]]
    if not hits:
        return None
    best = min(hits, key=lambda r: r["human_labels"])
    return {"round": best["round"], "human_labels": best["human_labels"],
            "fraction": best["human_labels"] / full["human_labels"]}


def gain_at(summary: dict[str, list[dict[str, Any]]], full: dict[str, Any], a: str = "hybrid_ups_semi",
            b: str = "hybrid", fractions: tuple[float, ...] = (0.10, 0.20)) -> dict[str, Any]:
    """Test Dice of ``a`` minus ``b`` at the rounds whose mean human labels are nearest to each fraction of
    the reference's labels; mean and std over the seeds both arms have at those rounds."""
    out: dict[str, Any] = {}
    if a not in summary or b not in summary or not full.get("human_labels"):
        return out
    for f in fractions:
        target = f * full["human_labels"]
        pick = {}
        for arm in (a, b):
            rs = [r for r in summary[arm] if r["human_labels"] is not None]
            pick[arm] = min(rs, key=lambda r: (abs(r["human_labels"] - target), r["round"])) if rs else None
        if pick[a] is None or pick[b] is None:
            out[f"{round(f * 100)}%"] = None
            continue
        common = sorted(set(pick[a]["per_seed"]) & set(pick[b]["per_seed"]), key=int)
        diffs = {s: pick[a]["per_seed"][s]["dice"] - pick[b]["per_seed"][s]["dice"] for s in common
                 if pick[a]["per_seed"][s]["dice"] is not None and pick[b]["per_seed"][s]["dice"] is not None}
        m, sd = R.mean_std(diffs.values())
        out[f"{round(f * 100)}%"] = {
            "target_human_labels": target,
            a: {"round": pick[a]["round"], "human_labels": pick[a]["human_labels"], "dice": pick[a]["dice"]},
            b: {"round": pick[b]["round"], "human_labels": pick[b]["human_labels"], "dice": pick[b]["dice"]},
            "dice_gain": m, "dice_gain_std": sd, "per_seed": diffs,
        }
    return out


def plot(summary: dict[str, list[dict[str, Any]]], full: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm, rounds in summary.items():
        rs = [r for r in rounds if r["human_labels"] is not None]
        if not rs:
            continue
        x = np.array([r["human_labels"] for r in rs])
        for ax, key in zip(axes, ("dice", "accuracy")):
            m = np.array([np.nan if r[key] is None else r[key] for r in rs], float)
            s = np.array([0.0 if r[f"{key}_std"] is None else r[f"{key}_std"] for r in rs], float)
            line, = ax.plot(x, m, marker="o", ms=3, label=arm)
            ax.fill_between(x, m - s, m + s, alpha=0.12, color=line.get_color())
    for ax, key, name in zip(axes, ("dice", "accuracy"), ("test Dice", "test accuracy")):
        if full.get(key) is not None:
            ax.axhline(full[key], color="k", lw=1, label=f"all labels ({R.fmt(full.get('human_labels'), 0)})")
            ax.axhline(0.95 * full[key], color="k", lw=1, ls=":", label="95 % of all labels")
        ax.set_xlabel("human labels (training + validation)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summary: dict[str, list[dict[str, Any]]], full: dict[str, Any]) -> str:
    def pm(r: dict[str, Any], k: str) -> str:
        m, s = r.get(k), r.get(f"{k}_std")
        return "-" if m is None else (R.fmt(m) if not s else f"{R.fmt(m)} ± {R.fmt(s)}")

    lines = ["| arm | round | human labels | Dice | accuracy | ECE | pseudo precision | pseudo-mask Dice | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    if full:
        lines.append(f"| {FULL} | 1 | {R.fmt(full.get('human_labels'), 1)} | {pm(full, 'dice')} | "
                     f"{pm(full, 'accuracy')} | {pm(full, 'ece')} | - | - | {len(full.get('seeds', []))} |")
    for arm, rounds in summary.items():
        for r in rounds:
            lines.append(f"| {arm} | {r['round']} | {R.fmt(r['human_labels'], 1)} | {pm(r, 'dice')} | "
                         f"{pm(r, 'accuracy')} | {pm(r, 'ece')} | {pm(r, 'pseudo_precision')} | "
                         f"{pm(r, 'pseudo_mask_dice')} | {len(r['seeds'])} |")
    return "\n".join(lines)


def result_paths(res_dir: Path, reference_dir: str | None) -> list[Path]:
    """The result files a summary reads: every arm's in ``res_dir``, the full arm's from ``reference_dir``
    when one is given."""
    paths = sorted(Path(res_dir).glob("*-s*.json"))
    if reference_dir is None:
        return paths
    return ([p for p in paths if not p.name.startswith(f"{FULL}-s")]
            + sorted(Path(reference_dir).glob(f"{FULL}-s*.json")))


def summarise(args: argparse.Namespace) -> dict[str, Any]:
    _, res_dir = R.folders(args, BENCH)
    paths = result_paths(res_dir, args.reference_results)
    files = [json.loads(p.read_text()) for p in paths]
    if not files:
        raise SystemExit(f"no result file in {res_dir}; run some arms first")
    arms = list(dict.fromkeys(f["arm"] for f in sorted(files, key=lambda f: list(ARMS).index(f["arm"])
                                                      if f["arm"] in ARMS else len(ARMS))))
    full_rounds = arm_rounds(files, FULL) if FULL in arms else []
    full: dict[str, Any] = {}
    if full_rounds:
        last = full_rounds[-1]
        full = {k: last[k] for k in ("human_labels", "human_labels_std", "dice", "dice_std", "accuracy",
                                     "accuracy_std", "iou", "iou_std", "hd95", "hd95_std", "f1", "f1_std",
                                     "ece", "ece_std", "empty_rate", "empty_rate_std")}
        full["seeds"] = last["seeds"]
    summary = {arm: arm_rounds(files, arm) for arm in arms if arm != FULL}
    campaigns = [f["campaign"] for f in files]
    sizes = sorted({str(c["data"]["volume_size"]) if "volume_size" in c["data"] else c["data"]["image_size"]
                    for c in campaigns}, key=str)
    dataset = files[0].get("dataset", args.dataset)
    payload = {
        "name": f"label_efficiency_{dataset}",
        "command": R.command_line(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": R.machine(),
        "dataset": dataset,
        "image_size": sizes[0] if len(sizes) == 1 else sizes,
        "seeds": sorted({int(f["seed"]) for f in files}),
        "settings": {k: files[0].get(k) for k in ("init_labels", "expected_train_count")}
        | {"campaign_example": next((f["campaign"] for f in files if f["arm"] != FULL), campaigns[0])},
        "full_label": full,
        "arms": [{"name": arm, "rounds": rounds,
                  **{k: [r[k] for r in rounds] for k in SUMMARY_KEYS},
                  **{f"{k}_std": [r[f"{k}_std"] for r in rounds] for k in SUMMARY_KEYS}}
                 for arm, rounds in summary.items()],
        "labels_to_95": {arm: labels_to_95(rounds, full) for arm, rounds in summary.items()},
        "gain_at": gain_at(summary, full),
        "gain_at_by_arm": {arm: gain_at(summary, full, a=arm) for arm in summary if "_ups_semi" in arm},
        # the same against random acquisition (the other supervised-only arm; the better one is the baseline)
        "gain_over_random_by_arm": {arm: gain_at(summary, full, a=arm, b="random") for arm in summary
                                    if "_ups" in arm},
        "result_files": sorted(str(p.relative_to(R.ROOT)) if p.is_relative_to(R.ROOT) else str(p)
                               for p in paths),
    }
    # bench/results/label_efficiency_busi.json; a results folder of another name adds that name
    tag = "" if Path(res_dir).name.startswith(BENCH) else f"_{Path(res_dir).name}"
    out_json = (Path(args.summary_out) if args.summary_out
                else Path(res_dir).parent / f"label_efficiency_{dataset}{tag}.json")
    R.write_json_atomic(out_json, payload)
    png = out_json.with_suffix(".png")
    try:
        plot(summary, full, png, f"medloop label efficiency, {dataset} {payload['image_size']} px, "
                                 f"seeds {payload['seeds']}")
    except Exception as err:  # noqa: BLE001 - the numbers matter more than the picture
        print(f"plot failed: {type(err).__name__}: {err}", file=sys.stderr)
    md = markdown(summary, full)
    print(md)
    for arm, hit in payload["labels_to_95"].items():
        print(f"{arm}: 95 % of the full-label Dice and accuracy "
              + (f"at {hit['human_labels']:.0f} human labels ({hit['fraction']:.0%} of the reference, round "
                 f"{hit['round']})" if hit else "not reached"))
    print(f"\nwrote {out_json} and {png}", file=sys.stderr)
    return payload


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    R.add_common_args(ap, size=128, epochs=30, rounds=5, budget=18, init_labels=22, split="0.80,0.05,0.15",
                      seeds="0,1,2", n_synthetic=480)
    ap.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma list of {', '.join(ARMS)}")
    ap.add_argument("--full-epochs", type=int, default=60, help="epochs of the full-label reference's one round")
    ap.add_argument("--summarise", "--summarize", action="store_true", help="summarise the result files, run nothing")
    ap.add_argument("--reference-results", default=None,
                    help="with --summarise: read the full arm's result files from this folder instead of --results "
                         "(its campaigns must have the same effective settings; their files say which)")
    ap.add_argument("--summary-out", default=None,
                    help="with --summarise: write the summary JSON (and the .png beside it) here instead of "
                         "label_efficiency_<dataset>[_<results folder>].json beside the results folder")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.summarise:
        summarise(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
