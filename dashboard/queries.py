"""Read-only queries for the dashboard: each function takes an engine and returns a DataFrame.

The queries are SQLAlchemy Core on the ledger's own tables (:mod:`medloop.ledger.schema`), so the
same code runs on SQLite and PostgreSQL. Everything that scales with the number of samples is
aggregated in SQL (GROUP BY, COUNT, AVG); only small tables (one row per round, class, bin or page
of samples) come back to Python. Scatter plots read a bounded, deterministic subsample (``limit``).
Nothing here writes: the SQLite ledger is opened with ``mode=ro``, a PostgreSQL one in read-only
transactions.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Engine,
    Float,
    FromClause,
    Integer,
    Select,
    Table,
    Text,
    and_,
    case,
    create_engine,
    distinct,
    func,
    inspect,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from medloop.ledger import readonly
from medloop.ledger.schema import (
    STEPS,
    AnnotationTask,
    Label,
    Prediction,
    Quarantine,
    Round,
    RoundStep,
    Sample,
    Selection,
)
from medloop.ledger.store import LedgerMissing, sqlite_file

METRIC_KEYS = ("dice", "iou", "accuracy", "f1", "auc", "ece", "adaptive_ece", "brier", "nll", "seg_ece",
               "pseudo_precision_truth")
DECISIONS = ("pseudo", "queue", "audit", "rejected")
UNCERTAINTY_MEASURES = ("std", "entropy", "mutual_info", "vacuity", "margin", "seg_uncertainty")

# the ledger's tables (Core); aliases below name a second use of one table in a query
samples = cast(Table, Sample.__table__)
labels = cast(Table, Label.__table__)
rounds_t = cast(Table, Round.__table__)
steps_t = cast(Table, RoundStep.__table__)
predictions = cast(Table, Prediction.__table__)
selections = cast(Table, Selection.__table__)
tasks = cast(Table, AnnotationTask.__table__)
quarantine_t = cast(Table, Quarantine.__table__)

NEVER = datetime(9999, 12, 31)  # "not finished yet" in time comparisons


class LedgerUnavailable(RuntimeError):
    """The ledger does not exist (yet) or is not a medloop ledger; the message says what to do."""


class floor_nonneg(FunctionElement[int]):  # noqa: N801 - reads as a SQL function
    """FLOOR of a non-negative number as an integer: ``CAST(x AS INTEGER)`` truncates on SQLite (where
    FLOOR exists only in builds with the math functions); PostgreSQL's CAST rounds, so FLOOR there."""

    type = Integer()
    inherit_cache = True
    name = "floor_nonneg"


