"""How precise would class pseudo-labels be, per class, at other thresholds? Read from finished campaigns.

For every round of every campaign given, the unlabeled pool as the select step saw it (the cases it wrote
a ``Selection`` row for) is re-decided by the product's own ``decide_pseudo_labels`` (UPS with the
campaign's measure and ``tau_u``, class balancing off, so each class is seen alone) at each ``tau_c`` in
``--tau-c``, with and without distribution alignment, and each class's accepted count and precision
against the hidden truth (the ``truth`` labels the benchmark campaigns hold) is reported. This is what a
per-class or adaptive threshold (FlexMatch-style) could gain: a class whose pseudo-labels are imprecise at
every threshold cannot be helped by lowering its threshold.

Reads only (``open_readonly``); nothing is trained. Writes ``--out`` (``.json`` + ``.md``).

    .venv/bin/python bench/bench_class_thresholds.py /work/bench-out/label_efficiency/hybrid_ups-s0 \\
        --out bench/results/class_thresholds_busi
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from medloop.config import Campaign, load_campaign
from medloop.ledger.readonly import open_readonly
from medloop.ledger.schema import Label, Round, RoundStep, Selection
from medloop.rounds.scores import load_scores
from medloop.selection import PseudoLabelParams, decide_pseudo_labels


def round_table(
    session: Session, rnd: Round, classes: list[str], params: PseudoLabelParams, taus: Sequence[float]
) -> dict[str, Any]:
    """Per ``tau_c`` and alignment on / off: accepted count and precision per class for one round."""
    pool = load_scores(session, str(rnd.model_version), "pool", len(classes))
    seen = set(session.scalars(select(Selection.sample_id).where(Selection.round_id == rnd.id)).all())
    truth = dict(session.execute(select(Label.sample_id, Label.class_name).where(Label.kind == "truth")).all())
    rows = np.array([int(s) in seen and truth.get(int(s)) in classes for s in pool.sample_ids], dtype=bool)
    true_class = np.array([classes.index(str(truth[int(s)])) if r else -1 for s, r in zip(pool.sample_ids, rows)])
    counts = _human_counts_at(session, rnd, classes)
    out: dict[str, Any] = {"round": rnd.id, "unlabeled": int(rows.sum()),
                           "truth": dict(zip(classes, np.bincount(true_class[rows], minlength=len(classes)).tolist())),
                           "human_class_counts": counts.tolist(), "by_tau": []}
    for tau in taus:
        for align in (False, True):
            dec = decide_pseudo_labels(pool.arrays, ~rows, counts, params, tau_c=tau, class_balance=False,
                                       distribution_alignment=align)
            per_class = {}
            for k, name in enumerate(classes):
                took = rows & dec["accept_class"] & (dec["pseudo_class"] == k)
                n = int(took.sum())
                per_class[name] = {"n": n, "precision": float((true_class[took] == k).mean()) if n else None}
            out["by_tau"].append({"tau_c": tau, "aligned": align, "per_class": per_class})
    return out


def _human_counts_at(session: Session, rnd: Round, classes: list[str]) -> np.ndarray:
    """The human class counts the round's select step used (its detail), else zeros."""
    step = session.get(RoundStep, (rnd.id, "select"))
    counts = (step.detail or {}).get("human_class_counts") if step is not None else None
    return np.asarray(counts if counts else np.zeros(len(classes)), dtype=np.float64)


def campaign_tables(campaign: Campaign, taus: Sequence[float]) -> dict[str, Any]:
    """The per-round tables of one campaign (rounds whose select step wrote its decisions)."""
    classes = list(campaign.data.classes)
    params = PseudoLabelParams.from_config(campaign.selection, policy="ups")
    engine = open_readonly(str(campaign.ledger))
    try:
        with Session(engine) as session:
            rounds = session.scalars(select(Round).where(Round.model_version.is_not(None)).order_by(Round.id)).all()
            tables = [round_table(session, r, classes, params, taus) for r in rounds
                      if session.scalar(select(Selection.id).where(Selection.round_id == r.id).limit(1)) is not None]
    finally:
        engine.dispose()
    return {"campaign": campaign.folder.name, "measure": params.measure, "tau_u": params.tau_u, "rounds": tables}


def markdown(results: list[dict[str, Any]]) -> str:
    """One line per campaign, round, alignment and class; one column per ``tau_c``: accepted / precision."""
    taus = sorted({row["tau_c"] for res in results for rnd in res["rounds"] for row in rnd["by_tau"]})
    lines = ["| campaign | round | aligned | class | " + " | ".join(f"tau_c {t:g}" for t in taus) + " |",
             "|" + "---|" * (4 + len(taus))]
    for res in results:
        for rnd in res["rounds"]:
            for align in (False, True):
                rows = {row["tau_c"]: row["per_class"] for row in rnd["by_tau"] if row["aligned"] == align}
                for name in rnd["truth"]:
                    cells = [f"{v['n']} / {v['precision']:.2f}" if v["n"] else "0" for v in
                             (rows[t][name] for t in taus)]
                    lines.append(f"| {res['campaign']} | {rnd['round']} | {'yes' if align else 'no'} | {name} | "
                                 + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("campaigns", nargs="+", type=Path, help="campaign folders (campaign.toml + ledger)")
    ap.add_argument("--tau-c", default="0.5,0.6,0.7,0.8,0.9", help="comma list of confidence thresholds")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix (.json and .md)")
    args = ap.parse_args(argv)
    taus = [float(t) for t in args.tau_c.split(",")]
    results = [campaign_tables(load_campaign(folder / "campaign.toml"), taus) for folder in args.campaigns]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"bench": "class_thresholds", "campaigns": results}, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
