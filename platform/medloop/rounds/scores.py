"""Read a round's predictions from the ledger into numpy arrays (what the pure selection and
metric functions take)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from medloop.ledger.schema import Label, Prediction, Sample

FLOAT_COLUMNS = ("confidence", "std", "entropy", "mutual_info", "vacuity", "margin", "seg_uncertainty",
                 "seg_uncertainty_image", "lesion_fraction")


@dataclass
class ScoreTable:
    """Predictions of one model version on one split, aligned by row."""

    sample_ids: np.ndarray
    uids: list[str]
    arrays: dict[str, np.ndarray]  # probs (N, K), pred_class, and FLOAT_COLUMNS (NaN when missing)
    mask_paths: list[str | None]
    umap_paths: list[str | None]
    embeddings: np.ndarray | None = None
    human_class: list[str | None] = field(default_factory=list)  # active human label (class) per row
    human_mask: list[str | None] = field(default_factory=list)
    has_human: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])


def load_scores(session: Session, model_version: str, split: str, num_classes: int) -> ScoreTable:
    rows = session.execute(
        select(Prediction, Sample.uid)
        .join(Sample, Sample.id == Prediction.sample_id)
        .where(Prediction.model_version == model_version, Sample.split == split)
        .order_by(Prediction.sample_id)
    ).all()
    n = len(rows)
    probs = np.zeros((n, num_classes), dtype=np.float64)
    cols = {c: np.full(n, np.nan) for c in FLOAT_COLUMNS}
    pred = np.zeros(n, dtype=np.int64)
    emb: list[np.ndarray | None] = []
    for i, (p, _uid) in enumerate(rows):
        probs[i] = p.probs
        pred[i] = p.pred_class
        for c in FLOAT_COLUMNS:
            v = getattr(p, c)
            if v is not None:
                cols[c][i] = v
        emb.append(np.frombuffer(p.embedding, dtype=np.float32) if p.embedding else None)
    ids = np.array([p.sample_id for p, _ in rows], dtype=np.int64)
    human = {
        sid: (cls, mask)
        for sid, cls, mask in session.execute(
            select(Label.sample_id, Label.class_name, Label.mask_path).where(
                Label.kind == "human", Label.active.is_(True), Label.sample_id.in_(ids.tolist())
            )
        ).all()
    }
    present = [e for e in emb if e is not None]
    embeddings = np.stack(present) if n and len(present) == len(emb) else None
    return ScoreTable(
        sample_ids=ids,
        uids=[u for _, u in rows],
        arrays={"probs": probs, "pred_class": pred, **cols},
        mask_paths=[p.mask_path for p, _ in rows],
        umap_paths=[p.umap_path for p, _ in rows],
        embeddings=embeddings,
        human_class=[human.get(int(s), (None, None))[0] for s in ids],
        human_mask=[human.get(int(s), (None, None))[1] for s in ids],
        has_human=np.array([int(s) in human for s in ids], dtype=bool),
    )


def human_class_counts(session: Session, classes: list[str]) -> np.ndarray:
    """Active human class labels per class on the train and pool splits (the target ratio)."""
    rows = session.execute(
        select(Label.class_name).join(Sample, Sample.id == Label.sample_id).where(
            Label.kind == "human", Label.active.is_(True), Sample.split.in_(("train", "pool"))
        )
    ).scalars().all()
    counts = np.zeros(len(classes), dtype=np.float64)
    for c in rows:
        if c in classes:
            counts[classes.index(c)] += 1
    return counts


def val_ece(table: ScoreTable, classes: list[str]) -> float | None:
    """ECE of the validation predictions against the human labels (None when none are labeled)."""
    from medloop.trainers.metrics import ece

    known = [(i, c) for i, c in enumerate(table.human_class) if c is not None and c in classes]
    if not known:
        return None
    idx = [i for i, _ in known]
    labels = np.array([classes.index(c) for _, c in known])
    return ece(table.arrays["probs"][idx], labels)
