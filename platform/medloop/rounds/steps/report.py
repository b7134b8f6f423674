"""report: calibration and selection statistics of the round -> ``Round.metrics`` / ``notes`` and MLflow."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from medloop.ledger.schema import AnnotationTask, Label, Sample, Selection

from .. import state
from ..context import StepContext
from ..scores import ScoreTable, load_scores
from ..stopping import open_pool, validation_score
from ._util import jsonable, store_of

RC_POINTS = 50
log = logging.getLogger(__name__)


def _bins(probs: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    from medloop.trainers.metrics import reliability_bins

    b = reliability_bins(probs, labels, n_bins=15)
    return [
        {"lo": float(lo), "hi": float(hi), "confidence": _num(c), "accuracy": _num(a), "count": int(n)}
        for lo, hi, c, a, n in zip(b["lower"], b["upper"], b["confidence"], b["accuracy"], b["count"])
    ]


def _num(x: Any) -> float | None:
    v = float(x)
    return v if np.isfinite(v) else None


def class_metrics(val: ScoreTable, classes: list[str]) -> tuple[dict[str, Any], np.ndarray | None]:
    """Calibration + classification metrics on labeled validation predictions (and the confusion matrix)."""
    from medloop.trainers.metrics import calibration_metrics, classification_metrics, confusion_matrix, risk_coverage

    known = [(i, c) for i, c in enumerate(val.human_class) if c is not None and c in classes]
    if not known:
        return {}, None
    idx = [i for i, _ in known]
    probs = val.arrays["probs"][idx]
    labels = np.array([classes.index(c) for _, c in known])
    cal = calibration_metrics(probs, labels, n_bins=15)
    cls = classification_metrics(labels, probs)
    conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
    cov, risk = risk_coverage(conf, correct)
    keep = np.unique(np.linspace(0, len(cov) - 1, min(RC_POINTS, len(cov))).astype(int))
    out = {
        "accuracy": cls["accuracy"], "f1": cls["f1_macro"], "auc": cls["auc_ovr"],
        "ece": cal["ece"], "adaptive_ece": cal["adaptive_ece"], "brier": cal["brier"], "nll": cal["nll"],
        "calibration": {"class": {"bins": _bins(probs, labels)}},
        "risk_coverage": {"coverage": cov[keep].tolist(), "risk": risk[keep].tolist(), "aurc": cal["aurc"]},
        "n_val": len(idx),
    }
    return out, confusion_matrix(labels, probs.argmax(1), len(classes))


def seg_metrics(ctx: StepContext, val: ScoreTable) -> dict[str, float]:
    """Validation Dice / IoU as training defines them (``lesion_dice``: mean per case over the cases
    with a lesion) and the share of no-lesion cases predicted empty, from the scored masks; with
    ``data.regions`` also ``dice_<region>`` from the same label maps."""
    from medloop.data.imagestore import mask_at
    from medloop.trainers.metrics import empty_mask_rate, lesion_dice, lesion_iou

    store = store_of(ctx)
    preds, truths = [], []
    for pred_rel, true_rel in zip(val.mask_paths, val.human_mask):
        if pred_rel and true_rel:
            p = store.load_label_map(pred_rel)  # model size; the human mask is native: read at the same size
            preds.append(p)
            truths.append(mask_at(store.load_label_map(true_rel), p.shape))
    if not preds:
        return {}
    # every predicted mask has the model size, and each truth was read at it: one batch (255 = not annotated)
    pred, truth = np.stack(preds), np.stack(truths)
    lesion_pred = ((pred > 0) & (pred != 255)).astype(np.uint8)
    lesion_truth = ((truth > 0) & (truth != 255)).astype(np.uint8)
    values = {"dice": lesion_dice(lesion_pred, lesion_truth), "iou": lesion_iou(lesion_pred, lesion_truth),
              "empty_rate": empty_mask_rate(lesion_pred, lesion_truth)}
    regions = ctx.campaign.data.region_sets()
    if regions:  # per region on the same label maps: the figures above are the whole lesion
        from medloop.trainers.metrics.regions import mean_over_holding_cases

        per = mean_over_holding_cases(preds, truths, regions, distances=False)
        values.update({f"dice_{k}": v["dice"] for k, v in per.items()})
    return {k: float(v) for k, v in values.items() if np.isfinite(v)}


def seg_calibration(ctx: StepContext, checkpoint_path: str | None, batch_size: int = 16) -> dict[str, Any]:
    """Pixel-wise calibration of the round's model on the validation human masks: ``seg_ece`` and
    the reliability bins ``calibration.seg`` (one deterministic forward pass, dropout off)."""
    import torch

    from medloop.trainers.checkpoints import load_model
    from medloop.trainers.dataset import load_arrays, to_model_input
    from medloop.trainers.metrics import ece, pixel_predictions
    from medloop.trainers.uncertainty import measures as M
    from medloop.trainers.uncertainty.mc import mc_sample

    if not checkpoint_path:
        return {}
    val = load_arrays(ctx.campaign, ctx.ledger, "val")
    has_mask = (val.masks != 255).reshape(len(val), -1).any(axis=1)
    if not has_mask.any():
        return {}
    images, masks = val.images[has_mask], val.masks[has_mask]
    model, meta = load_model(checkpoint_path)
    parts = []
    for i in range(0, len(images), batch_size):
        x = to_model_input(images[i:i + batch_size])
        with torch.no_grad():
            s = mc_sample(model, x, 1, cached=False, cls_head=meta.get("cls_head", "softmax"),
                          seg_head=meta.get("seg_head", "softmax"), stochastic=False)
        parts.append(M.mean_probs(s.seg_probs).float().numpy())
    probs, labels = pixel_predictions(np.concatenate(parts), masks)
    return {"seg_ece": ece(probs, labels, n_bins=15), "seg_pixels": int(labels.size),
            "seg_bins": _bins(probs, labels)}


def pseudo_precision_truth(s: Any, round_id: int) -> dict[str, Any]:
    """Precision of this round's class pseudo-labels against hidden truth labels (where known)."""
    truth = {sid: c for sid, c in s.execute(select(Label.sample_id, Label.class_name).where(Label.kind == "truth"))}
    pseudo = s.execute(select(Label.sample_id, Label.class_name).where(
        Label.kind == "pseudo", Label.round_id == round_id, Label.class_name.is_not(None))).all()
    known = [(c, truth[sid]) for sid, c in pseudo if truth.get(sid) is not None]
    if not known:
        return {}
    return {"pseudo_precision_truth": sum(a == b for a, b in known) / len(known), "pseudo_truth_n": len(known)}


