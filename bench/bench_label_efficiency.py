"""Label efficiency: active learning with each acquisition function vs random, with and without UPS.

Per seed: stratified 70/15/15 split; ``--init-fraction`` of the training split starts labeled, the rest
is the pool. Round 0 trains on the initial labels (shared by every arm of that seed). Each round then
scores the pool (``score_batch``, MC-dropout T passes), queues ``--budget`` cases with
``medloop.selection.acquisition_scores`` + ``build_queue``, the oracle answers them from the hidden truth
(class + mask), optionally adds UPS pseudo-labels (``decide_pseudo_labels``, decided again every
round) and trains again (plain loop, warm start). Every arm gets the same annotation budget per round.
Test Dice and accuracy are recorded against the number of human labels; mean and std over seeds.

Full-label reference per seed: the same model trained from scratch on every training label for
``epochs * (rounds + 1)`` epochs (the total the active-learning runs get). Headline: the fewest human
labels at which an arm's mean test Dice and accuracy both reach 95 % of the full-label mean.

    .venv/bin/python bench/bench_label_efficiency.py [--dataset synthetic|busi] [--seeds 0,1,2] \
        [--acquisitions random,entropy,bald,margin,seg_uncertainty,hybrid] [--pseudo none,ups] \
        [--rounds 4] [--budget 16] [--init-fraction 0.1] [--size 32] [--width 4] [--epochs 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402


def plot(summary: list[dict], full: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    arms = list(dict.fromkeys((r["acquisition"], r["pseudo"]) for r in summary))
    for (acq, ps) in arms:
        rs = sorted([r for r in summary if r["acquisition"] == acq and r["pseudo"] == ps], key=lambda r: r["n_human"])
        x = [r["n_human"] for r in rs]
        for ax, key in zip(axes, ("dice", "accuracy")):
            m = np.array([r[f"{key}_mean"] for r in rs])
            s = np.array([r[f"{key}_std"] for r in rs])
            ls = "-" if ps == "none" else "--"
            line, = ax.plot(x, m, ls, marker="o", ms=3, label=f"{acq}{' + UPS' if ps == 'ups' else ''}")
            ax.fill_between(x, m - s, m + s, alpha=0.12, color=line.get_color())
    for ax, key, title in zip(axes, ("dice", "accuracy"), ("test Dice", "test accuracy")):
        ax.axhline(full[f"{key}_mean"], color="k", lw=1, label="all labels")
        ax.axhline(0.95 * full[f"{key}_mean"], color="k", lw=1, ls=":", label="95 % of all labels")
        ax.set_xlabel("human labels")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_data_args(ap, default="synthetic")
    ap.add_argument("--model", default="mtunet")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--acquisitions", default="random,entropy,bald,margin,seg_uncertainty,hybrid",
                    help="vacuity needs an evidential head (--head evidential)")
    ap.add_argument("--pseudo", default="none,ups")
    ap.add_argument("--head", default="softmax", help="classification head: softmax or evidential")
    ap.add_argument("--min-val-dice", type=float, default=0.5,
                    help="segmentation gate: no UPS pseudo-masks while the model's validation Dice is below (0 = off)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--budget", type=int, default=16, help="human labels added per round")
    ap.add_argument("--init-fraction", type=float, default=0.1)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2, help="epochs of round 0 and of every round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    C.set_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    acqs = [a.strip() for a in args.acquisitions.split(",") if a.strip()]
    pseudos = [p.strip() for p in args.pseudo.split(",") if p.strip()]

    data = C.load_data(args, args.size)
    out_dir = Path(args.out) if args.out else C.RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)

    def settings(seed: int, epochs: int):
        return C.loop_settings(args.model, size=args.size, width=args.width, epochs=epochs, batch_size=args.batch_size,
                               lr=args.lr, seed=seed, cls_head=args.head)

    from medloop.selection import acquisition_scores, build_queue, segmentation_gate

    runs, fulls = [], []
    for seed in seeds:
        sp = C.split(data.labels, seed)
        val = C.arrays(data, sp["val"])
        s = settings(seed, args.epochs * (args.rounds + 1))
        m_full, info = C.train(s, C.arrays(data, sp["train"]), val, args.device)
        fulls.append({"seed": seed, "n_human": len(sp["train"]), **C.evaluate(m_full, data, sp["test"], device=args.device,
                                                                              cls_head=s.cls_head, with_hd95=False)})
        print("full", fulls[-1], file=sys.stderr)
        init, _ = C.stratified_subset(data.labels, sp["train"], args.init_fraction, seed)
        s = settings(seed, args.epochs)
        model0, info0 = C.train(s, C.arrays(data, init), val, args.device)
        state0 = C.state_of(model0)
        test0 = C.evaluate(model0, data, sp["test"], device=args.device, cls_head=s.cls_head, with_hd95=False)
        for acq in acqs:
            for ps in pseudos:
                labeled = set(init.tolist())
                model, state, val_dice = model0, state0, info0.get("val_dice")
                runs.append({"seed": seed, "acquisition": acq, "pseudo": ps, "round": 0, "n_human": len(labeled),
                             "n_pseudo": 0, **test0})
                for r in range(1, args.rounds + 1):
                    pool = np.asarray(sorted(set(sp["train"].tolist()) - labeled), np.int64)
                    if len(pool) == 0:
                        break
                    sc = C.score_pool(model, data.images[pool], device=args.device, passes=args.passes,
                                      cls_head=args.head)
                    a = acquisition_scores(acq, sc, **({"seed": seed * 1000 + r} if acq == "random" else {}))
                    q = build_queue(a, np.ones(len(pool), bool), args.budget)
                    labeled |= set(pool[q].tolist())  # the oracle answers from the hidden truth
                    train_arr = C.arrays(data, sorted(labeled))
                    n_pseudo = 0
                    if ps == "ups":
                        rest = np.setdiff1d(np.arange(len(pool)), q)
                        if len(rest):
                            sub = {k: v[rest] for k, v in sc.items()}
                            counts = np.bincount(data.labels[sorted(labeled)], minlength=len(C.CLASSES))
                            allow_masks, _ = segmentation_gate(val_dice, args.min_val_dice)
                            pl = C.pseudo_labels(sub, counts, "ups", allow_masks=allow_masks)
                            use = pl["accept_class"] | pl["accept_mask"]
                            n_pseudo = int(use.sum())
                            if n_pseudo:
                                train_arr = C.concat(train_arr, C.arrays(
                                    data, pool[rest][use], labels=np.where(pl["accept_class"], pl["pseudo_class"], -1)[use],
                                    masks=pl["target_mask"][use], kind="pseudo"))
                    model, info = C.train(s, train_arr, val, args.device, init_state=state)
                    val_dice = info.get("val_dice")
                    state = C.state_of(model)
                    test = C.evaluate(model, data, sp["test"], device=args.device, cls_head=s.cls_head, with_hd95=False)
                    runs.append({"seed": seed, "acquisition": acq, "pseudo": ps, "round": r, "n_human": len(labeled),
                                 "n_pseudo": n_pseudo, **test})
                    print({k: runs[-1][k] for k in ("seed", "acquisition", "pseudo", "round", "n_human", "n_pseudo",
                                                   "dice", "accuracy")}, file=sys.stderr)

    full = {"dice_mean": float(np.mean([f["dice"] for f in fulls])), "dice_std": float(np.std([f["dice"] for f in fulls])),
            "accuracy_mean": float(np.mean([f["accuracy"] for f in fulls])),
            "accuracy_std": float(np.std([f["accuracy"] for f in fulls])), "n_human": fulls[0]["n_human"]}
    summary = []
    for acq in acqs:
        for ps in pseudos:
            for rnd in sorted({r["round"] for r in runs}):
                rs = [r for r in runs if r["acquisition"] == acq and r["pseudo"] == ps and r["round"] == rnd]
                if not rs:
                    continue
                row = {"acquisition": acq, "pseudo": ps, "round": rnd, "n_human": int(np.mean([r["n_human"] for r in rs])),
                       "n_pseudo": float(np.mean([r["n_pseudo"] for r in rs])), "seeds": len(rs)}
                for key in ("dice", "accuracy"):
                    v = np.array([r[key] for r in rs], float)
                    row[f"{key}_mean"], row[f"{key}_std"] = float(np.mean(v)), float(np.std(v))
                summary.append(row)
    headline = []
    for acq in acqs:
        for ps in pseudos:
            rs = sorted([r for r in summary if r["acquisition"] == acq and r["pseudo"] == ps], key=lambda r: r["n_human"])
            hit = next((r for r in rs if r["dice_mean"] >= 0.95 * full["dice_mean"]
                        and r["accuracy_mean"] >= 0.95 * full["accuracy_mean"]), None)
            headline.append({"acquisition": acq, "pseudo": ps,
                             "labels_to_95": hit["n_human"] if hit else f"not within {rs[-1]['n_human'] if rs else 0}",
                             "fraction_of_full": round(hit["n_human"] / full["n_human"], 3) if hit else None})
    png = out_dir / "bench_label_efficiency.png"
    try:
        plot(summary, full, png)
        plot_note = f"![label efficiency]({png.name})"
    except Exception as err:
        plot_note = f"plot failed: {type(err).__name__}: {err}"

    cfg = {"dataset": data.name, "n": len(data), "model": args.model, "head": args.head, "seeds": seeds,
           "acquisitions": acqs, "pseudo": pseudos, "rounds": args.rounds, "budget": args.budget,
           "init_fraction": args.init_fraction, "size": args.size, "width": args.width, "epochs": args.epochs,
           "full_epochs": args.epochs * (args.rounds + 1), "passes": args.passes, "device": args.device,
           "min_val_dice": args.min_val_dice,
           "driver": "direct (train_plain + score_batch + medloop.selection, oracle from truth)"}
    md = [f"## Label efficiency ({data.name}, {args.model}, {len(seeds)} seeds)\n",
          f"{len(data)} cases, split 70/15/15 per seed; start with {args.init_fraction:.0%} of train labeled, "
          f"+{args.budget} human labels per round (oracle) for {args.rounds} rounds; {args.epochs} epochs per round "
          f"(warm start), {args.size}x{args.size}, width {args.width}, MC T = {args.passes}, device {args.device}; "
          f"UPS pseudo-masks only while the validation Dice >= {args.min_val_dice} (segmentation gate). "
          f"Full-label reference: all {full['n_human']} training labels, {cfg['full_epochs']} epochs from scratch: "
          f"Dice {full['dice_mean']:.3f} +- {full['dice_std']:.3f}, accuracy {full['accuracy_mean']:.3f} +- "
          f"{full['accuracy_std']:.3f}. **Small CPU settings.**\n",
          "### Headline: human labels to reach 95 % of the full-label Dice and accuracy (means over seeds)\n",
          C.md_table(headline, ["acquisition", "pseudo", "labels_to_95", "fraction_of_full"],
                     ["acquisition", "pseudo-labels", "human labels", "fraction of all"]),
          "\n### Test Dice and accuracy vs human labels (mean +- std over seeds)\n",
          C.md_table(summary, ["acquisition", "pseudo", "round", "n_human", "n_pseudo", "dice_mean", "dice_std",
                               "accuracy_mean", "accuracy_std"],
                     ["acquisition", "pseudo", "round", "human labels", "pseudo-labels", "Dice", "+-", "acc", "+-"]),
          "\n" + plot_note]
    C.write_results("bench_label_efficiency", {"config": cfg, "full": full, "full_runs": fulls, "headline": headline,
                                               "summary": summary, "runs": runs}, "\n".join(md), out_dir)


if __name__ == "__main__":
    main()
