"""Supervised reference on BUSI: each model from scratch on 100 % of the training labels.

Fixed stratified 70/15/15 split (``medloop.data.splits.assign_splits``, ``--split-seed``), plain
single-process loop (``medloop.trainers.plain.train_plain``: AdamW, flips, best epoch on validation
Dice+accuracy), then one deterministic pass on the test split: Dice, IoU, HD95 (pixels; mean over
test images with a lesion), accuracy, macro F1, macro one-vs-rest AUC, ECE (15 bins).

CPU defaults are small (64x64, width 8, 3 epochs); the paper settings need a GPU
(``--size 256 --width 16 --epochs 100 --device cuda``).

    .venv/bin/python bench/bench_supervised.py [--busi PATH] [--models mtunet,jrl,...] \
        [--size 64] [--width 8] [--epochs 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

ANCHORS = [
    {"model": "U-Net + cls head (Al Shafi, Zunayed et al., TIM/UPA, Table 1)", "iou": 0.668, "dice": 0.8005,
     "accuracy": 0.865},
    {"model": "TIM+UPA+HMSF, proposed (Al Shafi, Zunayed et al., TIM/UPA, Table 1)", "iou": 0.745, "accuracy": 0.906},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_data_args(ap)
    ap.add_argument("--models", default=",".join(C.MODELS))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--max-train", type=int, default=0, help="cap on training images (0 = all; smoke tests)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = ap.parse_args()
    C.set_threads(args.threads)

    data = C.load_data(args, args.size)
    sp = C.split(data.labels, args.split_seed)
    train_idx = sp["train"][: args.max_train] if args.max_train else sp["train"]
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        settings = C.loop_settings(name, size=args.size, width=args.width, epochs=args.epochs,
                                   batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        row = {"model": name, "cls_head": settings.cls_head}
        try:
            model, info = C.train(settings, C.arrays(data, train_idx), C.arrays(data, sp["val"]), args.device)
            from medloop.trainers.models import count_parameters

            t0 = time.perf_counter()
            row.update(C.evaluate(model, data, sp["test"], device=args.device, cls_head=settings.cls_head))
            row.update(info, params=count_parameters(model), eval_seconds=round(time.perf_counter() - t0, 2))
        except Exception as err:  # report a failing model, keep the others
            row["error"] = f"{type(err).__name__}: {err}"
        print(row, file=sys.stderr)
        rows.append(row)

    cfg = {"dataset": data.name, "n": len(data), "size": args.size, "width": args.width, "epochs": args.epochs,
           "batch_size": args.batch_size, "lr": args.lr, "device": args.device, "loop": "plain (train_plain)",
           "split": {k: len(v) for k, v in sp.items()}, "n_train_used": len(train_idx),
           "split_seed": args.split_seed, "seed": args.seed}
    small = args.size < 256 or args.epochs < 50
    md = [f"## Supervised reference ({data.name}, 100 % of the training labels)\n",
          f"Split 70/15/15 stratified, seed {args.split_seed}: train {len(train_idx)} / val {len(sp['val'])} / "
          f"test {len(sp['test'])}. Plain single-process loop, {args.size}x{args.size} grey, width {args.width}, "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, device {args.device}, from scratch."
          + (" **Small CPU settings: far below the papers' settings; not comparable with the anchors.**"
             if small else ""),
          "Dice / IoU / HD95 (pixels at this size): mean over test images with a lesion. F1 macro, AUC macro OvR, "
          "ECE 15 bins. uml uses its evidential heads, the others softmax.\n",
          C.md_table(rows, ["model", "params", "dice", "iou", "hd95", "accuracy", "f1", "auc", "ece", "epochs_run",
                            "train_seconds", "error"],
                     ["model", "params", "Dice", "IoU", "HD95", "acc", "F1", "AUC", "ECE", "epochs", "train s",
                      "error"]),
          "\nAnchors (Al Shafi, Zunayed et al., TIM/UPA, Table 1; ImageNet-pretrained encoders, all 780 BUSI images, "
          "256x256 — not directly comparable):\n",
          C.md_table(ANCHORS, ["model", "dice", "iou", "accuracy"], ["model", "Dice", "IoU", "acc"])]
    C.write_results("bench_supervised", {"config": cfg, "rows": rows, "anchors": ANCHORS}, "\n".join(md),
                    Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