def pseudo_mask_dice_truth(s: Any, ctx: StepContext) -> dict[str, Any]:
    """Mean Dice of this round's pseudo-masks against hidden truth masks, on the kept (not ignored) pixels."""
    from medloop.trainers.metrics import dice

    truth = {sid: m for sid, m in s.execute(select(Label.sample_id, Label.mask_path).where(
        Label.kind == "truth", Label.mask_path.is_not(None)))}
    pseudo = s.execute(select(Label.sample_id, Label.mask_path, Label.ignore_path).where(
        Label.kind == "pseudo", Label.round_id == ctx.round_id, Label.mask_path.is_not(None))).all()
    store = store_of(ctx)
    scores = []
    for sid, mask_rel, ignore_rel in pseudo:
        if sid not in truth:
            continue
        p = store.load_mask(mask_rel)
        t = store.load_mask_at(truth[sid], p.shape)  # the truth mask is native, the pseudo-mask model size
        if ignore_rel:
            ignored = store.load_ignore(ignore_rel) > 0
            if ignored.shape != t.shape or ignored.all():
                continue
            t = np.where(ignored, 255, t).astype(np.uint8)
        scores.append(dice(p, t))  # ignored pixels (255 in the target) do not count
    if not scores:
        return {}
    return {"pseudo_mask_dice_truth": float(np.nanmean(scores)), "pseudo_mask_truth_n": len(scores)}


