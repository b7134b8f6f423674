"""Read-only queries for the dashboard: each function takes an engine and returns a DataFrame.

Everything that scales with the number of samples is aggregated in SQL (GROUP BY, COUNT, AVG);
only small tables (one row per round, class, bin or page of samples) come back to Python.
Scatter plots read a bounded, deterministic subsample (``limit``). Nothing here writes:
the SQLite ledger is opened with ``mode=ro``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, create_engine, inspect, text

METRIC_KEYS = ("dice", "iou", "accuracy", "f1", "auc", "ece", "adaptive_ece", "brier", "nll", "seg_ece",
               "pseudo_precision_truth")
DECISIONS = ("pseudo", "queue", "audit", "rejected")
UNCERTAINTY_MEASURES = ("std", "entropy", "mutual_info", "vacuity", "margin", "seg_uncertainty")


class LedgerUnavailable(RuntimeError):
    """The ledger does not exist (yet) or is not a medloop ledger; the message says what to do."""


# ---- opening ------------------------------------------------------------------------------------


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL (None for other databases)."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url.removeprefix("sqlite:///")
    if rest.startswith("file:"):
        rest = rest.removeprefix("file:").split("?", 1)[0]
    return Path(rest)


def open_readonly(url: str) -> Engine:
    """An engine that can only read the ledger. Raises :class:`LedgerUnavailable` with advice."""
    path = sqlite_path(url)
    if path is not None:
        if not path.is_file():
            raise LedgerUnavailable(
                f"No ledger at {path}. Create the campaign first: `medloop ingest ... --config <file>` "
                "then `medloop round --config <file>`."
            )
        engine = create_engine(f"sqlite:///file:{path.resolve()}?mode=ro&uri=true", connect_args={"timeout": 30})
    else:
        engine = create_engine(url, pool_pre_ping=True, execution_options={"postgresql_readonly": True})
    try:
        tables = set(inspect(engine).get_table_names())
    except Exception as err:  # noqa: BLE001 - shown to the user as a message
        raise LedgerUnavailable(f"The ledger at {url} cannot be read: {err}") from None
    if "samples" not in tables or "rounds" not in tables:
        raise LedgerUnavailable(f"{url} is not a medloop ledger (no samples/rounds tables).")
    return engine


def _df(engine: Engine, sql: str, **params: Any) -> pd.DataFrame:
    with engine.connect() as conn:
        result = conn.execute(text(sql), params)
        return pd.DataFrame(result.fetchall(), columns=list(result.keys()))


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
    return _df(engine, "SELECT split, COUNT(*) AS samples FROM samples GROUP BY split ORDER BY split")


def rounds(engine: Engine) -> pd.DataFrame:
    """One row per round with the validation metrics flattened and the notes (gate, stop, trigger)."""
    df = _df(
        engine,
        "SELECT id AS round, status, started_at, finished_at, model_version, mlflow_run_id, metrics, notes "
        "FROM rounds ORDER BY id",
    )
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
    """The state machine of every round: round, step, state, started_at, finished_at, seconds, detail."""
    df = _df(engine, "SELECT round_id AS round, step, state, started_at, finished_at, detail FROM round_steps "
                     "ORDER BY round_id")
    for col in ("started_at", "finished_at"):
        df[col] = pd.to_datetime(df[col])
    df["seconds"] = (df["finished_at"] - df["started_at"]).dt.total_seconds()
    df["detail"] = [json.dumps(_json(d)) if d is not None else "" for d in df["detail"]]
    return df


def pool_composition(engine: Engine) -> pd.DataFrame:
    """Label kinds of the training candidates (splits train + pool) at the end of every round.

    Long format: round, kind (human / pseudo / queued / unlabeled), samples. ``human``: samples with
    a human label made by the end of the round; ``pseudo``: samples given a pseudo-label in that round
    and without a human label by its end (an audit answered in the round counts as human);
    ``queued``: non-audit annotation tasks open at the end of the round; ``unlabeled``: the rest.
    """
    end = "COALESCE(r.finished_at, '9999-12-31')"
    population = int(_df(engine, "SELECT COUNT(*) AS n FROM samples WHERE split IN ('train','pool')")["n"].iloc[0])
    human = _df(
        engine,
        f"SELECT r.id AS round, COUNT(DISTINCT l.sample_id) AS n FROM rounds r "
        f"JOIN labels l ON l.kind = 'human' AND l.created_at <= {end} "
        f"JOIN samples s ON s.id = l.sample_id AND s.split IN ('train','pool') GROUP BY r.id",
    )
    pseudo = _df(  # pseudo-labels of the round whose sample had no human label by the end of it
        engine,
        f"SELECT r.id AS round, COUNT(DISTINCT l.sample_id) AS n FROM rounds r "
        f"JOIN labels l ON l.kind = 'pseudo' AND l.round_id = r.id "
        f"JOIN samples s ON s.id = l.sample_id AND s.split IN ('train','pool') "
        f"WHERE NOT EXISTS (SELECT 1 FROM labels h WHERE h.sample_id = l.sample_id AND h.kind = 'human' "
        f"AND h.created_at <= {end}) GROUP BY r.id",
    )
    queued = _df(
        engine,
        f"SELECT r.id AS round, COUNT(a.id) AS n FROM rounds r JOIN annotation_tasks a "
        f"ON NOT a.is_audit AND a.round_id <= r.id AND (a.completed_at IS NULL OR a.completed_at > {end}) "
        f"AND a.state NOT IN ('skipped', 'quarantined') GROUP BY r.id",
    )
    ids = _df(engine, "SELECT id AS round FROM rounds ORDER BY id")
    out = ids.copy()
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
    at = "COALESCE(rs.started_at, rs.finished_at)"
    df = _df(
        engine,
        f"SELECT rs.round_id AS round, CASE WHEN s.split = 'val' THEN 'val_' || l.kind ELSE l.kind END AS part, "
        f"COUNT(DISTINCT l.sample_id) AS n FROM round_steps rs "
        f"JOIN labels l ON l.kind IN ('human', 'pseudo') AND l.created_at <= {at} "
        f"AND (l.superseded_at IS NULL OR l.superseded_at > {at}) "
        f"JOIN samples s ON s.id = l.sample_id AND s.split <> 'test' "
        f"WHERE rs.step = 'train' AND {at} IS NOT NULL AND rs.round_id IN ({', '.join(str(i) for i in ids)}) "
        f"GROUP BY rs.round_id, part",
    )
    timed = _df(
        engine,
        f"SELECT rs.round_id AS round FROM round_steps rs WHERE rs.step = 'train' AND {at} IS NOT NULL "
        f"AND rs.round_id IN ({', '.join(str(i) for i in ids)})",
    )
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
    steps = _df(
        engine,
        "SELECT round_id AS round, detail FROM round_steps WHERE step = 'train' AND state = 'done' ORDER BY round_id",
    )
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
    predicted class). Aggregated in SQL.
    """
    df = _df(
        engine,
        "SELECT p.pred_class AS k, MIN(CAST(p.confidence * :nb AS INTEGER), :nb - 1) AS bin, COUNT(*) AS n, "
        "AVG(p.confidence) AS confidence, l.class_name AS label, COUNT(*) AS m "
        "FROM predictions p JOIN samples s ON s.id = p.sample_id AND s.split = 'val' "
        "JOIN labels l ON l.sample_id = p.sample_id AND l.kind = 'human' AND l.active AND l.class_name IS NOT NULL "
        "WHERE p.round_id = :r GROUP BY p.pred_class, bin, l.class_name",
        nb=n_bins,
        r=round_id,
    )
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