@compiles(floor_nonneg)
def _floor_default(element: floor_nonneg, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(FLOOR({compiler.process(element.clauses, **kw)}) AS INTEGER)"


@compiles(floor_nonneg, "sqlite")
def _floor_sqlite(element: floor_nonneg, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS INTEGER)"


def _fraction(when: ColumnElement[bool], unless: ColumnElement[bool] | None = None) -> ColumnElement[float]:
    """AVG of 1.0 where ``when`` holds, 0.0 where it does not (NULL where ``unless``); a float on every
    database (PostgreSQL's AVG of numbers is NUMERIC, read back as Decimal)."""
    value = case((when, 1.0), else_=0.0) if unless is None else case((when, 1.0), (unless, 0.0))
    return sa_cast(func.avg(value), Float)


def _ones(when: ColumnElement[bool]) -> ColumnElement[int]:
    """SUM of 1 where ``when`` holds."""
    return func.coalesce(func.sum(case((when, 1), else_=0)), 0)


# ---- opening ------------------------------------------------------------------------------------


def open_readonly(url: str) -> Engine:
    """An engine that can only read the ledger (:func:`medloop.ledger.readonly.open_readonly`).
    Raises :class:`LedgerUnavailable` with advice."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        raise LedgerUnavailable(
            f"No ledger at {path}. Create the campaign first: `medloop ingest ... --config <file>` "
            "then `medloop round --config <file>`."
        )
    try:
        return readonly.open_readonly(url)
    except LedgerMissing as err:
        raise LedgerUnavailable(f"{err}.") from None


def _df(engine: Engine, query: Select[Any]) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(query)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


def _scalar(engine: Engine, query: Select[Any]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def _json(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return None


# ---- campaign and rounds --------------------------------------------------------------------------


def split_counts(engine: Engine) -> pd.DataFrame:
    """Samples per split: columns split, samples."""
    return _df(engine, select(samples.c.split, func.count().label("samples"))
               .group_by(samples.c.split).order_by(samples.c.split))


def rounds(engine: Engine) -> pd.DataFrame:
    """One row per round with the validation metrics flattened and the notes (gate, stop, trigger)."""
    r = rounds_t.c
    df = _df(engine, select(r.id.label("round"), r.status, r.started_at, r.finished_at, r.model_version,
                            r.mlflow_run_id, r.metrics, r.notes).order_by(r.id))
    metrics = [(_json(m) or {}) for m in df["metrics"]] if len(df) else []
    notes = [(_json(n) or {}) for n in df["notes"]] if len(df) else []
    for key in METRIC_KEYS:
        df[key] = [m.get(key) if isinstance(m.get(key), (int, float)) else np.nan for m in metrics]
    for key in ("gate", "stop", "trigger"):
        df[key] = [None if n.get(key) is None else str(n.get(key)) for n in notes]
    df["metrics"] = metrics
    df["notes"] = notes
    for col in ("started_at", "finished_at"):
        df[col] = pd.to_datetime(df[col])
    return df


def round_steps(engine: Engine) -> pd.DataFrame:
    """The state machine of every round, steps in pipeline order: round, step, state, started_at,
    finished_at, seconds, detail."""
    st = steps_t.c
    pipeline_order = case({name: i for i, name in enumerate(STEPS)}, value=st.step, else_=len(STEPS))
    df = _df(engine, select(st.round_id.label("round"), st.step, st.state, st.started_at, st.finished_at, st.detail)
             .order_by(st.round_id, pipeline_order, st.step))
    for col in ("started_at", "finished_at"):
        df[col] = pd.to_datetime(df[col])
    df["seconds"] = (df["finished_at"] - df["started_at"]).dt.total_seconds()
    df["detail"] = [json.dumps(_json(d)) if d is not None else "" for d in df["detail"]]
    return df


def with_shown_states(df: pd.DataFrame, column: str, in_progress: bool) -> pd.DataFrame:
    """``df`` with ``column`` as ``medloop status`` shows it: ``running`` with no live holder of the
    round lock is ``interrupted`` (:func:`medloop.rounds.recovery.shown_state`)."""
    from medloop.rounds.recovery import shown_state

    out = df.copy()
    out[column] = [shown_state(str(v), in_progress) for v in out[column]]
    return out


def _round_end() -> ColumnElement[datetime]:
    return func.coalesce(rounds_t.c.finished_at, literal(NEVER, DateTime()))


def _candidates(sample_id: ColumnElement[int]) -> ColumnElement[bool]:
    """The sample is a training candidate (split train or pool)."""
    return and_(samples.c.id == sample_id, samples.c.split.in_(("train", "pool")))


def pool_composition(engine: Engine) -> pd.DataFrame:
    """Label kinds of the training candidates (splits train + pool) at the end of every round.

    Long format: round, kind (human / pseudo / queued / unlabeled), samples. ``human``: samples with
    a human label made by the end of the round; ``pseudo``: samples given a pseudo-label in that round
    and without a human label by its end (an audit answered in the round counts as human);
    ``queued``: non-audit annotation tasks open at the end of the round; ``unlabeled``: the rest.
    """
    r, lab, a = rounds_t.c, labels.c, tasks.c
    end = _round_end()
    population = _scalar(engine, select(func.count()).select_from(samples)
                         .where(samples.c.split.in_(("train", "pool"))))
    human = _df(engine, select(r.id.label("round"), func.count(distinct(lab.sample_id)).label("n"))
                .select_from(rounds_t.join(labels, and_(lab.kind == "human", lab.created_at <= end))
                             .join(samples, _candidates(lab.sample_id)))
                .group_by(r.id))
    h = labels.alias("h")
    humans_by_end = select(h.c.id).where(h.c.sample_id == lab.sample_id, h.c.kind == "human",
                                         h.c.created_at <= end).exists()
    pseudo = _df(engine,  # pseudo-labels of the round whose sample had no human label by the end of it
                 select(r.id.label("round"), func.count(distinct(lab.sample_id)).label("n"))
                 .select_from(rounds_t.join(labels, and_(lab.kind == "pseudo", lab.round_id == r.id))
                              .join(samples, _candidates(lab.sample_id)))
                 .where(not_(humans_by_end))
                 .group_by(r.id))
    open_at_end = and_(a.is_audit.is_(False), a.round_id <= r.id,
                       or_(a.completed_at.is_(None), a.completed_at > end),
                       a.state.not_in(("skipped", "quarantined")))
    queued = _df(engine, select(r.id.label("round"), func.count(a.id).label("n"))
                 .select_from(rounds_t.join(tasks, open_at_end)).group_by(r.id))
    out = _df(engine, select(r.id.label("round")).order_by(r.id))
    for name, frame in (("human", human), ("pseudo", pseudo), ("queued", queued)):
        out = out.merge(frame.rename(columns={"n": name}), on="round", how="left")
    out = out.fillna(0)
    for name in ("human", "pseudo", "queued"):
        out[name] = out[name].astype(int)
    out["unlabeled"] = (population - out["human"] - out["pseudo"] - out["queued"]).clip(lower=0)
    return out.melt(id_vars="round", var_name="kind", value_name="samples")


COMPOSITION_KEYS = ("human", "pseudo", "unlabeled", "val", "human_labels")
CURVE_METRICS = ("val_dice", "val_accuracy", "val_empty_rate")
LABEL_CURVE_COLUMNS = ["round", "human_labels", *CURVE_METRICS, "human", "pseudo", "unlabeled", "val", "composition"]


def _count(value: Any) -> float:
    """A count from JSON: a non-negative whole number, else NaN (missing, text, bool, negative, 2.5)."""
    number = _metric(value)
    return number if number >= 0 and number == int(number) else np.nan


def _metric(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return np.nan
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return np.nan
    return number if np.isfinite(number) else np.nan


def _composition_at_train(engine: Engine, round_ids: list[int]) -> dict[int, dict[str, float]]:
    """What the rounds' models could have trained on, rebuilt from label timestamps (older ledgers).

    At the start of each round's train step: ``human`` = samples outside val/test with a human label
    active then, ``pseudo`` = samples outside val/test with a pseudo-label active then, ``val`` =
    validation samples with a human label active then, ``human_labels`` = human + val. ``unlabeled``
    is unknown (whether semi-supervised training was on is not recorded) and left NaN.
    """
    ids = sorted({int(r) for r in round_ids})
    if not ids:
        return {}
    st, lab = steps_t.c, labels.c
    at = func.coalesce(st.started_at, st.finished_at)
    train_steps = and_(st.step == "train", at.is_not(None), st.round_id.in_(ids))
    part = case((samples.c.split == "val", literal("val_") + lab.kind), else_=lab.kind)
    active_then = and_(lab.kind.in_(("human", "pseudo")), lab.created_at <= at,
                       or_(lab.superseded_at.is_(None), lab.superseded_at > at))
    df = _df(engine, select(st.round_id.label("round"), part.label("part"),
                            func.count(distinct(lab.sample_id)).label("n"))
             .select_from(steps_t.join(labels, active_then)
                          .join(samples, and_(samples.c.id == lab.sample_id, samples.c.split != "test")))
             .where(train_steps).group_by(st.round_id, part))
    timed = _df(engine, select(st.round_id.label("round")).where(train_steps))
    out = {}
    for rnd in timed["round"].astype(int):
        parts = df.loc[df["round"] == rnd].set_index("part")["n"]
        human, pseudo, val = (float(parts.get(k, 0)) for k in ("human", "pseudo", "val_human"))
        out[rnd] = {"human": human, "pseudo": pseudo, "unlabeled": np.nan, "val": val, "human_labels": human + val}
    return out


def label_curve(engine: Engine) -> pd.DataFrame:
    """The campaign's label-efficiency curve: one row per round whose train step is done.

    From the train step's detail: ``best_metrics`` (val_dice, val_accuracy, val_empty_rate; NaN when
    absent) and ``trained_on`` (human, pseudo, unlabeled, val, human_labels = human + val; the test
    split never counts). ``composition`` says where the counts come from: ``recorded`` (the train
    step's ``trained_on``), ``reconstructed`` (older rounds without it: rebuilt from the label
    timestamps at the start of the train step, unlabeled unknown) or ``missing`` (neither possible).
    """
    st = steps_t.c
    steps = _df(engine, select(st.round_id.label("round"), st.detail)
                .where(st.step == "train", st.state == "done").order_by(st.round_id))
    rows, missing = [], []
    for rnd, detail in zip(steps["round"].astype(int), steps["detail"]):
        detail = _json(detail)
        detail = detail if isinstance(detail, dict) else {}
        best = detail.get("best_metrics")
        best = best if isinstance(best, dict) else {}
        row: dict[str, Any] = {"round": rnd, **{k: _metric(best.get(k)) for k in CURVE_METRICS}}
        trained = detail.get("trained_on")
        trained = trained if isinstance(trained, dict) else {}
        counts = {k: _count(trained.get(k)) for k in COMPOSITION_KEYS}
        if np.isnan(counts["human_labels"]) and not np.isnan(counts["human"]) and not np.isnan(counts["val"]):
            counts["human_labels"] = counts["human"] + counts["val"]
        if np.isnan(counts["human_labels"]):
            missing.append(rnd)
            row["composition"] = "missing"
        else:
            row["composition"] = "recorded"
        rows.append({**row, **counts})
    rebuilt = _composition_at_train(engine, missing)
    for row in rows:
        if row["round"] in rebuilt:
            row.update(rebuilt[row["round"]], composition="reconstructed")
    df = pd.DataFrame(rows, columns=LABEL_CURVE_COLUMNS)
    for key in COMPOSITION_KEYS:
        df[key] = df[key].astype("Int64")  # counts; <NA> where unknown
    return df


# ---- calibration ------------------------------------------------------------------------------------


def reliability_bins(rounds_df: pd.DataFrame, round_id: int, task: str) -> pd.DataFrame:
    """Bins of the reliability diagram stored in ``Round.metrics['calibration'][task]``."""
    row = rounds_df.loc[rounds_df["round"] == round_id]
    if row.empty:
        return pd.DataFrame(columns=["lo", "hi", "confidence", "accuracy", "count"])
    calib = (row.iloc[0]["metrics"] or {}).get("calibration") or {}
    bins = (calib.get(task) or {}).get("bins") or []
    df = pd.DataFrame(bins, columns=["lo", "hi", "confidence", "accuracy", "count"])
    return df.dropna(subset=["confidence", "accuracy"])


def risk_coverage(rounds_df: pd.DataFrame) -> pd.DataFrame:
    """Long table of risk-coverage curves: round, coverage, risk, aurc."""
    parts = []
    for _, row in rounds_df.iterrows():
        rc = (row["metrics"] or {}).get("risk_coverage") or {}
        cov, risk = rc.get("coverage") or [], rc.get("risk") or []
        if cov and len(cov) == len(risk):
            parts.append(pd.DataFrame({"round": row["round"], "coverage": cov, "risk": risk, "aurc": rc.get("aurc")}))
    if not parts:
        return pd.DataFrame(columns=["round", "coverage", "risk", "aurc"])
    return pd.concat(parts, ignore_index=True)


def per_class_calibration(engine: Engine, round_id: int, classes: list[str], n_bins: int = 15) -> pd.DataFrame:
    """Val predictions of a round joined with their human labels, binned by confidence per predicted class.

    Columns: pred_class (name), bin, n, confidence (mean), accuracy (fraction whose human label is the
    predicted class). Aggregated in SQL; bin = min(floor(confidence * n_bins), n_bins - 1).
    """
    p, lab = predictions.c, labels.c
    raw = floor_nonneg(p.confidence * n_bins)
    bin_ = case((raw > n_bins - 1, n_bins - 1), else_=raw)
    df = _df(engine, select(p.pred_class.label("k"), bin_.label("bin"), func.count().label("n"),
                            sa_cast(func.avg(p.confidence), Float).label("confidence"), lab.class_name.label("label"))
             .select_from(predictions
                          .join(samples, and_(samples.c.id == p.sample_id, samples.c.split == "val"))
                          .join(labels, and_(lab.sample_id == p.sample_id, lab.kind == "human", lab.active.is_(True),
                                             lab.class_name.is_not(None))))
             .where(p.round_id == round_id)
             .group_by(p.pred_class, bin_, lab.class_name)
             .order_by(p.pred_class, bin_, lab.class_name))
    if df.empty:
        return pd.DataFrame(columns=["pred_class", "bin", "n", "confidence", "accuracy"])
    df["pred_class"] = [classes[k] if 0 <= k < len(classes) else str(k) for k in df["k"]]
    df["correct"] = np.where(df["label"] == df["pred_class"], df["n"], 0)
    df["conf_sum"] = df["confidence"] * df["n"]
    g = df.groupby(["pred_class", "bin"], as_index=False)[["n", "correct", "conf_sum"]].sum()
    g["confidence"] = g["conf_sum"] / g["n"]
    g["accuracy"] = g["correct"] / g["n"]
    return g[["pred_class", "bin", "n", "confidence", "accuracy"]]


def per_class_summary(binned: pd.DataFrame) -> pd.DataFrame:
    """Per predicted class: n, mean confidence, accuracy, ECE (weighted |accuracy - confidence| over bins)."""
    if binned.empty:
        return pd.DataFrame(columns=["class", "n", "mean confidence", "accuracy", "ECE"])
    rows = []
    for name, g in binned.groupby("pred_class"):
        n = g["n"].sum()
        rows.append(
            {
                "class": name,
                "n": int(n),
                "mean confidence": float((g["confidence"] * g["n"]).sum() / n),
                "accuracy": float((g["accuracy"] * g["n"]).sum() / n),
                "ECE": float((g["n"] * (g["accuracy"] - g["confidence"]).abs()).sum() / n),
            }
        )
    return pd.DataFrame(rows)


def _spread(sample_id: ColumnElement[int]) -> ColumnElement[int]:
    """A deterministic pseudo-random order of samples (Knuth's multiplicative hash): a stable subsample."""
    return (sample_id * literal(2654435761, BigInteger())) % literal(4294967296, BigInteger())


def uncertainty_pairs(engine: Engine, round_id: int, limit: int = 3000) -> pd.DataFrame:
    """Predictions of a round where both MC-dropout (std) and evidential (vacuity) exist (subsample)."""
    p = predictions.c
    return _df(engine, select(p.sample_id, p.pred_class, p.confidence, p.std, p.vacuity, samples.c.split)
               .select_from(predictions.join(samples, samples.c.id == p.sample_id))
               .where(p.round_id == round_id, p.std.is_not(None), p.vacuity.is_not(None))
               .order_by(_spread(p.sample_id)).limit(limit))


# ---- selection ----------------------------------------------------------------------------------------


def pseudo_per_class(engine: Engine) -> pd.DataFrame:
    """Pseudo-labels made per round and class: round, class, selector, samples."""
    lab = labels.c
    return _df(engine, select(lab.round_id.label("round"), func.coalesce(lab.class_name, "(mask only)").label("class"),
                              lab.selector, func.count().label("samples"))
               .where(lab.kind == "pseudo", lab.round_id.is_not(None))
               .group_by(lab.round_id, lab.class_name, lab.selector)
               .order_by(lab.round_id, lab.class_name.nulls_first(), lab.selector))


def thresholds(engine: Engine) -> pd.DataFrame:
    """The thresholds recorded on the pseudo-labels of each round: round, selector, thresholds (JSON text)."""
    lab = labels.c
    as_text = sa_cast(lab.thresholds, Text)  # JSON has no equality on PostgreSQL: group by its text
    df = _df(engine, select(lab.round_id.label("round"), lab.selector, as_text.label("thresholds"),
                            func.count().label("labels"))
             .where(lab.kind == "pseudo", lab.round_id.is_not(None))
             .group_by(lab.round_id, lab.selector, as_text)
             .order_by(lab.round_id, lab.selector, as_text))
    df["thresholds"] = [json.dumps(_json(t), sort_keys=True) if t is not None else "" for t in df["thresholds"]]
    return df


def decision_counts(engine: Engine) -> pd.DataFrame:
    """Selections per round, policy and decision, with the number of pool samples scored in that round.

    Columns: round, policy, decision, samples, scored, rate (samples / scored).
    """
    x, p = selections.c, predictions.c
    sel = _df(engine, select(x.round_id.label("round"), x.policy, x.decision,
                             func.count(distinct(x.sample_id)).label("samples"))
              .group_by(x.round_id, x.policy, x.decision).order_by(x.round_id, x.policy, x.decision))
    scored = _df(engine, select(p.round_id.label("round"), func.count().label("scored"))
                 .select_from(predictions.join(samples, and_(samples.c.id == p.sample_id, samples.c.split == "pool")))
                 .group_by(p.round_id))
    df = sel.merge(scored, on="round", how="left")
    df["scored"] = df["scored"].fillna(0).astype(int)
    df["rate"] = np.where(df["scored"] > 0, df["samples"] / df["scored"].where(df["scored"] > 0, 1), np.nan)
    return df


def selection_scatter(engine: Engine, round_id: int, measure: str, limit: int = 4000) -> pd.DataFrame:
    """Pool predictions of a round with their decision (subsample): confidence, uncertainty, decision, class."""
    if measure not in UNCERTAINTY_MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}")
    p = predictions.c
    x = selections.alias("x")
    decision = (select(case((_ones(x.c.decision == "audit") > 0, "audit"), else_=func.min(x.c.decision)))
                .where(x.c.round_id == p.round_id, x.c.sample_id == p.sample_id).scalar_subquery())
    return _df(engine, select(p.sample_id, p.pred_class, p.confidence, p[measure].label("uncertainty"),
                              func.coalesce(decision, "none").label("decision"))
               .select_from(predictions.join(samples, and_(samples.c.id == p.sample_id, samples.c.split == "pool")))
               .where(p.round_id == round_id, p[measure].is_not(None))
               .order_by(_spread(p.sample_id)).limit(limit))


