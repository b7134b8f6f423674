"""A small, plausible 2-round campaign written through the real ledger API, image store and MLflow.

Used by the dashboard tests when no campaign made by a real orchestrator run is available. It
follows docs/contracts.md ("Rounds ... and what the dashboard reads"): Round.metrics with
calibration bins and risk-coverage, RoundStep rows, Prediction rows with masks and pixel-uncertainty
maps in the store, Selection rows, pseudo/human/truth labels with provenance, AnnotationTask rows,
and MLflow parent runs ``round-<n>`` with nested ``train`` runs and a ``champion`` model alias.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medloop.config import load_campaign
from medloop.data.imagestore import ImageStore, content_hash
from medloop.ledger.schema import STEPS, AnnotationTask, Base, Prediction, Round, RoundStep, Sample, Selection, utcnow
from medloop.ledger.store import Ledger, add_human_label, add_pseudo_label, add_truth_label, retire_pseudo_labels

CLASSES = ["normal", "benign", "malignant"]
SIZE = 32


def write_config(folder: Path, name: str = "dashtest", ledger_url: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "campaign.toml"
    ledger = f'ledger_url = "{ledger_url}"\n' if ledger_url else ""
    cfg.write_text(
        f'name = "{name}"\nroot = "{folder.resolve()}"\n{ledger}\n[data]\nimage_size = {SIZE}\n\n'
        '[uncertainty]\nmethod = "both"\n\n[selection]\npolicy = "ups"\ntau_c = 0.8\ntau_u = 0.08\nbudget = 4\n'
    )
    return cfg


def _phantom(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = rng.normal(90, 20, (SIZE, SIZE))
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if k > 0:
        cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), 4 + 2 * k
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8)
        img[mask > 0] -= 50
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _calibration(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> tuple[dict, float]:
    bins, ece = [], 0.0
    edges = np.linspace(0, 1, n_bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            c, a = float(conf[sel].mean()), float(correct[sel].mean())
            bins.append({"lo": float(lo), "hi": float(hi), "confidence": c, "accuracy": a, "count": int(sel.sum())})
            ece += sel.mean() * abs(a - c)
    return {"bins": bins}, float(ece)


def build_campaign(folder: Path, *, name: str = "dashtest", n_pool: int = 36, with_mlflow: bool = True,
                   legacy_rounds: tuple[int, ...] = (1,), ledger_url: str | None = None) -> Path:
    """Create the campaign under ``folder``; returns its campaign.toml.

    The train step of a round in ``legacy_rounds`` is written as older ledgers have it: without
    ``trained_on`` and without ``val_empty_rate`` in ``best_metrics``. The other rounds record what
    they trained on (``trained_on``), counted by hand here: human = train split + answered pool
    samples, pseudo = the previous round's pseudo-labels still standing, val = 12, unlabeled = 0
    (no semi-supervised training). ``ledger_url``: the ledger's database (default: SQLite in ``folder``)."""
    cfg_path = write_config(folder, name, ledger_url)
    campaign = load_campaign(cfg_path)
    rng = np.random.default_rng(7)
    store = ImageStore(campaign.store)
    ledger = Ledger.open(campaign.ledger)
    truth: dict[int, tuple[int, np.ndarray]] = {}
    splits = ["train"] * 10 + ["val"] * 12 + ["test"] * 6 + ["pool"] * n_pool
    with ledger.transaction() as s:
        for i, split in enumerate(splits):
            k = int(rng.choice(3, p=[0.3, 0.4, 0.3]))
            img, mask = _phantom(rng, k)
            uid = f"syn-{i:04d}"
            sample = Sample(uid=uid, content_hash=content_hash(img), image_path=store.put_image(uid, img),
                            source="synthetic", split=split, height=SIZE, width=SIZE, channels=1)
            s.add(sample)
            s.flush()
            mrel = store.put_mask(f"truth/{uid}", mask)
            add_truth_label(s, sample.id, class_name=CLASSES[k], mask_path=mrel, source="synthetic")
            if split in ("train", "val", "test"):
                add_human_label(s, sample.id, class_name=CLASSES[k], mask_path=mrel, author="seed")
            truth[sample.id] = (k, mask)
    ids = {sp: [sid for sid, sp2 in zip(truth, splits) if sp2 == sp] for sp in set(splits)}
    sel_cfg = campaign.selection
    histories: dict[int, list[dict]] = {}
    queued_prev: list[int] = []
    human_pool, pseudo_standing = 0, 0  # pool samples answered by a human; pseudo-labels of the last round left
    for rnd in (1, 2):
        version = f"round-{rnd}"
        with ledger.transaction() as s:
            s.add(Round(id=rnd, status="running", started_at=utcnow(), model_version=version))
            for step in STEPS:
                s.add(RoundStep(round_id=rnd, step=step, state="pending"))
        # sync: the previous round's queue answered (one skipped), kept_prediction recorded
        with ledger.transaction() as s:
            answered = 0
            for j, sid in enumerate(queued_prev):
                task = s.query(AnnotationTask).filter_by(sample_id=sid).one()
                if j == len(queued_prev) - 1:
                    task.state = "skipped"
                    continue
                k, mask = truth[sid]
                pred = s.query(Prediction).filter_by(sample_id=sid, round_id=rnd - 1).one()
                add_human_label(s, sid, class_name=CLASSES[k], mask_path=store.put_mask(f"human/{sid}", mask),
                                author="annotator-1", ls_task_id=1000 + sid, ls_annotation_id=5000 + sid)
                task.state, task.completed_at, task.kept_prediction = "completed", utcnow(), pred.pred_class == k
                answered += 1
            human_pool += answered
            _step(s, rnd, "sync", "done", {"new_human_labels": answered})
            best = {"val_dice": 0.5 + 0.1 * rnd, "val_accuracy": 0.55 + 0.1 * rnd, "val_empty_rate": 0.7 + 0.1 * rnd}
            train = {"epochs": 3, "train_samples": 10 + human_pool + pseudo_standing, "best_metrics": best}
            if rnd in legacy_rounds:
                best.pop("val_empty_rate")
            else:
                human = len(ids["train"]) + human_pool
                train["trained_on"] = {"human": human, "pseudo": pseudo_standing, "unlabeled": 0,
                                       "val": len(ids["val"]), "human_labels": human + len(ids["val"])}
            _step(s, rnd, "train", "done", train)
        # score: val + pool predictions (the model gets better in round 2)
        skill = 0.55 + 0.2 * rnd
        conf_val, correct_val = [], []
        with ledger.transaction() as s:
            for sid in ids["val"] + ids["pool"]:
                k, mask = truth[sid]
                logits = rng.normal(0, 1, 3)
                logits[k] += 3 * skill
                probs = np.exp(logits) / np.exp(logits).sum()
                pc = int(probs.argmax())
                umap = np.clip(rng.gamma(1.0, 0.03, (SIZE, SIZE)) + 0.3 * _edge(mask), 0, 1).astype(np.float32)
                pmask = mask if rng.random() < skill else np.roll(mask, 3, axis=0)
                s.add(Prediction(round_id=rnd, sample_id=sid, model_version=version, probs=probs.tolist(),
                                 pred_class=pc, confidence=float(probs.max()),
                                 std=float(abs(rng.normal(0.12 * (1 - probs.max()), 0.02))),
                                 entropy=float(-(probs * np.log(probs)).sum()), mutual_info=float(rng.uniform(0, 0.05)),
                                 vacuity=float(np.clip(0.9 - probs.max() + rng.normal(0, 0.05), 0, 1)),
                                 margin=float(np.sort(probs)[-1] - np.sort(probs)[-2]),
                                 seg_uncertainty=float(umap[mask > 0].mean()) if mask.any() else float(umap.mean()),
                                 seg_uncertainty_image=float(umap.mean()), lesion_fraction=float(pmask.mean()),
                                 mask_path=store.put_mask(f"pred/{version}/{sid}", pmask),
                                 umap_path=store.put_array(f"umap/{version}/{sid}", umap)))
                if sid in ids["val"]:
                    conf_val.append(probs.max())
                    correct_val.append(pc == k)
            _step(s, rnd, "score", "done", {"scored": len(ids["val"]) + len(ids["pool"])})
        # select: UPS pseudo-labels, a queue and audits
        with ledger.transaction() as s:
            retire_pseudo_labels(s, rnd)
            preds = s.query(Prediction).filter(Prediction.round_id == rnd, Prediction.sample_id.in_(ids["pool"])).all()
            human = {sid for sid in ids["pool"] if s.query(AnnotationTask).filter_by(sample_id=sid).first()}
            thresholds = {"tau_c": sel_cfg.tau_c, "tau_u": sel_cfg.tau_u, "measure": "std"}
            free = [p for p in preds if p.sample_id not in human]
            accepted = [p for p in free if p.confidence >= sel_cfg.tau_c and p.std <= sel_cfg.tau_u]
            rejected = [p for p in free if p not in accepted and p.confidence >= sel_cfg.tau_c]
            queue = sorted((p for p in free if p not in accepted and p not in rejected), key=lambda p: -p.entropy)[:4]
            for p in accepted:
                add_pseudo_label(s, p.sample_id, class_name=CLASSES[p.pred_class], mask_path=p.mask_path,
                                 ignore_path=None, round_id=rnd, selector="ups", thresholds=thresholds)
                s.add(Selection(round_id=rnd, sample_id=p.sample_id, decision="pseudo", target="both", policy="ups",
                                score=p.std, reason="confident and certain"))
            if rnd == 2:  # a CPL run recorded next to UPS for comparison (class pseudo-labels only)
                for p in [p for p in free if p.confidence >= sel_cfg.tau_c][:12]:
                    s.add(Selection(round_id=rnd, sample_id=p.sample_id, decision="pseudo", target="class",
                                    policy="cpl", score=p.confidence, reason="comparison"))
            for p in rejected:
                s.add(Selection(round_id=rnd, sample_id=p.sample_id, decision="rejected", policy="ups", score=p.std,
                                reason="std above tau_u"))
            for p in queue:
                s.add(Selection(round_id=rnd, sample_id=p.sample_id, decision="queue", policy="entropy",
                                score=p.entropy))
                s.add(AnnotationTask(sample_id=p.sample_id, round_id=rnd, state="pushed", score=p.entropy,
                                     ls_task_id=1000 + p.sample_id, pushed_at=utcnow()))
            audits = accepted[:1]
            for p in audits:
                s.add(Selection(round_id=rnd, sample_id=p.sample_id, decision="audit", policy="ups", score=p.std))
                s.add(AnnotationTask(sample_id=p.sample_id, round_id=rnd, state="completed", is_audit=True,
                                     score=p.std, ls_task_id=1000 + p.sample_id, completed_at=utcnow(),
                                     kept_prediction=True))
            _step(s, rnd, "select", "done", {"pseudo": len(accepted), "queue": len(queue), "audit": len(audits)})
            _step(s, rnd, "push", "done" if rnd == 1 else "skipped", {"pushed": len(queue)})
        with ledger.transaction() as s:
            for p in audits:  # an auditor answers with the truth
                k, mask = truth[p.sample_id]
                add_human_label(s, p.sample_id, class_name=CLASSES[k], mask_path=p.mask_path, author="auditor")
        queued_prev = [p.sample_id for p in queue]
        human_pool += len(audits)  # the audited pseudo-labels became human labels
        pseudo_standing = len(accepted) - len(audits)
        conf, correct = np.array(conf_val), np.array(correct_val, dtype=float)
        calib, ece = _calibration(conf, correct)
        seg_calib, seg_ece = _calibration(np.clip(conf + 0.05, 0, 1), correct)
        order = np.argsort(-conf)
        cov = (np.arange(1, len(conf) + 1) / len(conf)).tolist()
        risk = (np.cumsum(1 - correct[order]) / np.arange(1, len(conf) + 1)).tolist()
        metrics = {"dice": 0.6 + 0.1 * rnd, "iou": 0.45 + 0.1 * rnd, "accuracy": float(correct.mean()),
                   "f1": float(correct.mean()) - 0.02, "auc": 0.8 + 0.05 * rnd, "ece": ece, "adaptive_ece": ece * 1.1,
                   "brier": 0.4 - 0.08 * rnd, "nll": 0.9 - 0.15 * rnd, "seg_ece": seg_ece,
                   "pseudo_precision_truth": 0.8 + 0.05 * rnd,
                   "calibration": {"class": calib, "seg": seg_calib},
                   "risk_coverage": {"coverage": cov, "risk": risk, "aurc": float(np.mean(risk))}}
        histories[rnd] = [{"epoch": e, "val_dice": 0.5 + 0.05 * e + 0.1 * rnd, "val_ece": 0.2 - 0.03 * e}
                          for e in range(3)]
        with ledger.transaction() as s:
            _step(s, rnd, "report", "done", {"ece": ece})
            r = s.get(Round, rnd)
            r.status, r.finished_at, r.metrics = "done", utcnow(), metrics
            ok = ece <= sel_cfg.max_ece
            gate = (f"ece {ece:.3f} {'<=' if ok else '>'} max_ece {sel_cfg.max_ece}: "
                    f"pseudo-labels {'allowed' if ok else 'held back'}")
            r.notes = {"gate": gate, "trigger": "manual"}
            r.checkpoint_path = str(campaign.checkpoints / f"round-{rnd}.pt")
    ledger.close()
    if with_mlflow:
        _fill_mlflow(campaign, ledger_url=campaign.ledger, histories=histories)
    return cfg_path


