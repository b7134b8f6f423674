"""Pseudo-label selection quality (seed 002 Table VII style): PL vs CPL vs UPS over rounds.

From ``--human-fraction`` (20 %) of the training split with human labels (stratified, seeded), the rest
of the training split is the unlabeled pool whose truth stays hidden from the loop. Round 0 trains on
the human labels only (shared by the three policies). Each round r = 1..R then, per policy:

1. score the pool with the previous round's model: ``score_batch`` MC-dropout, T passes;
2. select pseudo-labels with ``medloop.selection.decide_pseudo_labels`` (policy pl / cpl / ups,
   tau_c, tau_u on the MC std, class-balanced to the human class ratio) -- pseudo-labels are decided
   again every round; UPS masks pass the image-level mask gate and get pixel ignore maps;
3. measure them against the hidden truth: precision and recall per class, pixel Dice of the masks;
4. train on human + pseudo labels (plain loop, warm start from the previous round);
5. test metrics of the new model.

The loop is driven directly (train_plain / score_batch / selection functions on in-memory arrays),
not through the ledger-backed orchestrator, so that three policies x R rounds fit on a small CPU.

    .venv/bin/python bench/bench_pseudo_labels.py [--busi PATH | --dataset synthetic] [--rounds 3] \
        [--size 64] [--width 8] [--epochs 3] [--passes 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_data_args(ap)
    ap.add_argument("--model", default="mtunet")
    ap.add_argument("--policies", default="pl,cpl,ups")
    ap.add_argument("--human-fraction", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of round 0 and of every round")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--passes", type=int, default=10, help="MC-dropout passes T")
    ap.add_argument("--tau-c", type=float, default=0.9)
    ap.add_argument("--tau-u", type=float, default=0.05)
    ap.add_argument("--mask-gate", type=float, default=0.05)
    ap.add_argument("--pixel-tau-u", type=float, default=0.1)
    ap.add_argument("--no-balance", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    C.set_threads(args.threads)

    data = C.load_data(args, args.size)
    sp = C.split(data.labels, args.split_seed)
    human, pool = C.stratified_subset(data.labels, sp["train"], args.human_fraction, args.seed)
    human_counts = np.bincount(data.labels[human], minlength=len(C.CLASSES))
    val = C.arrays(data, sp["val"])

    def settings():
        return C.loop_settings(args.model, size=args.size, width=args.width, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, seed=args.seed)

    s = settings()
    model0, info0 = C.train(s, C.arrays(data, human), val, args.device)
    test0 = C.evaluate(model0, data, sp["test"], device=args.device, cls_head=s.cls_head)
    state0 = C.state_of(model0)
    rows = [{"policy": "(human only)", "round": 0, "n_human": len(human), **{f"test_{k}": v for k, v in test0.items()},
             "train_seconds": info0["train_seconds"]}]
    print(rows[-1], file=sys.stderr)

    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        model, state = model0, state0
        for r in range(1, args.rounds + 1):
            sc = C.score_pool(model, data.images[pool], device=args.device, passes=args.passes)
            pl = C.pseudo_labels(sc, human_counts, policy, tau_c=args.tau_c, tau_u=args.tau_u,
                                 mask_gate=args.mask_gate, pixel_tau_u=args.pixel_tau_u, class_balance=not args.no_balance)
            q = C.pseudo_quality(pl, data.labels[pool], data.masks[pool])
            use = pl["accept_class"] | pl["accept_mask"]
            pseudo = C.arrays(data, pool[use], labels=np.where(pl["accept_class"], pl["pseudo_class"], -1)[use],
                              masks=pl["target_mask"][use], kind="pseudo")
            model, info = C.train(settings(), C.concat(C.arrays(data, human), pseudo), val, args.device, init_state=state)
            state = C.state_of(model)
            test = C.evaluate(model, data, sp["test"], device=args.device, cls_head=s.cls_head)
            rows.append({"policy": policy, "round": r, "n_human": len(human), "n_pool": len(pool), **q,
                         **{f"test_{k}": v for k, v in test.items()}, "train_seconds": info["train_seconds"]})
            print({k: rows[-1][k] for k in ("policy", "round", "n_class", "precision", "test_dice", "test_accuracy")},
                  file=sys.stderr)

    # order of mean precision over rounds
    pols = [p for p in dict.fromkeys(r["policy"] for r in rows) if p != "(human only)"]
    mean_prec = {p: float(np.nanmean([r["precision"] for r in rows if r["policy"] == p])) for p in pols}
    ranked = sorted([p for p in pols if np.isfinite(mean_prec[p])], key=lambda p: -mean_prec[p])
    order = " >= ".join(ranked) + ("; no pseudo-labels: " + ", ".join(p for p in pols if p not in ranked)
                                   if len(ranked) < len(pols) else "")
    pairs = [(a, b) for a, b in (("ups", "cpl"), ("cpl", "pl")) if a in ranked and b in ranked]
    expected = bool(pairs) and len(ranked) == len(pols) and all(mean_prec[a] >= mean_prec[b] for a, b in pairs)

    cfg = {"dataset": data.name, "model": args.model, "size": args.size, "width": args.width, "epochs": args.epochs,
           "rounds": args.rounds, "passes": args.passes, "tau_c": args.tau_c, "tau_u": args.tau_u,
           "mask_gate": args.mask_gate, "pixel_tau_u": args.pixel_tau_u, "class_balance": not args.no_balance,
           "n_human": len(human), "n_pool": len(pool), "n_val": len(sp["val"]), "n_test": len(sp["test"]),
           "human_counts": human_counts.tolist(), "device": args.device,
           "driver": "direct (train_plain + score_batch + selection), not the ledger orchestrator"}
    small = args.size < 256 or args.epochs < 50
    cols = ["policy", "round", "n_class"] + [f"n_{c}" for c in C.CLASSES] + ["precision"] + \
        [f"precision_{c}" for c in C.CLASSES] + [f"recall_{c}" for c in C.CLASSES] + ["n_mask", "mask_dice"]
    hdr = ["policy", "round", "# PL"] + [f"# {c}" for c in C.CLASSES] + ["precision"] + \
        [f"prec {c}" for c in C.CLASSES] + [f"recall {c}" for c in C.CLASSES] + ["# masks", "mask Dice"]
    tcols = ["policy", "round", "test_dice", "test_iou", "test_hd95", "test_accuracy", "test_f1", "test_auc", "test_ece"]
    md = [f"## Pseudo-label selection quality ({data.name}, {args.model})\n",
          f"{len(human)} human labels ({args.human_fraction:.0%} of train, class counts {human_counts.tolist()}), "
          f"pool {len(pool)} with hidden truth, val {len(sp['val'])}, test {len(sp['test'])}. {args.rounds} rounds, "
          f"{args.epochs} epochs each (warm start), {args.size}x{args.size}, width {args.width}, MC T = {args.passes}, "
          f"tau_c {args.tau_c}, tau_u {args.tau_u} (MC std), class balance {'on' if not args.no_balance else 'off'}, "
          f"device {args.device}. Driven directly (plain loop + score_batch + medloop.selection), not through the "
          "ledger orchestrator." + (" **Small CPU settings.**" if small else ""),
          "\nPseudo-labels against the hidden truth (precision over accepted class pseudo-labels; recall = accepted "
          "and correct / pool cases of that class; mask Dice on non-ignored pixels of accepted masks):\n",
          C.md_table(rows[1:], cols, hdr),
          "\nTest metrics after each round (round 0 = human labels only):\n",
          C.md_table(rows, tcols, ["policy", "round", "Dice", "IoU", "HD95", "acc", "F1", "AUC", "ECE"]),
          f"\nMean precision over rounds: {', '.join(f'{p} {v:.3f}' for p, v in mean_prec.items())}. "
          f"Order found: **{order}** ({'matches' if expected else 'does not match (or cannot confirm)'} the expected "
          "UPS >= CPL >= PL)."]
    C.write_results("bench_pseudo_labels", {"config": cfg, "rows": rows, "mean_precision": mean_prec, "order": order,
                                            "matches_expected": expected}, "\n".join(md),
                    Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
