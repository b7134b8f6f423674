"""Dropout placement: cost of T MC-dropout passes against one deterministic pass, and the uncertainty's
quality, side by side on BUSI (the performance issue's "MC sampling close to one pass").

For each placement an mtunet (the campaign default, width ``--width``) is trained with the plain loop
(``medloop.trainers.plain``, the round's trainer, best epoch on validation lesion Dice) on the same
duplicate-aware BUSI split (near-duplicates kept in one split, ``medloop.data.duplicates``; 70 / 15 / 15,
stratified by class), then the test split is scored with ``score_batch`` (the pool scoring's code, cached
sampler, T = ``--passes``):

* ``cpu_cost_vs_one_pass``: seconds of T passes / seconds of one deterministic pass, same batch of
  ``--batch`` test images (median of ``--repeats`` timings after a warm-up);
* ``auroc_error``: AUROC of the class uncertainty (std of the predicted class's probability, the UPS
  measure ``std``) for telling misclassified test cases from correct ones;
* ``ece``: expected calibration error of the mean probabilities (15 bins);
* ``pseudo_precision``: accuracy of the test cases UPS would accept at the campaign defaults
  (confidence >= ``selection.tau_c``, std <= ``selection.tau_u``) and how many it accepts;
* ``seg_auroc_error``: AUROC of the lesion uncertainty (``seg_uncertainty``) for lesion cases whose
  predicted mask has Dice < 0.5; test accuracy and lesion Dice of the mean prediction.

``--seeds 0,1``: one split and one training per seed and placement; the summary per placement is the mean
over seeds of the cost, AUROC, ECE, accuracy and Dice, and the pooled pseudo-label precision (correct accepted
cases over accepted cases, all seeds together: one error among a few dozen accepted cases moves a single seed's
precision by 0.03).

``default``: the cheapest placement whose pooled pseudo-label precision is within 0.02 of the best and whose
mean AUROC is within 0.05 of the best, among those at <= 2.5x one pass (else the current default).
Each placement's result is written to ``--work/<placement>-...-s<seed>.json`` when it is done, so a run resumes.

    .venv/bin/python bench/bench_mc_placement.py --seeds 0,1          # 128 px, width 16, 30 epochs
    .venv/bin/python bench/bench_mc_placement.py --size 64 --width 8 --epochs 2   # smoke test only

Writes bench/results/mc_placement.json and mc_placement.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

PLACEMENTS = {"decoder+classifier": ("decoder", "classifier"),
              "last_decoder+classifier": ("last_decoder", "classifier")}
CURRENT_DEFAULT = "decoder+classifier"


def score(model: Any, images: np.ndarray, passes: int, batch: int) -> dict[str, np.ndarray]:
    import torch

    from medloop.trainers.uncertainty.scoring import score_batch

    parts: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for s in range(0, len(images), batch):
            out = score_batch(model, C.to_tensor(images[s:s + batch]), method="mc_dropout", passes=passes,
                              cached=True)
            for k in ("probs", "pred_class", "confidence", "std", "pred_mask", "seg_uncertainty"):
                parts.setdefault(k, []).append(getattr(out, k))
    return {k: np.concatenate(v) for k, v in parts.items()}


def cost(model: Any, images: np.ndarray, passes: int, repeats: int) -> dict[str, float]:
    import torch

    from medloop.trainers.uncertainty.scoring import score_batch

    x = C.to_tensor(images)
    seconds: dict[str, float] = {}
    with torch.no_grad():
        for key, method, t in (("one_pass_s", "deterministic", 1), ("mc_s", "mc_dropout", passes)):
            score_batch(model, x, method=method, passes=t, cached=True)  # warm-up
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                score_batch(model, x, method=method, passes=t, cached=True)
                runs.append(time.perf_counter() - t0)
            seconds[key] = statistics.median(runs)
    return {**{k: round(v, 3) for k, v in seconds.items()},
            "cpu_cost_vs_one_pass": round(seconds["mc_s"] / seconds["one_pass_s"], 2),
            "mc_images_per_s": round(len(images) / seconds["mc_s"], 1),
            "one_pass_images_per_s": round(len(images) / seconds["one_pass_s"], 1)}


def auroc(errors: np.ndarray, uncertainty: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if errors.all() or not errors.any():
        return None
    return round(float(roc_auc_score(errors.astype(int), uncertainty)), 3)


def quality(scores: dict[str, np.ndarray], labels: np.ndarray, masks: np.ndarray, tau_c: float,
            tau_u: float) -> dict[str, Any]:
    from medloop.trainers import metrics as M

    wrong = scores["pred_class"] != labels
    accept = (scores["confidence"] >= tau_c) & (scores["std"] <= tau_u)
    lesion = np.flatnonzero(M.lesion_cases(masks, C.IGNORE))
    dice = np.asarray([M.lesion_dice(scores["pred_mask"][i:i + 1], masks[i:i + 1], C.IGNORE) for i in lesion])
    return {
        "auroc_error": auroc(wrong, scores["std"]), "errors": int(wrong.sum()),
        "ece": round(float(M.ece(scores["probs"], labels)), 3),
        "pseudo_precision": round(float(1.0 - wrong[accept].mean()), 3) if accept.any() else None,
        "pseudo_accepted": int(accept.sum()),
        "seg_auroc_error": auroc(dice < 0.5, scores["seg_uncertainty"][lesion]),
        "accuracy": round(float(1.0 - wrong.mean()), 3), "dice": round(float(dice.mean()), 3),
        "mean_std": round(float(scores["std"].mean()), 4),
        "mean_seg_uncertainty": round(float(scores["seg_uncertainty"].mean()), 4),
    }


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(statistics.fmean(kept), 3) if kept else None


def over_seeds(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One placement's per-seed rows -> means over seeds, and the precision pooled over every accepted case."""
    accepted = sum(r["pseudo_accepted"] for r in rows)
    correct = sum(round(r["pseudo_precision"] * r["pseudo_accepted"]) for r in rows
                  if r["pseudo_precision"] is not None)
    out: dict[str, Any] = {"placement": rows[0]["placement"], "seeds": [r.get("seed", 0) for r in rows],
                           "pseudo_accepted": accepted, "pseudo_correct": correct,
                           "pseudo_precision": round(correct / accepted, 3) if accepted else None,
                           "errors": sum(r["errors"] for r in rows), "test_cases": sum(r["test_cases"] for r in rows)}
    for k in ("cpu_cost_vs_one_pass", "auroc_error", "ece", "seg_auroc_error", "accuracy", "dice",
              "mc_images_per_s", "one_pass_images_per_s"):
        out[k] = _mean([r.get(k) for r in rows])
    return out


