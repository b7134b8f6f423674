"""Pseudo-mask quality against hidden truth as a function of the mask gate, from a campaign's own rounds.

For each finished round of a campaign (any arm of ``bench_label_efficiency.py``), the round's pool
predictions are read from the ledger (``medloop.rounds.scores.load_scores``) and the product's own
decision (``medloop.selection.decide_pseudo_labels`` with policy ``ups``, the no-lesion consistency
rule and every gate but the segmentation gate) is re-run for a grid of ``selection.mask_gate`` values.
Each accepted pseudo-mask is made as the select step makes it (``pseudo_mask``: pixels confident AND
certain) and compared with the truth mask on its kept pixels. Output: per round and gate value, the
number of pseudo-masks, their mean Dice and the share with Dice >= 0.85; JSON + a markdown table.
Nothing in the campaign is changed.

    .venv/bin/python bench/bench_mask_gate.py bench/out/label_efficiency/hybrid-s0/campaign.toml \\
        [--gates 0.02,0.03,0.05,0.075,0.1,0.15,0.2] [--out bench/results/mask_gate_busi.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import common as C  # noqa: E402


def truth_masks(session: Any) -> dict[int, str]:
    from medloop.ledger.schema import Label

    rows = session.execute(select(Label.sample_id, Label.mask_path).where(
        Label.kind == "truth", Label.mask_path.is_not(None)))
    return {int(sid): str(path) for sid, path in rows}


def round_versions(session: Any) -> list[tuple[int, str]]:
    from medloop.ledger.schema import Round

    rows = session.execute(select(Round.id, Round.model_version).where(Round.model_version.is_not(None))
                           .order_by(Round.id))
    return [(int(r), str(v)) for r, v in rows]


def mask_quality(campaign: Any, gates: list[float]) -> list[dict[str, Any]]:
    from medloop.data.imagestore import ImageStore, prob_map_path
    from medloop.ledger.store import Ledger
    from medloop.rounds.scores import human_class_counts, load_scores
    from medloop.selection import PseudoLabelParams, decide_pseudo_labels, pseudo_mask
    from medloop.trainers.metrics import dice

    classes = campaign.data.classes
    sel = campaign.selection
    store = ImageStore(campaign.store)
    ledger = Ledger.open(campaign.ledger)
    out: list[dict[str, Any]] = []
    try:
        with ledger.reading() as s:
            truth = truth_masks(s)
            versions = round_versions(s)
            counts = human_class_counts(s, classes)
            tables = [(r, v, load_scores(s, v, "pool", len(classes))) for r, v in versions]
        for round_id, version, pool in tables:
            if not len(pool):
                continue
            dice_of: dict[int, float] = {}
            for gate in gates:
                params = PseudoLabelParams.from_config(
                    sel, policy="ups", mask_gate=gate,
                    no_lesion_class=classes.index("normal") if "normal" in classes else None)
                dec = decide_pseudo_labels(pool.arrays, pool.has_human, counts, params)
                scores = []
                for i in np.flatnonzero(dec["accept_mask"]).tolist():
                    sid = int(pool.sample_ids[i])
                    if sid not in truth or not pool.mask_paths[i] or not pool.umap_paths[i]:
                        continue
                    if i not in dice_of:
                        upath = str(pool.umap_paths[i])
                        prob = store.load_array(prob_map_path(upath)).astype(np.float32)
                        mask, ignore = pseudo_mask(store.load_mask(str(pool.mask_paths[i])), store.load_array(upath),
                                                   sel.pixel_tau_u, fg_prob=prob, tau_c=sel.tau_c)
                        # the truth mask is stored at the image's native size, the pseudo-mask at the model's:
                        # compared at the model size, as the report step does
                        target = store.load_mask_at(truth[sid], mask.shape).copy()
                        target[ignore] = 255
                        dice_of[i] = dice(mask, target)
                    scores.append(dice_of[i])
                arr = np.asarray(scores, dtype=np.float64)
                out.append({
                    "round": round_id, "model_version": version, "mask_gate": gate, "pseudo_masks": int(arr.size),
                    "dice_mean": float(arr.mean()) if arr.size else None,
                    "share_dice_085": float((arr >= 0.85).mean()) if arr.size else None,
                    "pool": len(pool),
                })
    finally:
        ledger.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("campaign", help="campaign.toml of a finished benchmark campaign")
    ap.add_argument("--gates", default="0.02,0.03,0.05,0.075,0.1,0.15,0.2")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "mask_gate_busi.json"))
    args = ap.parse_args()
    from medloop.config import load_campaign

    campaign = load_campaign(args.campaign)
    gates = [float(g) for g in args.gates.split(",")]
    rows = mask_quality(campaign, gates)
    payload = {"campaign": str(args.campaign), "image_size": campaign.data.image_size,
               "tau_c": campaign.selection.tau_c, "pixel_tau_u": campaign.selection.pixel_tau_u,
               "machine": C.machine(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=1))
    print("| round | mask_gate | pseudo-masks | mean Dice vs truth | Dice >= 0.85 |")
    print("|---|---|---|---|---|")
    for r in rows:
        d = "-" if r["dice_mean"] is None else f"{r['dice_mean']:.3f}"
        q = "-" if r["share_dice_085"] is None else f"{r['share_dice_085']:.2f}"
        print(f"| {r['round']} | {r['mask_gate']} | {r['pseudo_masks']} | {d} | {q} |")


if __name__ == "__main__":
    main()