def audit_stats(s: Any, round_id: int, classes: list[str]) -> dict[str, Any]:
    """Audit precision: this round's audited pseudo-labels against the human answers."""
    from medloop.selection import audit_precision

    ids = s.scalars(select(Selection.sample_id).where(Selection.round_id == round_id,
                                                      Selection.decision == "audit")).all()
    pc, hc = [], []
    for sid in ids:
        p = s.scalars(select(Label.class_name).where(Label.sample_id == sid, Label.kind == "pseudo",
                                                     Label.round_id == round_id)).first()
        h = s.scalars(select(Label.class_name).where(Label.sample_id == sid, Label.kind == "human",
                                                     Label.active.is_(True))).first()
        pc.append(classes.index(p) if p in classes else -1)
        hc.append(classes.index(h) if h in classes else -1)
    if not ids:
        return {}
    res = audit_precision(np.array(pc), np.array(hc), classes)
    return {"audit_precision": _num(res["overall"]), "audit_answered": int(res["n"])} if res["n"] else {}


def pool_sizes(s: Any) -> dict[str, int]:
    pool = select(Sample.id).where(Sample.split == "pool")
    lab = lambda kind: int(s.scalar(select(func.count(func.distinct(Label.sample_id))).where(  # noqa: E731
        Label.kind == kind, Label.active.is_(True), Label.sample_id.in_(pool))) or 0)
    return {
        "pool_total": int(s.scalar(select(func.count()).select_from(Sample).where(Sample.split == "pool")) or 0),
        "pool_human": lab("human"), "pool_pseudo": lab("pseudo"), "pool_open": open_pool(s),
        "tasks_open": int(s.scalar(select(func.count()).select_from(AnnotationTask).where(
            AnnotationTask.state.in_(("intent", "pushed")))) or 0),
        "human_labels": int(s.scalar(select(func.count()).select_from(Label).where(
            Label.kind == "human", Label.active.is_(True))) or 0),
    }