def audit_precision(engine: Engine) -> pd.DataFrame:
    """Per round: audited pseudo-labels answered by a human, and how many kept the pseudo class."""
    a = tasks.c
    pl, hl = labels.alias("p"), labels.alias("h")
    agreed = hl.c.class_name == pl.c.class_name
    return _df(engine, select(a.round_id.label("round"), func.count().label("answered"),
                              _ones(agreed).label("agreed"), _fraction(agreed).label("precision"))
               .select_from(tasks
                            .join(pl, and_(pl.c.sample_id == a.sample_id, pl.c.kind == "pseudo",
                                           pl.c.round_id == a.round_id, pl.c.class_name.is_not(None)))
                            .join(hl, and_(hl.c.sample_id == a.sample_id, hl.c.kind == "human", hl.c.active.is_(True),
                                           hl.c.class_name.is_not(None))))
               .where(a.is_audit.is_(True)).group_by(a.round_id).order_by(a.round_id))


def truth_precision(engine: Engine) -> pd.DataFrame:
    """Per round and selector: pseudo class labels checked against hidden truth (benchmarks only)."""
    pl, tl = labels.alias("p"), labels.alias("t")
    return _df(engine, select(pl.c.round_id.label("round"), pl.c.selector.label("policy"),
                              func.count().label("checked"),
                              _fraction(tl.c.class_name == pl.c.class_name).label("precision"))
               .select_from(pl.join(tl, and_(tl.c.sample_id == pl.c.sample_id, tl.c.kind == "truth",
                                             tl.c.class_name.is_not(None))))
               .where(pl.c.kind == "pseudo", pl.c.class_name.is_not(None))
               .group_by(pl.c.round_id, pl.c.selector).order_by(pl.c.round_id, pl.c.selector))


