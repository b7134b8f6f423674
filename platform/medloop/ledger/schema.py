"""Ledger tables (SQLAlchemy 2). The ledger is the source of truth for samples and labels.

Schema changes bump :data:`SCHEMA_VERSION`; :func:`medloop.ledger.store.Ledger.open`
refuses a database written by a newer medloop and upgrades older ones in place.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 3  # 2: quarantine.resolved_at / resolution; 3: samples.depth / spacing, annotation_tasks.slice_index

SPLITS = ("train", "val", "test", "pool")
LABEL_KINDS = ("human", "pseudo", "truth")  # truth: hidden ground truth for benchmark oracles
STEPS = ("sync", "train", "score", "select", "push", "report")
STEP_STATES = ("pending", "running", "done", "failed", "skipped")
TASK_STATES = ("intent", "pushed", "completed", "skipped", "quarantined")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class Meta(Base):
    """Key/value facts about the ledger: schema version, Label Studio project id, ..."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Sample(Base):
    """One image (or volume) in the image store.

    A volume (CT, MRI) has ``depth`` (slices, the array's first spatial axis) and ``spacing`` (mm per
    stored axis: slice, row, column); a 2D image has neither (both NULL)."""

    __tablename__ = "samples"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[str] = mapped_column(String(64), unique=True, index=True)  # stable public id
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the pixel data: dedupe
    image_path: Mapped[str] = mapped_column(String(512))  # relative to the image store
    original_path: Mapped[str | None] = mapped_column(String(1024))
    source: Mapped[str] = mapped_column(String(64))  # dataset name (synthetic, busi, generic)
    split: Mapped[str] = mapped_column(String(8), index=True)  # train / val / test / pool
    height: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)  # volumes: the number of sequences
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    depth: Mapped[int | None] = mapped_column(Integer)  # volumes only: number of slices
    spacing: Mapped[list[float] | None] = mapped_column(JSON)  # volumes only: mm (slice, row, column)


class Label(Base):
    """A class label and/or a mask with provenance. History is kept: an inactive row is superseded."""

    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # human / pseudo / truth
    class_name: Mapped[str | None] = mapped_column(String(64))
    mask_path: Mapped[str | None] = mapped_column(String(512))  # relative to the store folder
    ignore_path: Mapped[str | None] = mapped_column(String(512))  # pseudo-masks: pixels without loss
    active: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    author: Mapped[str | None] = mapped_column(String(128))  # annotator, "oracle", or "round-3/ups"
    round_id: Mapped[int | None] = mapped_column(Integer)
    selector: Mapped[str | None] = mapped_column(String(32))
    thresholds: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    ls_task_id: Mapped[int | None] = mapped_column(Integer)
    ls_annotation_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime)

    __table_args__ = (Index("ix_labels_active_kind", "sample_id", "kind", "active"),)


class Round(Base):
    """One self-training round."""

    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # round number, 1-based
    status: Mapped[str] = mapped_column(String(16), default="running")  # running / done / failed / stopped
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    model_version: Mapped[str | None] = mapped_column(String(64))
    checkpoint_path: Mapped[str | None] = mapped_column(String(1024))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # validation metrics of the round's model
    notes: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # e.g. calibration gate reason


class RoundStep(Base):
    """The persisted state machine of a round: one row per step."""

    __tablename__ = "round_steps"
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), primary_key=True)
    step: Mapped[str] = mapped_column(String(8), primary_key=True)
    state: Mapped[str] = mapped_column(String(8), default="pending")
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Prediction(Base):
    """A model's scores for one sample (one row per sample and model version)."""

    __tablename__ = "predictions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(Integer, index=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
    model_version: Mapped[str] = mapped_column(String(64))
    probs: Mapped[list[float]] = mapped_column(JSON)  # mean class probabilities
    pred_class: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float] = mapped_column(Float)
    std: Mapped[float | None] = mapped_column(Float)  # MC std of the predicted class's probability
    entropy: Mapped[float | None] = mapped_column(Float)
    mutual_info: Mapped[float | None] = mapped_column(Float)
    vacuity: Mapped[float | None] = mapped_column(Float)
    margin: Mapped[float | None] = mapped_column(Float)
    seg_uncertainty: Mapped[float | None] = mapped_column(Float)  # over the predicted lesion + boundary band
    seg_uncertainty_image: Mapped[float | None] = mapped_column(Float)  # over the whole image
    lesion_fraction: Mapped[float | None] = mapped_column(Float)
    mask_path: Mapped[str | None] = mapped_column(String(512))  # predicted mask (PNG in the store)
    umap_path: Mapped[str | None] = mapped_column(String(512))  # pixel-uncertainty map (.npy in the store)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 pooled bottleneck features

    __table_args__ = (UniqueConstraint("sample_id", "model_version", name="uq_prediction_sample_model"),)


class Selection(Base):
    """What the select step decided for a sample in a round."""

    __tablename__ = "selections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    round_id: Mapped[int] = mapped_column(Integer, index=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"))
    decision: Mapped[str] = mapped_column(String(16))  # pseudo / queue / audit / rejected
    target: Mapped[str] = mapped_column(String(8), default="class")  # class / mask / both
    policy: Mapped[str] = mapped_column(String(32))
    score: Mapped[float | None] = mapped_column(Float)  # acquisition score or uncertainty
    reason: Mapped[str | None] = mapped_column(String(256))

    __table_args__ = (UniqueConstraint("round_id", "sample_id", "decision", "target", name="uq_selection"),)


class AnnotationTask(Base):
    """A queued case for annotators; the intent is recorded before Label Studio is called."""

    __tablename__ = "annotation_tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id"), unique=True)  # never pushed twice
    round_id: Mapped[int] = mapped_column(Integer, index=True)
    state: Mapped[str] = mapped_column(String(12), default="intent", index=True)
    is_audit: Mapped[bool] = mapped_column(Boolean, default=False)
    score: Mapped[float | None] = mapped_column(Float)
    ls_task_id: Mapped[int | None] = mapped_column(Integer, index=True)
    ls_annotation_id: Mapped[int | None] = mapped_column(Integer)
    kept_prediction: Mapped[bool | None] = mapped_column(Boolean)  # annotator kept the pre-annotated class
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    pushed_at: Mapped[datetime | None] = mapped_column(DateTime)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    slice_index: Mapped[int | None] = mapped_column(Integer)  # volumes: the axial slice pushed (stored grid)


class Quarantine(Base):
    """A bad annotation kept aside with a clear reason (never turned into a label).

    A row is open while the annotation is bad; when it is fixed, deleted or cancelled in Label Studio
    (or annotators come to agree) the row is kept as a record with ``resolved_at`` and ``resolution``
    saying what happened; it is opened again when the annotation turns bad again."""

    __tablename__ = "quarantine"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sample_id: Mapped[int | None] = mapped_column(Integer)
    ls_task_id: Mapped[int | None] = mapped_column(Integer)
    ls_annotation_id: Mapped[int | None] = mapped_column(Integer, unique=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime)  # None: still quarantined
    resolution: Mapped[str | None] = mapped_column(Text)