def report_step(ctx: StepContext) -> dict[str, Any]:
    classes = ctx.campaign.data.classes
    train_d, select_d, score_d = ctx.detail("train"), ctx.detail("select"), ctx.detail("score")
    with ctx.ledger.reading() as s:
        _, version = ctx.trained_model(s)
        val = load_scores(s, version, "val", len(classes))
        pool = load_scores(s, version, "pool", len(classes))
        extra = {**pseudo_precision_truth(s, ctx.round_id), **pseudo_mask_dice_truth(s, ctx),
                 **audit_stats(s, ctx.round_id, classes)}
        sizes = pool_sizes(s)
    metrics, cm = class_metrics(val, classes)
    trained = {k.removeprefix("val_"): v for k, v in (train_d.get("best_metrics") or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    from medloop.trainers.checkpoints import CheckpointError

    try:
        seg_cal = seg_calibration(ctx, train_d.get("checkpoint_path"))
    except CheckpointError as err:  # the round's other statistics do not depend on reloading the model
        log.warning("round %d: no pixel calibration: %s", ctx.round_id, err)
        seg_cal = {"seg_calibration_error": str(err)}
    metrics = {**trained,
               **seg_metrics(ctx, val), **metrics, **extra}
    if "seg_calibration_error" in seg_cal:
        metrics["seg_calibration_error"] = seg_cal["seg_calibration_error"]
    elif seg_cal:
        metrics["seg_ece"], metrics["seg_pixels"] = seg_cal["seg_ece"], seg_cal["seg_pixels"]
        metrics.setdefault("calibration", {})["seg"] = {"bins": seg_cal["seg_bins"]}
    metrics["val_score"] = validation_score(metrics)
    sel_stats = {k: select_d.get(k) for k in ("queue_size", "audit_size", "pseudo_labels", "pseudo_masks",
                                              "pseudo_per_class", "retired", "gate_open", "val_ece",
                                              "seg_gate_open", "val_dice")}
    run_id = None
    if ctx.collaborators.tracking:
        run_id = _track(ctx, metrics, cm, pool, train_d, select_d, score_d, sizes)
    with ctx.ledger.transaction() as s:
        rnd = ctx.round(s)
        rnd.metrics = jsonable(metrics)
        rnd.mlflow_run_id = run_id
        state.update_notes(rnd, selection=jsonable(sel_stats), pools=sizes)
        detail = {"mlflow_run_id": run_id, "val_score": metrics["val_score"], **sizes}
        ctx.complete(s, jsonable(detail))
    return detail


def _selection_table(ctx: StepContext, path: Path) -> Path:
    with ctx.ledger.reading() as s:
        rows = s.execute(select(Sample.uid, Selection.sample_id, Selection.decision, Selection.target,
                                Selection.policy, Selection.score, Selection.reason)
                         .join(Sample, Sample.id == Selection.sample_id)
                         .where(Selection.round_id == ctx.round_id).order_by(Selection.id)).all()
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uid", "sample_id", "decision", "target", "policy", "score", "reason"])
        w.writerows(rows)
    return path


def _track(ctx: StepContext, metrics: dict[str, Any], cm: np.ndarray | None, pool: ScoreTable,
           train_d: dict[str, Any], select_d: dict[str, Any], score_d: dict[str, Any],
           sizes: dict[str, int]) -> str:
    from medloop.tracking import RoundRecord, Tracker, manifest_hash, plots, safe_params

    campaign = ctx.campaign
    out = campaign.folder / "reports" / f"round-{ctx.round_id}"
    out.mkdir(parents=True, exist_ok=True)
    round_files: list[Path] = []
    calibration = metrics.get("calibration") or {}
    if "class" in calibration:
        round_files.append(plots.reliability_diagram(calibration["class"]["bins"],
                                                     out / "reliability.png", f"round {ctx.round_id}"))
    if "seg" in calibration:
        round_files.append(plots.reliability_diagram(calibration["seg"]["bins"], out / "reliability_seg.png",
                                                     f"round {ctx.round_id}, pixels"))
    if cm is not None:
        round_files.append(plots.confusion_matrix_png(cm, campaign.data.classes, out / "confusion_matrix.png"))
    hist: dict[str, np.ndarray] = {
        k: pool.arrays[k] for k in ("std", "entropy", "mutual_info", "seg_uncertainty") if k in pool.arrays
    }
    select_files = [_selection_table(ctx, out / "selection.csv"),
                    plots.uncertainty_histograms(hist, out / "uncertainty_hist.png")]
    with ctx.ledger.reading() as s:
        manifest = manifest_hash([(u, sp, h) for u, sp, h in s.execute(
            select(Sample.uid, Sample.split, Sample.content_hash)).all()])
    sel = campaign.selection
    params = {**safe_params(campaign), "round": ctx.round_id, "model_name": campaign.model.name,
              "data_manifest_hash": manifest, "threshold.tau_c": sel.tau_c, "threshold.tau_u": sel.tau_u,
              "threshold.pixel_tau_u": sel.pixel_tau_u, "threshold.mask_gate": sel.mask_gate,
              "threshold.max_ece": sel.max_ece}
    scalar = {f"val_{k}": v for k, v in metrics.items()
              if k in ("dice", "iou", "accuracy", "f1", "auc", "ece", "adaptive_ece", "brier", "nll", "seg_ece")
              or k.startswith("dice_")}  # dice_<region> of a multi-region campaign
    select_metrics = {"queue_size": select_d.get("queue_size", 0), "audit_size": select_d.get("audit_size", 0),
                      "pseudo_labels": select_d.get("pseudo_labels", 0),
                      "pseudo_masks": select_d.get("pseudo_masks", 0),
                      **{f"pseudo_{c}": n for c, n in (select_d.get("pseudo_per_class") or {}).items()}}
    for k in ("audit_precision", "pseudo_precision_truth", "pseudo_mask_dice_truth"):
        if metrics.get(k) is not None:
            select_metrics[k] = metrics[k]
    round_metrics = {**scalar, **select_metrics, **{k: float(v) for k, v in sizes.items()},
                     "aurc": (metrics.get("risk_coverage") or {}).get("aurc")}
    if metrics.get("val_score") is not None:
        round_metrics["val_score"] = metrics["val_score"]
    report = score_d.get("report") if isinstance(score_d.get("report"), dict) else {}
    record = RoundRecord(
        round_id=ctx.round_id, params=params, metrics={k: v for k, v in round_metrics.items() if v is not None},
        history=train_d.get("history") or [],
        score_metrics={k: v for k, v in (report or {}).items() if isinstance(v, (int, float))},
        select_metrics=select_metrics, artifacts={"round": round_files, "select": select_files},
        checkpoint_path=train_d.get("checkpoint_path"), val_score=metrics.get("val_score"),
    )
    return Tracker(campaign, ledger=ctx.ledger).log_round(record, log_model=ctx.collaborators.log_model)