def _edge(mask: np.ndarray) -> np.ndarray:
    m = mask > 0
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return (m & ~inner).astype(np.float32)


def _step(s, rnd: int, step: str, state: str, detail: dict) -> None:  # noqa: ANN001
    row = s.get(RoundStep, (rnd, step))
    row.state, row.detail = state, detail
    row.started_at = utcnow()
    row.finished_at = utcnow()


def _fill_mlflow(campaign, *, ledger_url: str, histories: dict[int, list[dict]]) -> None:  # noqa: ANN001
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=campaign.tracking_uri, registry_uri=campaign.tracking_uri)
    exp_id = client.create_experiment(campaign.experiment_name, artifact_location=campaign.artifact_root.as_uri())
    ledger = Ledger.open(ledger_url)
    model_name = f"medloop-{campaign.name}"
    client.create_registered_model(model_name)
    with ledger.transaction() as s:
        for rnd, hist in histories.items():
            r = s.get(Round, rnd)
            parent = client.create_run(exp_id, run_name=f"round-{rnd}", tags={"medloop.round": str(rnd)})
            train = client.create_run(exp_id, run_name="train",
                                      tags={"mlflow.parentRunId": parent.info.run_id, "medloop.round": str(rnd)})
            for h in hist:
                for key in ("val_dice", "val_ece"):
                    client.log_metric(train.info.run_id, key, h[key], step=h["epoch"])
            for key in ("dice", "iou", "accuracy", "f1", "auc", "ece", "brier", "nll"):
                client.log_metric(parent.info.run_id, f"val_{key}", r.metrics[key])
            client.set_terminated(train.info.run_id)
            client.set_terminated(parent.info.run_id)
            r.mlflow_run_id = parent.info.run_id
            mv = client.create_model_version(model_name, source=r.checkpoint_path, run_id=parent.info.run_id)
            client.set_registered_model_alias(model_name, "champion", mv.version)
    ledger.close()


def build_empty_campaign(folder: Path) -> Path:
    """A campaign whose ledger exists but holds nothing (and no MLflow store)."""
    cfg = write_config(folder, "emptytest")
    campaign = load_campaign(cfg)
    Ledger.open(campaign.ledger).close()
    return cfg


__all__ = ["build_campaign", "build_empty_campaign", "write_config", "CLASSES", "Base"]
