"""Test support for tests/rounds: a tiny synthetic campaign and small deterministic stand-ins for
training and scoring, used to exercise the orchestrator's mechanics (state machine, resume, lock,
idempotency) quickly. They follow the contracts of ``train_round`` / ``score_samples`` and write
real ledger rows and real files in the image store; the real trainer is used by test_campaign.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from medloop.config import Campaign, parse_campaign
from medloop.data.imagestore import ImageStore
from medloop.ledger import Label, Ledger, Prediction, Sample


def tiny_campaign(root: Path, **sections: Any) -> Campaign:
    data: dict[str, Any] = {
        "name": "tiny",
        "root": str(root),
        "data": {"n_samples": 48, "image_size": 32, "unlabeled_fraction": 0.7, "seed": 1},
        "selection": {"budget": 4, "tau_c": 0.8, "tau_u": 0.2, "max_ece": 1.0, "min_val_dice": 0.0,
                      "audit_fraction": 0.2, "mask_gate": 0.5, "pixel_tau_u": 0.3},
        "labeling": {"enabled": False, "oracle": True},
    }
    for k, v in sections.items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_campaign(data, "<test>")


def write_config(campaign: Campaign, path: Path) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(campaign.model_dump(exclude_none=True)))
    return path


def ingest_synthetic(campaign: Campaign) -> None:
    from medloop.data.ingest import ingest

    ingest(campaign, "synthetic")


def _u(uid: str, salt: str) -> float:
    return int(hashlib.sha256(f"{uid}:{salt}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


@dataclass
class TinyTrainResult:
    checkpoint_path: str
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    global_step: int = 0
    model_version: str = ""


def tiny_train_round(
    campaign: Campaign, ledger: Ledger, *, round_id: int, warm_start: str | None = None
) -> TinyTrainResult:
    """Counts the training labels and writes a JSON 'checkpoint' (deterministic)."""
    with ledger.reading() as s:
        n = len(s.scalars(select(Label.id).where(Label.kind.in_(("human", "pseudo")), Label.active.is_(True))).all())
    campaign.checkpoints.mkdir(parents=True, exist_ok=True)
    path = campaign.checkpoints / f"round-{round_id}.json"
    path.write_text(json.dumps({"round": round_id, "labels": n, "warm_start": warm_start}))
    acc = min(0.95, 0.5 + 0.1 * round_id)
    hist = [{"epoch": e, "val_accuracy": acc - 0.05 * (1 - e), "val_dice": acc - 0.1, "train_loss": 1.0 / (e + 1)}
            for e in range(2)]
    best = {"val_accuracy": acc, "val_dice": acc - 0.1}  # the keys the real trainers report
    return TinyTrainResult(str(path), best, hist, 2 * round_id, f"round-{round_id}")


def tiny_score_samples(campaign: Campaign, ledger: Ledger, *, round_id: int, checkpoint_path: str,
                       model_version: str, splits: tuple[str, ...] = ("pool", "val")) -> dict[str, int]:
    """Predictions derived from the hidden truth with uid-seeded noise; skips already-scored samples."""
    classes = campaign.data.classes
    store = ImageStore(campaign.store)
    written = 0
    with ledger.transaction() as s:
        done = set(s.scalars(select(Prediction.sample_id).where(Prediction.model_version == model_version)))
        rows = s.execute(select(Sample, Label).join(Label, Label.sample_id == Sample.id).where(
            Sample.split.in_(splits), Label.kind == "truth")).all()
        for sample, truth in rows:
            if sample.id in done:
                continue
            k = classes.index(truth.class_name)
            sure = _u(sample.uid, "sure") < 0.6
            wrong = _u(sample.uid, "wrong") < 0.15
            pred = (k + 1) % len(classes) if wrong else k
            top = 0.95 if sure else 0.5
            probs = [(1 - top) / (len(classes) - 1)] * len(classes)
            probs[pred] = top
            tmask = (store.load_mask(truth.mask_path) if truth.mask_path
                     else np.zeros((sample.height, sample.width), np.uint8))
            umap = np.full(tmask.shape, 0.05 if sure else 0.6, dtype=np.float32)
            s.add(Prediction(
                round_id=round_id, sample_id=sample.id, model_version=model_version, probs=probs, pred_class=pred,
                confidence=top, std=0.01 if sure else 0.3, entropy=0.2 if sure else 1.0, mutual_info=0.01,
                margin=top - probs[(pred + 1) % len(classes)], seg_uncertainty=float(umap.mean()),
                seg_uncertainty_image=float(umap.mean()), lesion_fraction=float(tmask.mean()),
                mask_path=store.put_png(f"masks/pred/{model_version}/{sample.uid}.png", tmask * 255),
                umap_path=store.put_array(f"umap/{model_version}/{sample.uid}", umap),
            ))
            written += 1
    return {"written": written, "skipped": len(done)}


TINY = {"train_round": tiny_train_round, "score_samples": tiny_score_samples}


def ledger_snapshot(campaign: Campaign) -> dict[str, Any]:
    """Counts and contents that must match between an interrupted and an uninterrupted campaign."""
    from medloop.ledger import AnnotationTask, Round, RoundStep, Selection

    led = Ledger.open(campaign.ledger)
    try:
        with led.reading() as s:
            uid = dict(s.execute(select(Sample.id, Sample.uid)).all())
            labels = sorted(((uid[lab.sample_id], lab.kind, lab.class_name, lab.active, lab.author, lab.round_id,
                              lab.mask_path) for lab in s.scalars(select(Label).where(Label.kind != "truth"))),
                            key=repr)
            tasks = sorted(((uid[t.sample_id], t.round_id, t.state, t.is_audit)
                            for t in s.scalars(select(AnnotationTask))), key=repr)
            sels = sorted(((r.round_id, uid[r.sample_id], r.decision, r.target, r.policy, r.reason)
                           for r in s.scalars(select(Selection))), key=repr)
            preds = sorted(((uid[p.sample_id], p.model_version) for p in s.scalars(select(Prediction))), key=repr)
            rounds = [(r.id, r.status, r.model_version) for r in s.scalars(select(Round).order_by(Round.id))]
            steps = sorted(((r.round_id, r.step, r.state) for r in s.scalars(select(RoundStep))), key=repr)
    finally:
        led.close()
    return {"labels": labels, "tasks": tasks, "selections": sels, "predictions": preds, "rounds": rounds,
            "steps": steps}


def checkpoint_train_round(val_accuracy: list[float]):
    """A train stand-in that saves a real (untrained, tiny) model checkpoint; round n reports
    ``val_accuracy[n-1]`` as its best validation accuracy (to drive the champion alias)."""

    def train(campaign: Campaign, ledger: Ledger, *, round_id: int, warm_start: str | None = None) -> TinyTrainResult:
        from medloop.trainers.checkpoints import build_model, model_spec, save_checkpoint

        spec = model_spec(campaign, width=4, depth=2)
        folder = save_checkpoint(campaign.checkpoints / f"round-{round_id}", build_model(spec), {"model": spec})
        acc = val_accuracy[round_id - 1]
        hist = [{"epoch": e + 1, "loss": 1.0 / (e + 1), "val_accuracy": acc} for e in range(2)]
        return TinyTrainResult(str(folder), {"val_accuracy": acc}, hist, 2 * round_id, f"round-{round_id}")

    return train


def run_round_on_one_thread(campaign: Campaign, **kwargs: Any) -> Any:
    """``run_round`` with torch on one thread (the test machine's 2 cores are shared with Ray), restored after."""
    import torch

    from medloop.rounds.orchestrator import run_round

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_round(campaign, **kwargs)
    finally:
        torch.set_num_threads(threads)


def synced_slice_labels(campaign: Campaign) -> tuple[list[tuple[Any, Any]], dict[int, str]]:
    """The volume tasks annotated in Label Studio and synced: (AnnotationTask, its active human Label) pairs,
    and the truth mask path of every sample."""
    from medloop.ledger import AnnotationTask

    ledger = Ledger.open(campaign.ledger)
    with ledger.reading() as s:
        rows = [tuple(r) for r in s.execute(
            select(AnnotationTask, Label).join(Label, Label.sample_id == AnnotationTask.sample_id)
            .where(Label.kind == "human", Label.active.is_(True), Label.ls_task_id.is_not(None))).all()]
        truth = {lab.sample_id: lab.mask_path for lab in s.scalars(select(Label).where(Label.kind == "truth"))}
    ledger.close()
    return rows, truth


def on_labelstudio(server: Any, prefix: str, base: Campaign, **sections: dict[str, Any]) -> Campaign:
    """``base`` (a tiny campaign) as a campaign of the test Label Studio server, under a fresh project name, with
    the oracle answering there; ``sections`` override parts of base's sections (e.g. ``selection={"budget": 4}``)."""
    parts = {k: getattr(base, k).model_dump() for k in ("data", "model", "uncertainty", "compute", "selection")}
    for key, over in sections.items():
        parts[key] = {**parts.get(key, {}), **over}
    parts.setdefault("labeling", {"oracle": True})
    name = f"{prefix}-{np.random.default_rng().integers(1 << 30)}"
    return server.campaign(name, **parts)