def uncertainty_pairs(engine: Engine, round_id: int, limit: int = 3000) -> pd.DataFrame:
    """Predictions of a round where both MC-dropout (std) and evidential (vacuity) exist (subsample)."""
    return _df(
        engine,
        "SELECT p.sample_id, p.pred_class, p.confidence, p.std, p.vacuity, s.split FROM predictions p "
        "JOIN samples s ON s.id = p.sample_id "
        "WHERE p.round_id = :r AND p.std IS NOT NULL AND p.vacuity IS NOT NULL "
        "ORDER BY (p.sample_id * 2654435761) % 4294967296 LIMIT :lim",
        r=round_id,
        lim=limit,
    )


# ---- selection ----------------------------------------------------------------------------------------


def pseudo_per_class(engine: Engine) -> pd.DataFrame:
    """Pseudo-labels made per round and class: round, class, selector, samples."""
    return _df(
        engine,
        "SELECT round_id AS round, COALESCE(class_name, '(mask only)') AS class, selector, COUNT(*) AS samples "
        "FROM labels WHERE kind = 'pseudo' AND round_id IS NOT NULL GROUP BY round_id, class_name, selector "
        "ORDER BY round_id",
    )


def thresholds(engine: Engine) -> pd.DataFrame:
    """The thresholds recorded on the pseudo-labels of each round: round, selector, thresholds (JSON text)."""
    df = _df(
        engine,
        "SELECT round_id AS round, selector, thresholds, COUNT(*) AS labels FROM labels "
        "WHERE kind = 'pseudo' AND round_id IS NOT NULL GROUP BY round_id, selector, thresholds ORDER BY round_id",
    )
    df["thresholds"] = [json.dumps(_json(t), sort_keys=True) if t is not None else "" for t in df["thresholds"]]
    return df


