"""Calibration and noise robustness (Ren, Zou et al., UML, MICCAI 2023, Table 2 style): softmax vs MC-dropout vs
evidential heads.

Two models of the same family are trained with the plain loop on the same split: one with softmax
heads, one with an evidential classification head (``cls_head="evidential"``; the loss adds the
evidential terms). Three predictors on the test split:

* ``softmax``: one deterministic pass of the softmax model; uncertainty = predictive entropy.
* ``mc_dropout``: ``score_batch(method="mc_dropout", passes=T)`` on the softmax model; uncertainty =
  std of the predicted class's probability over the T passes (Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 19).
* ``evidential``: ``score_batch(method="evidential")`` on the evidential model; uncertainty = vacuity K/S.

Gaussian noise N(0, sigma^2) is added to the test images in [0, 1] (clipped) for each sigma; per sigma:
Dice, IoU (mean over lesion images), accuracy, macro F1, ECE, mean entropy and mean method uncertainty.

    .venv/bin/python bench/bench_calibration.py [--busi PATH | --dataset synthetic] [--model mtunet] \
        [--size 64] [--width 8] [--epochs 3] [--passes 10] [--sigmas 0,0.01,0.03,0.05,0.1] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

METHODS = ("softmax", "mc_dropout", "evidential")


def run_method(
    method: str, models: dict, images: np.ndarray, passes: int, device: str, batch: int = 32
) -> dict[str, np.ndarray]:
    """probs (N, K), pred_mask (N, S, S), entropy (N,), uncertainty (N,) on float images in [0, 1]."""
    import torch

    from medloop.trainers.uncertainty import score_batch

    out: dict[str, list] = {"probs": [], "pred_mask": [], "entropy": [], "uncertainty": []}
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s:s + batch]).to(device)
        if method == "softmax":
            sc = score_batch(models["softmax"], x, method="evidential", cls_head="softmax", seg_head="softmax")
            unc = sc.entropy  # one deterministic pass (the 'evidential' method = the single eval-mode pass)
        elif method == "mc_dropout":
            sc = score_batch(models["softmax"], x, method="mc_dropout", passes=passes)
            unc = sc.std
        else:
            sc = score_batch(models["evidential"], x, method="evidential", cls_head="evidential", seg_head="softmax")
            unc = sc.vacuity
        out["probs"].append(sc.probs)
        out["pred_mask"].append(sc.pred_mask)
        out["entropy"].append(sc.entropy)
        out["uncertainty"].append(unc)
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    C.add_data_args(ap)
    ap.add_argument("--model", default="mtunet")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--passes", type=int, default=10, help="MC-dropout passes T")
    ap.add_argument("--sigmas", default="0,0.01,0.03,0.05,0.1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--max-train", type=int, default=0, help="cap on training images (0 = all)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    C.set_threads(args.threads)
    sigmas = [float(s) for s in args.sigmas.split(",")]

    data = C.load_data(args, args.size)
    sp = C.split(data.labels, args.split_seed)
    train_idx = sp["train"][: args.max_train] if args.max_train else sp["train"]
    tr, va = C.arrays(data, train_idx), C.arrays(data, sp["val"])
    models, train_info = {}, {}
    for head in ("softmax", "evidential"):
        settings = C.loop_settings(args.model, size=args.size, width=args.width, epochs=args.epochs,
                                   batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                   cls_head=head, seg_head="softmax")
        models[head], train_info[head] = C.train(settings, tr, va, args.device)
        print(head, train_info[head], file=sys.stderr)

    test = sp["test"]
    clean = data.images[test].astype(np.float32) / 255.0
    labels, masks = data.labels[test], data.masks[test]
    rows = []
    for sigma in sigmas:
        rng = np.random.default_rng(1000 + int(round(sigma * 1e4)))
        noisy = (np.clip(clean + rng.normal(0.0, sigma, clean.shape).astype(np.float32), 0.0, 1.0)
                 if sigma > 0 else clean)
        for method in METHODS:
            r = run_method(method, models, noisy, args.passes, args.device)
            row = {"sigma": sigma, "method": method}
            row.update(C.seg_scores(r["pred_mask"], masks, labels, with_hd95=False))
            row.update(C.cls_scores(r["probs"], labels))
            row["mean_entropy"] = float(np.nanmean(r["entropy"]))
            row["mean_uncertainty"] = float(np.nanmean(r["uncertainty"]))
            rows.append(row)
            print(row, file=sys.stderr)

    cfg = {"dataset": data.name, "model": args.model, "size": args.size, "width": args.width, "epochs": args.epochs,
           "passes": args.passes, "device": args.device, "loop": "plain (train_plain)", "n_train": len(train_idx),
           "n_test": len(test), "sigmas": sigmas, "train": train_info}
    small = args.size < 256 or args.epochs < 50
    md = [f"## Calibration and noise robustness ({data.name}, {args.model})\n",
          f"Trained from scratch with the plain loop on {len(train_idx)} images ({args.size}x{args.size}, width "
          f"{args.width}, {args.epochs} epochs, device {args.device}); test {len(test)} images. "
          f"MC-dropout T = {args.passes}."
          + (" **Small CPU settings.**" if small else ""),
          "uncertainty: softmax = predictive entropy; mc_dropout = std of the predicted class's probability; "
          "evidential = vacuity K/S. Dice/IoU: mean over lesion images. Noise: N(0, sigma^2) on [0, 1] images.\n",
          C.md_table(rows, ["sigma", "method", "dice", "iou", "accuracy", "f1", "auc", "ece", "mean_entropy",
                            "mean_uncertainty"],
                     ["sigma", "head", "Dice", "IoU", "acc", "F1", "AUC", "ECE", "mean entropy", "mean uncertainty"])]
    C.write_results("bench_calibration", {"config": cfg, "rows": rows}, "\n".join(md),
                    Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
