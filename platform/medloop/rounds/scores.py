"""Read a round's predictions from the ledger into numpy arrays (what the pure selection and
metric functions take)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Text, cast, func, select
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
    """The predictions of ``model_version`` on ``split``, by sample id, with each sample's active human
    label. Columns, not ORM objects, streamed in partitions into preallocated arrays: a pool of 10^6
    cases is read in seconds, without an identity map of 10^6 objects."""
    p = Prediction
    where = (p.model_version == model_version, Sample.split == split)
    n = int(session.scalar(select(func.count()).select_from(p).join(Sample, Sample.id == p.sample_id)
                           .where(*where)) or 0)
    # probabilities as their JSON text, parsed one partition at a time in one call (json.loads per row
    # was a third of reading a 10^6-case pool)
    columns = [p.sample_id, Sample.uid, cast(p.probs, Text), p.pred_class, p.mask_path, p.umap_path, p.embedding,
               *(getattr(p, c) for c in FLOAT_COLUMNS)]
    ids: np.ndarray = np.zeros(n, dtype=np.int64)
    probs: np.ndarray = np.zeros((n, num_classes), dtype=np.float64)
    pred: np.ndarray = np.zeros(n, dtype=np.int64)
    cols: dict[str, np.ndarray] = {c: np.full(n, np.nan) for c in FLOAT_COLUMNS}
    uids: list[str] = []
    mask_paths: list[str | None] = []
    umap_paths: list[str | None] = []
    emb: list[bytes | None] = []
    i = 0
    result = session.connection().execute(select(*columns).join(Sample, Sample.id == p.sample_id).where(*where)
                                          .order_by(p.sample_id).execution_options(yield_per=50_000))
    for part in result.partitions():
        m = len(part)
        if i + m > n:  # rows written since the count (the score step of another process)
            raise RuntimeError(f"predictions of {model_version!r} on {split!r} changed while being read")
        ids[i:i + m] = [r[0] for r in part]
        probs[i:i + m] = np.array(json.loads("[" + ",".join(r[2] for r in part) + "]"), dtype=np.float64)
        pred[i:i + m] = [r[3] for r in part]
        for k, c in enumerate(FLOAT_COLUMNS, start=7):
            cols[c][i:i + m] = np.array([r[k] for r in part], dtype=np.float64)  # None -> NaN
        uids += [r[1] for r in part]
        mask_paths += [r[4] for r in part]
        umap_paths += [r[5] for r in part]
        emb += [r[6] for r in part]
        i += m
    ids, probs, pred, cols = ids[:i], probs[:i], pred[:i], {c: v[:i] for c, v in cols.items()}
    # every active human label of the split (joined, not an IN list of the ids)
    human = {
        sid: (cls, mask)
        for sid, cls, mask in session.execute(
            select(Label.sample_id, Label.class_name, Label.mask_path)
            .join(Sample, Sample.id == Label.sample_id)
            .where(Sample.split == split, Label.kind == "human", Label.active.is_(True))
        ).all()
    }
    embeddings = None
    if i and all(e for e in emb):
        embeddings = np.stack([np.frombuffer(e, dtype=np.float32) for e in emb if e])
    return ScoreTable(
        sample_ids=ids,
        uids=uids,
        arrays={"probs": probs, "pred_class": pred, **cols},
        mask_paths=mask_paths,
        umap_paths=umap_paths,
        embeddings=embeddings,
        human_class=[human.get(int(s), (None, None))[0] for s in ids.tolist()],
        human_mask=[human.get(int(s), (None, None))[1] for s in ids.tolist()],
        has_human=np.array([int(s) in human for s in ids.tolist()], dtype=bool),
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