def decision_counts(engine: Engine) -> pd.DataFrame:
    """Selections per round, policy and decision, with the number of pool samples scored in that round.

    Columns: round, policy, decision, samples, scored, rate (samples / scored).
    """
    sel = _df(
        engine,
        "SELECT round_id AS round, policy, decision, COUNT(DISTINCT sample_id) AS samples FROM selections "
        "GROUP BY round_id, policy, decision ORDER BY round_id",
    )
    scored = _df(
        engine,
        "SELECT p.round_id AS round, COUNT(*) AS scored FROM predictions p JOIN samples s ON s.id = p.sample_id "
        "AND s.split = 'pool' GROUP BY p.round_id",
    )
    df = sel.merge(scored, on="round", how="left")
    df["scored"] = df["scored"].fillna(0).astype(int)
    df["rate"] = np.where(df["scored"] > 0, df["samples"] / df["scored"].where(df["scored"] > 0, 1), np.nan)
    return df


def selection_scatter(engine: Engine, round_id: int, measure: str, limit: int = 4000) -> pd.DataFrame:
    """Pool predictions of a round with their decision (subsample): confidence, uncertainty, decision, class."""
    if measure not in UNCERTAINTY_MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}")
    return _df(
        engine,
        f"SELECT p.sample_id, p.pred_class, p.confidence, p.{measure} AS uncertainty, "
        "COALESCE((SELECT CASE WHEN SUM(CASE WHEN x.decision = 'audit' THEN 1 ELSE 0 END) > 0 THEN 'audit' "
        "ELSE MIN(x.decision) END "
        "FROM selections x WHERE x.round_id = p.round_id AND x.sample_id = p.sample_id), 'none') AS decision "
        "FROM predictions p JOIN samples s ON s.id = p.sample_id AND s.split = 'pool' "
        f"WHERE p.round_id = :r AND p.{measure} IS NOT NULL "
        "ORDER BY (p.sample_id * 2654435761) % 4294967296 LIMIT :lim",
        r=round_id,
        lim=limit,
    )


def audit_precision(engine: Engine) -> pd.DataFrame:
    """Per round: audited pseudo-labels answered by a human, and how many kept the pseudo class."""
    return _df(
        engine,
        "SELECT a.round_id AS round, COUNT(*) AS answered, "
        "SUM(CASE WHEN h.class_name = p.class_name THEN 1 ELSE 0 END) AS agreed, "
        "AVG(CASE WHEN h.class_name = p.class_name THEN 1.0 ELSE 0.0 END) AS precision "
        "FROM annotation_tasks a "
        "JOIN labels p ON p.sample_id = a.sample_id AND p.kind = 'pseudo' AND p.round_id = a.round_id "
        "AND p.class_name IS NOT NULL "
        "JOIN labels h ON h.sample_id = a.sample_id AND h.kind = 'human' AND h.active AND h.class_name IS NOT NULL "
        "WHERE a.is_audit GROUP BY a.round_id ORDER BY a.round_id",
    )


def truth_precision(engine: Engine) -> pd.DataFrame:
    """Per round and selector: pseudo class labels checked against hidden truth (benchmarks only)."""
    return _df(
        engine,
        "SELECT p.round_id AS round, p.selector AS policy, COUNT(*) AS checked, "
        "AVG(CASE WHEN t.class_name = p.class_name THEN 1.0 ELSE 0.0 END) AS precision "
        "FROM labels p JOIN labels t ON t.sample_id = p.sample_id AND t.kind = 'truth' AND t.class_name IS NOT NULL "
        "WHERE p.kind = 'pseudo' AND p.class_name IS NOT NULL GROUP BY p.round_id, p.selector ORDER BY p.round_id",
    )


# ---- annotation ----------------------------------------------------------------------------------------


def task_states(engine: Engine) -> pd.DataFrame:
    """Annotation tasks per round grouped as done / pending / skipped; columns round, status, tasks, audit."""
    return _df(
        engine,
        "SELECT round_id AS round, CASE WHEN state = 'completed' THEN 'done' "
        "WHEN state IN ('intent', 'pushed') THEN 'pending' ELSE 'skipped' END AS status, "
        "COUNT(*) AS tasks, SUM(CASE WHEN is_audit THEN 1 ELSE 0 END) AS audit FROM annotation_tasks "
        "GROUP BY round_id, status ORDER BY round_id",
    )


def kept_prediction(engine: Engine) -> pd.DataFrame:
    """Per round: completed tasks with a known answer, and how many kept the pre-annotated class."""
    return _df(
        engine,
        "SELECT round_id AS round, COUNT(kept_prediction) AS answered, "
        "SUM(CASE WHEN kept_prediction THEN 1 ELSE 0 END) AS kept, "
        "AVG(CASE WHEN kept_prediction THEN 1.0 WHEN NOT kept_prediction THEN 0.0 END) AS rate "
        "FROM annotation_tasks WHERE state = 'completed' GROUP BY round_id ORDER BY round_id",
    )