# ---- annotation ----------------------------------------------------------------------------------------


def task_states(engine: Engine) -> pd.DataFrame:
    """Annotation tasks per round grouped as done / pending / skipped; columns round, status, tasks, audit."""
    a = tasks.c
    status = case((a.state == "completed", "done"), (a.state.in_(("intent", "pushed")), "pending"), else_="skipped")
    return _df(engine, select(a.round_id.label("round"), status.label("status"), func.count().label("tasks"),
                              _ones(a.is_audit.is_(True)).label("audit"))
               .group_by(a.round_id, status).order_by(a.round_id, status))


def kept_prediction(engine: Engine) -> pd.DataFrame:
    """Per round: completed tasks with a known answer, and how many kept the pre-annotated class."""
    a = tasks.c
    return _df(engine, select(a.round_id.label("round"), func.count(a.kept_prediction).label("answered"),
                              _ones(a.kept_prediction.is_(True)).label("kept"),
                              _fraction(a.kept_prediction.is_(True), a.kept_prediction.is_(False)).label("rate"))
               .where(a.state == "completed").group_by(a.round_id).order_by(a.round_id))


def open_queue_size(engine: Engine) -> int:
    """Tasks waiting for annotators now (intent or pushed)."""
    return _scalar(engine, select(func.count()).select_from(tasks).where(tasks.c.state.in_(("intent", "pushed"))))