def choose_default(rows: list[dict[str, Any]]) -> str:
    ok = [r for r in rows if r["cpu_cost_vs_one_pass"] <= 2.5 and r["pseudo_precision"] is not None]
    if not ok:
        return CURRENT_DEFAULT
    best_p = max(r["pseudo_precision"] for r in rows if r["pseudo_precision"] is not None)
    best_a = max((r["auroc_error"] for r in rows if r["auroc_error"] is not None), default=0.0)
    good = [r for r in ok if r["pseudo_precision"] >= best_p - 0.02
            and (r["auroc_error"] is None or r["auroc_error"] >= best_a - 0.05)]
    return min(good, key=lambda r: r["cpu_cost_vs_one_pass"])["placement"] if good else CURRENT_DEFAULT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_data_args(ap)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", default="0", help="comma list of split and training seeds")
    ap.add_argument("--placements", nargs="+", default=list(PLACEMENTS), choices=list(PLACEMENTS))
    ap.add_argument("--work", type=Path, default=C.ROOT / "bench" / "out" / "mc_placement")
    ap.add_argument("--out-dir", type=Path, default=C.RESULTS)
    args = ap.parse_args()

    from medloop.config import DataConfig, SelectionConfig
    from medloop.data.duplicates import near_duplicate_groups

    sel = SelectionConfig()
    data = C.load_data(args, args.size)
    groups = near_duplicate_groups([im[0] for im in data.images], DataConfig().duplicate_threshold)
    seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    sizes = {}
    for seed in seeds:
        sp = C.split(data.labels, seed, groups=groups)
        sizes[seed] = (len(sp["train"]), len(sp["val"]), len(sp["test"]))
        for name in args.placements:
            part = args.work / f"{name}-{args.dataset}-{args.size}px-w{args.width}-e{args.epochs}-s{seed}.json"
            if part.exists():
                rows.append({"seed": seed, **json.loads(part.read_text())})
                print(f"{name} seed {seed}: kept {part}", file=sys.stderr)
                continue
            settings = C.loop_settings("mtunet", size=args.size, width=args.width, epochs=args.epochs, seed=seed,
                                       dropout_placement=PLACEMENTS[name])
            model, info = C.train(settings, C.arrays(data, sp["train"]), C.arrays(data, sp["val"]))
            test = sp["test"]
            scores = score(model, data.images[test], args.passes, args.batch)
            row = {"placement": name, "seed": seed, "dropout_placement": list(PLACEMENTS[name]),
                   **cost(model, data.images[test[:args.batch]], args.passes, args.repeats),
                   **quality(scores, data.labels[test], data.masks[test], sel.tau_c, sel.tau_u),
                   "test_cases": int(len(test)), "train": info}
            part.write_text(json.dumps(row, indent=2, default=C.json_default))
            rows.append(row)
            print(f"{name} seed {seed}: {json.dumps({k: v for k, v in row.items() if k != 'train'})}",
                  file=sys.stderr)
    summary = [over_seeds([r for r in rows if r["placement"] == name]) for name in args.placements]
    default = choose_default(summary)
    table = C.md_table(
        summary, ["placement", "cpu_cost_vs_one_pass", "mc_images_per_s", "auroc_error", "errors", "ece",
               "pseudo_precision", "pseudo_accepted", "seg_auroc_error", "accuracy", "dice"],
        ["placement", "T passes / one pass (CPU)", "images/s (T passes)", "AUROC (errors)", "errors", "ECE",
         "pseudo-label precision (pooled)", "accepted", "seg AUROC (Dice < 0.5)", "accuracy", "Dice"])
    per_seed = C.md_table(
        rows, ["placement", "seed", "cpu_cost_vs_one_pass", "auroc_error", "errors", "ece", "pseudo_precision",
               "pseudo_accepted", "accuracy", "dice"],
        ["placement", "seed", "T passes / one pass", "AUROC (errors)", "errors", "ECE", "pseudo-label precision",
         "accepted", "accuracy", "Dice"])
    setup = (f"{data.name} at {args.size} px, mtunet width {args.width}, {args.epochs} epochs (plain loop, best epoch "
             f"on validation Dice), duplicate-aware splits, seeds {seeds} (train / val / test "
             f"{', '.join(f'{a} / {b} / {c}' for a, b, c in sizes.values())}); means over seeds, pseudo-label "
             f"precision pooled over the seeds' accepted cases; test split scored with T = {args.passes} "
             f"(cached sampler); cost on a batch of "
             f"{args.batch}, median of {args.repeats}; UPS thresholds tau_c = {sel.tau_c}, tau_u = {sel.tau_u}. "
             f"Chosen default: **{default}** (rule in the script's docstring). GPU: not measured (no GPU here).")
    payload = {"machine": C.machine(), "dataset": args.dataset, "size": args.size, "width": args.width,
               "epochs": args.epochs, "passes": args.passes, "seeds": seeds,
               "placements": {r["placement"]: {k: r.get(k) for k in (
                   "cpu_cost_vs_one_pass", "auroc_error", "ece", "pseudo_precision", "pseudo_accepted",
                   "pseudo_correct", "seg_auroc_error", "accuracy", "dice", "mc_images_per_s",
                   "one_pass_images_per_s", "seeds")}
                   for r in summary},
               "default": default, "rows": rows, "gpu": None}
    C.write_results("mc_placement", payload,
                    f"# MC-dropout placement: cost and quality\n\n{setup}\n\n{table}\n\nPer seed:\n\n{per_seed}\n",
                    out_dir=args.out_dir)


if __name__ == "__main__":
    main()