def open_queue_size(engine: Engine) -> int:
    """Tasks waiting for annotators now (intent or pushed)."""
    df = _df(engine, "SELECT COUNT(*) AS n FROM annotation_tasks WHERE state IN ('intent', 'pushed')")
    return int(df["n"].iloc[0])


def quarantined(engine: Engine) -> int:
    return int(_df(engine, "SELECT COUNT(*) AS n FROM quarantine")["n"].iloc[0])


# ---- sample explorer --------------------------------------------------------------------------------------


def _explorer_where(round_id: int, class_index: int | None, decision: str | None) -> tuple[str, dict[str, Any]]:
    where = ["x.round_id = :r"]
    params: dict[str, Any] = {"r": round_id, "d": decision}
    if class_index is not None:
        where.append("p.pred_class = :k")
        params["k"] = class_index
    return " AND ".join(where), params


_EXPLORER_SELECTIONS = (  # one row per sample selected in round :r (with decision :d when given)
    "FROM (SELECT round_id, sample_id, CASE WHEN COUNT(DISTINCT decision) > 1 "
    "THEN MAX(decision) || '+' || MIN(decision) ELSE MIN(decision) END AS decision, "
    "MIN(policy) AS policy, MAX(score) AS score "
    "FROM selections WHERE round_id = :r GROUP BY round_id, sample_id "
    "HAVING (:d IS NULL OR SUM(CASE WHEN decision = :d THEN 1 ELSE 0 END) > 0)) x "
)
_EXPLORER_FROM = (
    _EXPLORER_SELECTIONS
    + "JOIN samples s ON s.id = x.sample_id "
    # unary + keeps SQLite from driving this join through ix_predictions_round_id (a scan of the
    # whole round per sample); the lookup goes through the (sample_id, model_version) index instead
    + "LEFT JOIN predictions p ON p.sample_id = x.sample_id AND +p.round_id = x.round_id "
)


def explorer_count(engine: Engine, round_id: int, class_index: int | None = None, decision: str | None = None) -> int:
    where, params = _explorer_where(round_id, class_index, decision)
    source = _EXPLORER_FROM if class_index is not None else _EXPLORER_SELECTIONS  # no join without a class filter
    return int(_df(engine, f"SELECT COUNT(*) AS n {source} WHERE {where}", **params)["n"].iloc[0])


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
    where, params = _explorer_where(round_id, class_index, decision)
    params.update(lim=page_size, off=page * page_size)
    return _df(
        engine,
        "SELECT s.id AS sample_id, s.uid, s.split, s.image_path, x.decision, x.policy, x.score, "
        "p.pred_class, p.confidence, p.std, p.vacuity, p.entropy, p.seg_uncertainty, "
        "p.mask_path AS pred_mask, p.umap_path, "
        "(SELECT h.class_name FROM labels h WHERE h.sample_id = s.id AND h.kind = 'human' AND h.active) "
        "AS human_class, "
        "(SELECT h.mask_path FROM labels h WHERE h.sample_id = s.id AND h.kind = 'human' AND h.active) AS human_mask, "
        "(SELECT q.class_name FROM labels q WHERE q.sample_id = s.id AND q.kind = 'pseudo' AND q.round_id = :r "
        " ORDER BY q.id DESC LIMIT 1) AS pseudo_class, "
        "(SELECT q.mask_path FROM labels q WHERE q.sample_id = s.id AND q.kind = 'pseudo' AND q.round_id = :r "
        " ORDER BY q.id DESC LIMIT 1) AS pseudo_mask "
        f"{_EXPLORER_FROM} WHERE {where} ORDER BY x.score DESC, s.id LIMIT :lim OFFSET :off",
        **params,
    )


# ---- MLflow (read-only) -----------------------------------------------------------------------------------


class TrackingUnavailable(RuntimeError):
    """The MLflow store is missing or unreadable; the message says where it was looked for."""


def tracking_client(tracking_uri: str):  # noqa: ANN201 - mlflow is imported lazily
    """An MlflowClient on an existing store. A missing SQLite store is reported, never created."""
    path = sqlite_path(tracking_uri)
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
    out: dict[str, Any] = {"model": model_name, "version": mv.version, "run_id": mv.run_id, "source": mv.source,
                           "metrics": {}, "round": None}
    if mv.run_id:
        try:
            run = client.get_run(mv.run_id)
            out["metrics"] = dict(run.data.metrics)
            out["round"] = run.data.tags.get("medloop.round")
            out["run_name"] = run.info.run_name
        except MlflowException:
            pass
    return out