def quarantined(engine: Engine) -> int:
    """Annotations in quarantine now (a resolved row is a record: fixed, deleted or cancelled)."""
    return _scalar(engine, select(func.count()).select_from(quarantine_t).where(quarantine_t.c.resolved_at.is_(None)))


# ---- sample explorer --------------------------------------------------------------------------------------


def _explorer_selections(round_id: int, decision: str | None) -> FromClause:
    """One row per sample selected in the round (that had ``decision`` in it, when given): sample_id,
    decision (``pseudo+audit`` for an audited pseudo-label), policy, score."""
    x = selections.c
    both = func.max(x.decision) + "+" + func.min(x.decision)
    query = (select(x.round_id, x.sample_id,
                    case((func.count(distinct(x.decision)) > 1, both), else_=func.min(x.decision)).label("decision"),
                    func.min(x.policy).label("policy"), func.max(x.score).label("score"))
             .where(x.round_id == round_id).group_by(x.round_id, x.sample_id))
    if decision is not None:
        query = query.having(_ones(x.decision == decision) > 0)
    return query.subquery("x")


def _explorer_query(columns: list[Any], round_id: int, class_index: int | None, decision: str | None,
                    *, join_all: bool) -> Select[Any]:
    x = _explorer_selections(round_id, decision)
    source: FromClause = x
    if join_all or class_index is not None:  # no join without a class filter when only counting
        p = predictions.c
        # ``+ 0`` keeps SQLite from driving this join through ix_predictions_round_id (a scan of the
        # whole round per sample); the lookup goes through the (sample_id, model_version) index instead
        source = (x.join(samples, samples.c.id == x.c.sample_id)
                  .outerjoin(predictions, and_(p.sample_id == x.c.sample_id, p.round_id + 0 == x.c.round_id)))
    query = select(*columns).select_from(source)
    if class_index is not None:
        query = query.where(predictions.c.pred_class == class_index)
    return query


