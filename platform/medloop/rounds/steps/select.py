"""select: pseudo-labels (class and mask decided separately) and the annotation queue.

Everything the step decides is written in ONE transaction together with its ``done`` state:
old pseudo-labels retired, new ones added (``add_pseudo_labels``: a human label always wins),
``Selection`` rows, ``AnnotationTask`` rows in state ``intent`` for the queue and the flagged audit
sample, and the calibration gate's reason in ``Round.notes``. A crash before that commit leaves
nothing behind; pseudo-mask files written before it are overwritten identically on the re-run.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from sqlalchemy import Table, insert, select

from medloop.data.imagestore import prob_map_path, region_prob_path
from medloop.ledger.schema import AnnotationTask, Selection
from medloop.ledger.store import PseudoLabelRow, add_pseudo_labels, retire_pseudo_labels
from medloop.selection import (
    PseudoLabelParams,
    acquisition_scores,
    audit_sample,
    build_queue,
    calibration_gate,
    decide_pseudo_labels,
    pseudo_mask,
    reason_names,
    segmentation_gate,
)

from .. import state
from ..context import StepContext
from ..scores import ScoreTable, human_class_counts, load_scores, val_ece
from ._util import store_of


def _pseudo_mask_files(ctx: StepContext, table: ScoreTable, idx: np.ndarray) -> dict[int, tuple[str, str]]:
    """Write pseudo-mask + ignore map for rows ``idx``; row -> (mask rel, ignore rel)."""
    store = store_of(ctx)
    out: dict[int, tuple[str, str]] = {}
    sel = ctx.campaign.selection
    for i in idx.tolist():
        mpath, upath = table.mask_paths[i], table.umap_paths[i]
        if not mpath or not upath:
            continue
        ppath, rpath = prob_map_path(upath), region_prob_path(upath)
        prob = store.load_array(ppath).astype(np.float32) if store.path(ppath).exists() else None
        if store.path(rpath).exists():  # a multi-region model (data.regions): its label map and region confidence
            mask, ignore = pseudo_mask(store.load_label_map(mpath), store.load_array(upath), sel.pixel_tau_u,
                                       tau_c=sel.tau_c, region_prob=store.load_array(rpath).astype(np.float32))
        else:
            mask, ignore = pseudo_mask(store.load_mask(mpath), store.load_array(upath), sel.pixel_tau_u,
                                       fg_prob=prob, tau_c=sel.tau_c)
        uid = table.uids[i]
        out[i] = (store.put_mask(f"pseudo/round-{ctx.round_id}/{uid}", mask),
                  store.put_array(f"ignore/round-{ctx.round_id}/{uid}", ignore))
    return out


def _acquisition(ctx: StepContext, table: ScoreTable) -> np.ndarray:
    sel = ctx.campaign.selection
    options: dict[str, Any] = {"seed": sel.seed + ctx.round_id}
    if sel.acquisition == "hybrid":
        options["weight"] = sel.hybrid_weight
    return acquisition_scores(sel.acquisition, table.arrays, **options)


def _tally(names: np.ndarray, phrase: dict[str, str], what: str) -> str:
    """'all N <what> <phrase>' when one reason covers every case, else 'n1 <phrase1>, n2 <phrase2>'."""
    counts = sorted(((int((names == r).sum()), r) for r in set(names.tolist())), key=lambda kv: (-kv[0], kv[1]))
    if len(counts) == 1:
        n, r = counts[0]
        return phrase[r] if r in ("calibration_gate", "segmentation_gate", "no_pseudo_labels") else (
            f"all {n} {what} {phrase.get(r, r)}")
    return ", ".join(f"{n} {phrase.get(r, r)}" for n, r in counts)


def nothing_selected_reason(
    sel: Any, dec: dict[str, np.ndarray], has_human: np.ndarray, eligible: np.ndarray, acq: np.ndarray,
    gate: str, seg_gate: str, skipped_human: int = 0,
) -> str:
    """Why a round selected nothing (no pseudo-label, nothing queued), in one line: the class and mask
    reasons of the unlabeled pool cases (``dec`` from ``decide_pseudo_labels``) and why the queue
    stayed empty (budget, no eligible case, no finite acquisition score)."""
    unlabeled = ~np.asarray(has_human, dtype=bool)
    n = int(unlabeled.sum())
    if n == 0:
        return f"no unlabeled case in the scored pool ({len(has_human)} scored, all with a human label)"
    phrase = {
        "low_confidence": f"below tau_c {sel.tau_c:g}",
        "high_uncertainty": f"above tau_u {sel.tau_u:g} ({sel.measure})",
        "class_balance": "dropped by class balancing",
        "missing_score": "without a finite score",
        "calibration_gate": f"calibration gate ({gate})",
        "segmentation_gate": f"segmentation gate ({seg_gate})",
        "no_pseudo_labels": 'policy none (selection.policy = "none")',
        "mask_uncertain": f"mean pixel uncertainty >= mask_gate {sel.mask_gate:g}",
        "mask_inconsistent": "mask contradicts the predicted class",
        "accepted": "accepted, but a human label arrived since scoring",
    }
    classes = reason_names(dec["reason_class"])[unlabeled]
    masks = reason_names(dec["reason_mask"])[unlabeled]
    what = "unlabeled pool cases"
    parts = [f"no pseudo-label: {_tally(classes, phrase, what)}"]
    if not (set(masks.tolist()) <= {"calibration_gate", "no_pseudo_labels"}):
        parts.append(f"no pseudo-mask: {_tally(masks, phrase, what)}")
    if skipped_human:
        parts.append(f"{skipped_human} accepted but a human label arrived since scoring")
    elig = np.asarray(eligible, dtype=bool)
    if sel.budget <= 0:
        parts.append("nothing queued: selection.budget = 0")
    elif not elig.any():
        parts.append(f"nothing queued: none of the {n} {what} is eligible (already queued or pseudo-labelled)")
    else:
        parts.append(f'nothing queued: selection.acquisition = "{sel.acquisition}" gave no finite score for the '
                     f"{int(elig.sum())} eligible cases")
    return "; ".join(parts)


def select_step(ctx: StepContext) -> dict[str, Any]:
    campaign, sel, classes = ctx.campaign, ctx.campaign.selection, ctx.campaign.data.classes
    with ctx.ledger.reading() as s:
        _, version = ctx.trained_model(s)
        pool = load_scores(s, version, "pool", len(classes))
        val = load_scores(s, version, "val", len(classes))
        counts = human_class_counts(s, classes)
        tasked = set(s.scalars(select(AnnotationTask.sample_id)).all())
    ece = val_ece(val, classes)
    allow, gate_reason = calibration_gate(ece, sel.max_ece)
    val_dice = _val_dice(ctx.detail("train"))
    allow_masks, seg_gate_reason = segmentation_gate(val_dice, sel.min_val_dice)
    params = PseudoLabelParams.from_config(
        sel, no_lesion_class=classes.index(campaign.data.no_lesion_class) if campaign.data.no_lesion_class else None
    )
    dec = decide_pseudo_labels(pool.arrays, pool.has_human, counts, params, allow_pseudo=allow,
                               allow_masks=allow_masks)
    accepted = np.flatnonzero(dec["accept_class"] | dec["accept_mask"])
    mask_files = _pseudo_mask_files(ctx, pool, np.flatnonzero(dec["accept_mask"]))
    is_tasked = np.array([int(sid) in tasked for sid in pool.sample_ids], dtype=bool)
    audit = audit_sample(accepted[~is_tasked[accepted]], sel.audit_fraction, seed=sel.seed + ctx.round_id)
    # a case is left out of the queue only when both its class and its mask were pseudo-labelled: a
    # mask-only (or class-only) pseudo-label still leaves the other part uncertain, worth an annotator
    eligible = ~pool.has_human & ~is_tasked & ~(dec["accept_class"] & dec["accept_mask"])
    eligible[audit] = False  # an audited case is queued once, as an audit
    acq = _acquisition(ctx, pool)
    queue = build_queue(acq, eligible, sel.budget, diversity=sel.diversity, embeddings=pool.embeddings,
                        seed=sel.seed + ctx.round_id)
    thresholds = {"tau_c": sel.tau_c, "tau_u": sel.tau_u, "measure": sel.measure,
                  "pixel_tau_u": sel.pixel_tau_u, "mask_gate": sel.mask_gate,
                  "distribution_alignment": sel.distribution_alignment}
    rc, rm = reason_names(dec["reason_class"]), reason_names(dec["reason_mask"])
    rows: list[PseudoLabelRow] = []
    row_of: dict[int, int] = {}  # sample id -> pool row
    for i in accepted.tolist():
        cls = classes[int(dec["pseudo_class"][i])] if dec["accept_class"][i] else None
        mfiles = mask_files.get(i)
        if cls is None and mfiles is None:
            continue
        sid = int(pool.sample_ids[i])
        row_of[sid] = i
        rows.append(PseudoLabelRow(sid, cls, mfiles[0] if mfiles else None, mfiles[1] if mfiles else None))
    acq_scores, confidence = _finite_or_none(acq), _finite_or_none(dec["confidence"])
    with ctx.ledger.transaction() as s:
        retired = retire_pseudo_labels(s, ctx.round_id)
        # a human label that arrived since scoring wins: add_pseudo_labels skips those samples
        written, skipped = add_pseudo_labels(s, rows, round_id=ctx.round_id, selector=params.policy,
                                             thresholds=thresholds)
        skipped_human = len(skipped)
        per_class = {c: sum(r.class_name == c for r in written) for c in classes}
        n_masks = sum(r.mask_path is not None for r in written)
        decisions: list[dict[str, Any]] = []
        for r in written:
            i = row_of[r.sample_id]
            target = "both" if (r.class_name and r.mask_path) else ("class" if r.class_name else "mask")
            decisions.append({"sample_id": r.sample_id, "decision": "pseudo", "target": target,
                              "policy": params.policy, "score": confidence[i],
                              "reason": f"class:{rc[i]} mask:{rm[i] if r.mask_path else 'not_used'}"})
        tasks: list[dict[str, Any]] = []
        for i in queue.tolist():
            sid = int(pool.sample_ids[i])
            decisions.append({"sample_id": sid, "decision": "queue", "target": "both", "policy": sel.acquisition,
                              "score": acq_scores[i], "reason": f"class:{rc[i]}"})
            tasks.append({"sample_id": sid, "is_audit": False, "score": acq_scores[i]})
        for i in audit.tolist():
            sid = int(pool.sample_ids[i])
            decisions.append({"sample_id": sid, "decision": "audit", "target": "class", "policy": params.policy,
                              "score": confidence[i], "reason": "audit sample"})
            tasks.append({"sample_id": sid, "is_audit": True, "score": acq_scores[i]})
        chosen = np.zeros(len(pool), dtype=bool)
        chosen[accepted] = True
        chosen[queue] = True
        rejected_rows = np.flatnonzero(~chosen & ~pool.has_human)
        rejected = int(rejected_rows.shape[0])
        decisions += [{"sample_id": int(pool.sample_ids[i]), "decision": "rejected", "target": "class",
                       "policy": params.policy, "score": acq_scores[i], "reason": f"class:{rc[i]}"}
                      for i in rejected_rows.tolist()]
        db = s.connection()  # table-level executemany in the step's transaction: no ORM object per case
        for start in range(0, len(decisions), 50_000):
            db.execute(insert(cast(Table, Selection.__table__)),
                       [{"round_id": ctx.round_id, **d} for d in decisions[start:start + 50_000]])
        if tasks:
            db.execute(insert(cast(Table, AnnotationTask.__table__)),
                       [{"round_id": ctx.round_id, "state": "intent", **t} for t in tasks])
        nothing = None
        if not written and queue.shape[0] == 0:  # says why, in the detail and Round.notes
            nothing = nothing_selected_reason(sel, dec, pool.has_human, eligible, acq, gate_reason,
                                              seg_gate_reason, skipped_human)
        state.update_notes(ctx.round(s), gate=gate_reason, seg_gate=seg_gate_reason, nothing_selected=nothing)
        detail = {
            "val_ece": ece, "gate_open": allow, "gate": gate_reason, "val_dice": val_dice,
            "seg_gate_open": allow_masks, "seg_gate": seg_gate_reason, "pool_scored": len(pool),
            "pseudo_labels": len(written),
            "pseudo_per_class": per_class, "pseudo_masks": n_masks, "retired": retired,
            "queue_size": int(queue.shape[0]), "audit_size": int(audit.shape[0]), "rejected": rejected,
            "skipped_human": skipped_human, "thresholds": thresholds, "policy": params.policy,
            "acquisition": sel.acquisition, "human_class_counts": counts.tolist(),
            "pool_predicted_per_class": _predicted_per_class(pool, dec, classes),
            "nothing_selected_reason": nothing,
        }
        ctx.complete(s, detail)
    return detail


def _predicted_per_class(pool: ScoreTable, dec: dict[str, np.ndarray], classes: list[str]) -> dict[str, dict[str, int]]:
    """How the unlabeled pool was predicted, per class: by the model (``model``) and as the policy judged it
    (``decided``: after distribution alignment when that is on), so that a drift to one class shows."""
    unlabeled = ~pool.has_human
    out: dict[str, dict[str, int]] = {}
    for name, values in (("model", pool.arrays["pred_class"]), ("decided", dec["decided_class"])):
        v = np.asarray(values, dtype=np.float64)[unlabeled]
        counts = np.bincount(v[np.isfinite(v) & (v >= 0)].astype(np.int64), minlength=len(classes))
        out[name] = {c: int(counts[k]) for k, c in enumerate(classes)}
    return out


def _val_dice(train_detail: dict[str, Any]) -> float | None:
    """The validation Dice of the round's best checkpoint, as the train step recorded it."""
    value = (train_detail.get("best_metrics") or {}).get("val_dice")
    return float(value) if isinstance(value, (int, float)) else None


def _finite_or_none(values: np.ndarray) -> list[float | None]:
    """``values`` as floats, None where not finite (the ledger's "no score")."""
    arr = np.asarray(values, dtype=np.float64)
    out = arr.astype(object)
    out[~np.isfinite(arr)] = None
    return cast(list[float | None], out.tolist())