def explorer_count(engine: Engine, round_id: int, class_index: int | None = None, decision: str | None = None) -> int:
    return _scalar(engine, _explorer_query([func.count()], round_id, class_index, decision, join_all=False))


def explorer_page(
    engine: Engine,
    round_id: int,
    class_index: int | None = None,
    decision: str | None = None,
    page: int = 0,
    page_size: int = 12,
) -> pd.DataFrame:
    """One page of the samples selected in a round (ordered by score, highest first).

    ``decision`` keeps samples that had that decision in the round (an audited pseudo-label has two).
    """
    s, p = samples.c, predictions.c
    h, q = labels.alias("h"), labels.alias("q")

    def human(col: str) -> Any:
        return (select(h.c[col]).where(h.c.sample_id == s.id, h.c.kind == "human", h.c.active.is_(True))
                .limit(1).scalar_subquery())

    def pseudo(col: str) -> Any:
        return (select(q.c[col]).where(q.c.sample_id == s.id, q.c.kind == "pseudo", q.c.round_id == round_id)
                .order_by(q.c.id.desc()).limit(1).scalar_subquery())

    x = _explorer_selections(round_id, decision)
    # the page is cut from the grouped selections first (sample, decision, score; the class filter joins
    # the predictions): the per-sample lookups below then run for the page's rows only, not for every
    # selected sample of the round before the sort (10^6 in a hospital-sized pool)
    ranked = select(x.c.round_id, x.c.sample_id, x.c.decision, x.c.policy, x.c.score)
    if class_index is not None:
        ranked = (ranked.select_from(x.join(predictions, and_(p.sample_id == x.c.sample_id,
                                                              p.round_id + 0 == x.c.round_id)))
                  .where(p.pred_class == class_index))
    order = (x.c.score.desc().nulls_last(), x.c.sample_id)
    pg = ranked.order_by(*order).limit(page_size).offset(page * page_size).subquery("page")
    columns = [s.id.label("sample_id"), s.uid, s.split, s.image_path, pg.c.decision, pg.c.policy, pg.c.score,
               p.pred_class, p.confidence, p.std, p.vacuity, p.entropy, p.seg_uncertainty,
               p.mask_path.label("pred_mask"), p.umap_path,
               human("class_name").label("human_class"), human("mask_path").label("human_mask"),
               pseudo("class_name").label("pseudo_class"), pseudo("mask_path").label("pseudo_mask")]
    query = (select(*columns)
             .select_from(pg.join(samples, s.id == pg.c.sample_id)
                          .outerjoin(predictions, and_(p.sample_id == pg.c.sample_id, p.round_id + 0 == pg.c.round_id)))
             .order_by(pg.c.score.desc().nulls_last(), s.id))
    return _df(engine, query)


# ---- MLflow (read-only) -----------------------------------------------------------------------------------


class TrackingUnavailable(RuntimeError):
    """The MLflow store is missing or unreadable; the message says where it was looked for."""


def tracking_client(tracking_uri: str):  # noqa: ANN201 - mlflow is imported lazily
    """An MlflowClient on an existing store. A missing SQLite store is reported, never created."""
    path = sqlite_file(tracking_uri)
    if path is not None:
        if not path.is_file():
            raise TrackingUnavailable(f"No MLflow store at {path} (it appears after the first round is reported).")
        ro = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true")
        try:
            tables = set(inspect(ro).get_table_names())
        finally:
            ro.dispose()
        if "experiments" not in tables:
            raise TrackingUnavailable(f"{path} is not an MLflow store (no experiments table).")
    elif tracking_uri.startswith("file:") or "://" not in tracking_uri:
        folder = Path(tracking_uri.removeprefix("file://").removeprefix("file:"))
        if not folder.is_dir():
            raise TrackingUnavailable(f"No MLflow store at {folder}.")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def mlflow_rounds(client: Any, experiment_name: str) -> pd.DataFrame:
    """The parent run of every round: round, run_id, run_name, status, and its final metrics."""
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        raise TrackingUnavailable(f"MLflow has no experiment named {experiment_name!r} yet.")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`medloop.round` != ''", max_results=1000)
    rows = []
    for run in runs:
        tag = run.data.tags.get("medloop.round")
        if run.data.tags.get("mlflow.parentRunId"):
            continue
        try:
            rnd = int(tag)
        except (TypeError, ValueError):
            continue
        rows.append({"round": rnd, "run_id": run.info.run_id, "run_name": run.info.run_name,
                     "status": run.info.status, **run.data.metrics})
    return pd.DataFrame(rows).sort_values("round") if rows else pd.DataFrame(columns=["round", "run_id"])


def train_history(client: Any, parent_run_ids: dict[int, str], metric: str) -> pd.DataFrame:
    """Per-epoch history of ``metric`` in the nested ``train`` run of each round: round, epoch, value."""
    parts = []
    for rnd, run_id in parent_run_ids.items():
        run = client.get_run(run_id)
        children = client.search_runs(
            [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'", max_results=50
        )
        for child in children:
            if child.info.run_name != "train":
                continue
            hist = client.get_metric_history(child.info.run_id, metric)
            parts.append(pd.DataFrame({"round": rnd, "epoch": [m.step for m in hist],
                                       "value": [m.value for m in hist]}))
    if not parts:
        return pd.DataFrame(columns=["round", "epoch", "value"])
    return pd.concat(parts, ignore_index=True)


def champion(client: Any, model_name: str) -> dict[str, Any] | None:
    """The registered model version with alias ``champion`` and the metrics of its run (None when absent)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, "champion")
    except MlflowException:
        return None
    # a resumed report step logs the round again: the version's ``medloop.run_id`` tag names the round's
    # current run; ``mv.run_id`` may be the deleted run of the interrupted attempt
    run_id = (mv.tags or {}).get("medloop.run_id") or mv.run_id
    out: dict[str, Any] = {"model": model_name, "version": mv.version, "run_id": run_id, "source": mv.source,
                           "metrics": {}, "round": (mv.tags or {}).get("medloop.round")}
    if run_id:
        try:
            run = client.get_run(run_id)
            out["metrics"] = dict(run.data.metrics)
            out["round"] = run.data.tags.get("medloop.round", out["round"])
            out["run_name"] = run.info.run_name
        except MlflowException:
            pass
    return out
