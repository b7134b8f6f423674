"""Chart builders (altair) and image overlays (numpy) for the dashboard.

Colours are fixed per class (by position in ``campaign.data.classes``), per label kind, per
decision and per step state, so the same thing has the same colour on every page.
"""

from __future__ import annotations

from typing import cast

import altair as alt
import numpy as np
import pandas as pd

CLASS_PALETTE = ["#4C78A8", "#F58518", "#E45756", "#72B7B2", "#54A24B", "#EECA3B", "#B279A2", "#FF9DA6"]
KIND_COLOURS = {"human": "#2CA02C", "pseudo": "#FF7F0E", "queued": "#9467BD", "unlabeled": "#C7C7C7"}
DECISION_COLOURS = {"pseudo": "#FF7F0E", "queue": "#9467BD", "audit": "#17BECF", "rejected": "#D62728",
                    "none": "#BBBBBB"}
STATE_COLOURS = {"done": "#2CA02C", "running": "#1F77B4", "interrupted": "#FF7F0E", "pending": "#C7C7C7",
                 "failed": "#D62728", "skipped": "#BCBD22"}
TASK_COLOURS = {"done": "#2CA02C", "pending": "#9467BD", "skipped": "#BCBD22"}
OVERLAY_RGB = {"human": (44, 160, 44), "pseudo": (255, 127, 14), "predicted": (31, 119, 180)}
STEP_ORDER = ["sync", "train", "score", "select", "push", "report"]


def _scale(mapping: dict[str, str], present: list[str] | None = None) -> alt.Scale:
    keys = list(mapping) if present is None else [k for k in mapping if k in present] or list(mapping)
    return alt.Scale(domain=keys, range=[mapping[k] for k in keys])


def class_scale(classes: list[str]) -> alt.Scale:
    names = list(classes) + ["(mask only)"]
    colours = [CLASS_PALETTE[i % len(CLASS_PALETTE)] for i in range(len(classes))] + ["#999999"]
    return alt.Scale(domain=names, range=colours)


# ---- overview ------------------------------------------------------------------------------------------


CURVE_COLOURS = {"val Dice": "#1F77B4", "val accuracy": "#D62728"}
_CURVE_TOOLTIP = [
    alt.Tooltip("round:O", title="round"),
    alt.Tooltip("labels_txt:N", title="human labels (train + val)"),
    alt.Tooltip("dice_txt:N", title="val Dice"),
    alt.Tooltip("accuracy_txt:N", title="val accuracy"),
    alt.Tooltip("empty_txt:N", title="val empty rate"),
    alt.Tooltip("trained_txt:N", title="trained on"),
    alt.Tooltip("composition:N", title="counts"),
]


def _curve_values(curve: pd.DataFrame) -> pd.DataFrame:
    """Counts as plain floats (NaN where unknown) and the tooltip texts ("—" where unknown)."""
    df = curve.copy()
    for col in ("human_labels", "human", "pseudo", "unlabeled", "val"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)

    def num(x: float, spec: str = ".0f") -> str:
        return "—" if x is None or pd.isna(x) else format(x, spec)

    df["labels_txt"] = [num(x) for x in df["human_labels"]]
    df["dice_txt"] = [num(x, ".4f") for x in df["val_dice"]]
    df["accuracy_txt"] = [num(x, ".4f") for x in df["val_accuracy"]]
    df["empty_txt"] = [num(x, ".4f") for x in df["val_empty_rate"]]
    df["trained_txt"] = [f"human {num(h)} · pseudo {num(p)} · unlabeled {num(u)} (validation {num(v)})"
                         for h, p, u, v in zip(df["human"], df["pseudo"], df["unlabeled"], df["val"])]
    return df


def label_efficiency(curve: pd.DataFrame) -> alt.Chart:
    """Validation Dice and accuracy (lines with points) against the human labels each round used."""
    df = _curve_values(curve).dropna(subset=["human_labels"])
    return (
        alt.Chart(df)
        .transform_fold(["val_dice", "val_accuracy"], as_=["key", "value"])
        .transform_filter("isValid(datum.value)")
        .transform_calculate(metric="datum.key === 'val_dice' ? 'val Dice' : 'val accuracy'")
        .mark_line(point=alt.OverlayMarkDef(filled=True, size=70), strokeWidth=2.5)
        .encode(
            x=alt.X("human_labels:Q", title="human labels used (train + validation)",
                    scale=alt.Scale(zero=False, nice=True), axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("value:Q", title="validation metric", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("metric:N", scale=_scale(CURVE_COLOURS), title="metric",
                            legend=alt.Legend(orient="bottom", direction="horizontal")),
            order=alt.Order("round:Q"),
            tooltip=[alt.Tooltip("metric:N", title="metric"), *_CURVE_TOOLTIP],
        )
        .properties(title="Label efficiency: validation metrics vs human labels", height=300)
    )


def trained_on_stack(curve: pd.DataFrame) -> alt.Chart:
    """Stacked bars per round: what the round's model trained on (human / pseudo / unlabeled)."""
    order = ["human", "pseudo", "unlabeled"]
    df = _curve_values(curve)
    return (
        alt.Chart(df)
        .transform_fold(list(order), as_=["kind", "samples"])
        .transform_filter("isValid(datum.samples) && datum.samples > 0")
        .transform_calculate(kind_order=f"indexof({order!r}, datum.kind)")
        .mark_bar()
        .encode(
            x=alt.X("round:O", title="round", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("samples:Q", title="training samples", stack="zero"),
            color=alt.Color("kind:N", scale=_scale({k: KIND_COLOURS[k] for k in order}), sort=order,
                            title="trained on", legend=alt.Legend(orient="bottom", direction="horizontal")),
            order=alt.Order("kind_order:Q"),
            tooltip=[alt.Tooltip("kind:N", title="kind"), alt.Tooltip("samples:Q", title="samples"), *_CURVE_TOOLTIP],
        )
        .properties(title="What each round trained on", height=300)
    )


def step_timeline(steps: pd.DataFrame) -> alt.Chart:
    """Grid: one row per round, one cell per step, coloured by state."""
    return (
        alt.Chart(steps)
        .mark_rect(stroke="white", strokeWidth=2)
        .encode(
            x=alt.X("step:N", sort=STEP_ORDER, title="step", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("round:O", title="round"),
            color=alt.Color("state:N", scale=_scale(STATE_COLOURS), title="state",
                            legend=alt.Legend(orient="bottom", direction="horizontal")),
            tooltip=["round", "step", "state", alt.Tooltip("seconds:Q", format=".1f", title="duration (s)"), "detail"],
        )
        .properties(title="Round steps", height=alt.Step(28))
    )


def pool_stack(pool: pd.DataFrame) -> alt.Chart:
    """Stacked bars of the training candidates by label kind, per round."""
    order = list(KIND_COLOURS)
    return (
        alt.Chart(pool)
        .mark_bar()
        .encode(
            x=alt.X("round:O", title="round", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("samples:Q", title="samples (train + pool splits)"),
            color=alt.Color("kind:N", scale=_scale(KIND_COLOURS), sort=order, title="label kind"),
            order=alt.Order("kind_order:Q"),
            tooltip=["round", "kind", "samples"],
        )
        .transform_calculate(kind_order=f"indexof({order!r}, datum.kind)")
        .properties(title="Pool size per round by label kind")
    )


def metric_lines(df: pd.DataFrame, metrics: list[str], title: str, y_title: str) -> alt.Chart:
    """Lines of several metrics over rounds (``df`` has a ``round`` column and one column per metric)."""
    long = df[["round", *metrics]].melt(id_vars="round", var_name="metric", value_name="value").dropna()
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("round:O", title="round", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("value:Q", title=y_title),
            color=alt.Color("metric:N", title="metric"),
            tooltip=["round", "metric", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(title=title)
    )


def epoch_lines(hist: pd.DataFrame, metric: str) -> alt.Chart:
    return (
        alt.Chart(hist)
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("value:Q", title=metric),
            color=alt.Color("round:N", title="round"),
            tooltip=["round", "epoch", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(title=f"{metric} per epoch (MLflow, nested train runs)")
    )


# ---- calibration ----------------------------------------------------------------------------------------


def _layer(*charts: alt.Chart) -> alt.LayerChart:
    # alt.layer is typed LayerChart | FacetChart: a FacetChart only when given facet arguments (never here)
    return cast(alt.LayerChart, alt.layer(*charts))


def _diagonal() -> alt.Chart:
    line = pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})
    return alt.Chart(line).mark_line(strokeDash=[4, 4], color="grey").encode(x="x:Q", y="y:Q")


def reliability(bins: pd.DataFrame, title: str) -> alt.LayerChart:
    """Reliability diagram: accuracy vs mean confidence per bin (point size = samples), and the diagonal."""
    pts = (
        alt.Chart(bins)
        .mark_line(point=alt.OverlayMarkDef(filled=True), color="#4C78A8")
        .encode(
            x=alt.X("confidence:Q", title="mean confidence", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("accuracy:Q", title="observed accuracy (fraction correct)", scale=alt.Scale(domain=[0, 1])),
            tooltip=["lo", "hi", alt.Tooltip("confidence:Q", format=".3f"), alt.Tooltip("accuracy:Q", format=".3f"),
                     "count"],
        )
    )
    size = alt.Chart(bins).mark_circle(color="#4C78A8", opacity=0.35).encode(
        x="confidence:Q", y="accuracy:Q", size=alt.Size("count:Q", title="samples in bin")
    )
    return _layer(_diagonal(), pts, size).properties(title=title, width=380, height=320)


def per_class_reliability(binned: pd.DataFrame, classes: list[str]) -> alt.LayerChart:
    lines = (
        alt.Chart(binned)
        .mark_line(point=True)
        .encode(
            x=alt.X("confidence:Q", title="mean confidence", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("accuracy:Q", title="accuracy vs human label", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("pred_class:N", scale=class_scale(classes), title="predicted class"),
            tooltip=["pred_class", "n", alt.Tooltip("confidence:Q", format=".3f"),
                     alt.Tooltip("accuracy:Q", format=".3f")],
        )
    )
    return _layer(_diagonal(), lines).properties(title="Per-class reliability (validation)", width=380, height=320)


def risk_coverage(rc: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(rc)
        .mark_line()
        .encode(
            x=alt.X("coverage:Q", title="coverage (fraction of cases kept)", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("risk:Q", title="risk (error rate on kept cases)"),
            color=alt.Color("round:N", title="round"),
            tooltip=["round", alt.Tooltip("coverage:Q", format=".2f"), alt.Tooltip("risk:Q", format=".3f"),
                     alt.Tooltip("aurc:Q", format=".4f")],
        )
        .properties(title="Risk-coverage", width=380, height=320)
    )


def uncertainty_scatter(pairs: pd.DataFrame, classes: list[str]) -> alt.Chart:
    df = pairs.assign(pred=[classes[k] if 0 <= k < len(classes) else str(k) for k in pairs["pred_class"]])
    return (
        alt.Chart(df)
        .mark_circle(opacity=0.6)
        .encode(
            x=alt.X("std:Q", title="MC-dropout std of the predicted class probability"),
            y=alt.Y("vacuity:Q", title="evidential vacuity (K / S)"),
            color=alt.Color("pred:N", scale=class_scale(classes), title="predicted class"),
            tooltip=["sample_id", "pred", "split", alt.Tooltip("std:Q", format=".4f"),
                     alt.Tooltip("vacuity:Q", format=".4f")],
        )
        .properties(title="MC-dropout vs evidential uncertainty", width=380, height=320)
    )


# ---- selection ---------------------------------------------------------------------------------------------


def pseudo_bars(df: pd.DataFrame, classes: list[str]) -> alt.Chart:
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("round:O", title="round", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("sum(samples):Q", title="pseudo-labels (samples)"),
            color=alt.Color("class:N", scale=class_scale(classes), title="class"),
            tooltip=["round", "class", "selector", "samples"],
        )
        .properties(title="Pseudo-labels per class per round")
    )


def selection_scatter(df: pd.DataFrame, tau_c: float, tau_u: float, measure: str) -> alt.LayerChart:
    """Confidence vs uncertainty, coloured by decision, with the tau lines and the accepted region shaded."""
    ymax = float(max(df["uncertainty"].max() if len(df) else 0.0, tau_u) * 1.1) or 1.0
    region = alt.Chart(pd.DataFrame({"x": [tau_c], "x2": [1.0], "y": [0.0], "y2": [tau_u]})).mark_rect(
        color="#FF7F0E", opacity=0.12
    ).encode(x="x:Q", x2="x2:Q", y="y:Q", y2="y2:Q")
    vline = alt.Chart(pd.DataFrame({"x": [tau_c], "label": [f"tau_c = {tau_c:g}"]})).mark_rule(
        color="black", strokeDash=[6, 3]
    ).encode(x="x:Q", tooltip=["label"])
    hline = alt.Chart(pd.DataFrame({"y": [tau_u], "label": [f"tau_u = {tau_u:g}"]})).mark_rule(
        color="black", strokeDash=[2, 2]
    ).encode(y="y:Q", tooltip=["label"])
    pts = (
        alt.Chart(df)
        .mark_circle(opacity=0.7)
        .encode(
            x=alt.X("confidence:Q", title="confidence (max class probability)", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("uncertainty:Q", title=f"uncertainty ({measure})", scale=alt.Scale(domain=[0, ymax])),
            color=alt.Color("decision:N", scale=_scale(DECISION_COLOURS), title="decision"),
            tooltip=["sample_id", "decision", alt.Tooltip("confidence:Q", format=".3f"),
                     alt.Tooltip("uncertainty:Q", format=".4f")],
        )
    )
    return _layer(region, pts, vline, hline).properties(
        title="Confidence vs uncertainty (shaded: accepted region)", width=520, height=360
    )


def rate_bars(df: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("round:O", title="round", axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("series:N", title="policy / decision"),
            y=alt.Y("rate:Q", title="share of scored pool samples", axis=alt.Axis(format="%")),
            color=alt.Color("decision:N", scale=_scale(DECISION_COLOURS), title="decision"),
            tooltip=["round", "policy", "decision", "samples", "scored", alt.Tooltip("rate:Q", format=".1%")],
        )
        .transform_calculate(series="datum.policy + ' / ' + datum.decision")
        .properties(title="Acceptance and queue rates (per policy and decision)")
    )


def precision_lines(df: pd.DataFrame, title: str) -> alt.Chart:
    return (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=alt.X("round:O", title="round", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("precision:Q", title="precision of pseudo class labels", scale=alt.Scale(domain=[0, 1]),
                    axis=alt.Axis(format="%")),
            color=alt.Color("source:N", title="checked against"),
            strokeDash=alt.StrokeDash("policy:N", title="policy"),
            tooltip=["round", "source", "policy", alt.Tooltip("precision:Q", format=".1%"), "n"],
        )
        .properties(title=title)
    )


def policy_comparison(df: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("policy:N", title="policy"),
            y=alt.Y("samples:Q", title="pseudo-labels (samples)"),
            color=alt.Color("policy:N", title="policy"),
            column=alt.Column("round:O", title="round"),
            tooltip=["round", "policy", "samples"],
        )
        .properties(title="Pseudo-labels by policy", width=120)
    )


# ---- annotation --------------------------------------------------------------------------------------------


def task_bars(df: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("round:O", title="round the task was queued in"),
            y=alt.Y("tasks:Q", title="annotation tasks"),
            color=alt.Color("status:N", scale=_scale(TASK_COLOURS), title="status"),
            tooltip=["round", "status", "tasks", "audit"],
        )
        .properties(title="Annotation tasks per round")
    )


def kept_bars(df: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(df)
        .mark_bar(color="#2CA02C")
        .encode(
            x=alt.X("round:O", title="round", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("rate:Q", title="kept the pre-annotated class", scale=alt.Scale(domain=[0, 1]),
                    axis=alt.Axis(format="%")),
            tooltip=["round", "answered", "kept", alt.Tooltip("rate:Q", format=".1%")],
        )
        .properties(title="How often annotators kept the model's pre-annotation")
    )


# ---- sample explorer: overlays ------------------------------------------------------------------------------


def _rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return img[..., :3].astype(np.uint8).copy()


def _erode(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[0, :] = out[-1, :] = out[:, 0] = out[:, -1] = False
    out[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return out


def _dilate(m: np.ndarray) -> np.ndarray:
    return ~_erode(~m)


# where each outline sits relative to the mask edge, so identical masks stay distinguishable:
# human just outside the edge, pseudo on it, predicted just inside
_RING = {"human": "outer", "pseudo": "edge", "predicted": "inner"}


def _ring(m: np.ndarray, where: str) -> np.ndarray:
    if where == "outer":
        return _dilate(m) & ~m
    if where == "inner":
        e = _erode(m)
        return e & ~_erode(e)
    return m & ~_erode(m)


def region_values(mask: np.ndarray) -> list[int]:
    """The region labels of a mask (1..254; 255 marks voxels nobody annotated): ``[1]`` for a binary mask."""
    m = np.asarray(mask)
    return [int(v) for v in np.unique(m) if 0 < v < 255]


def region_note(masks: dict[str, np.ndarray | None], regions: list[str] | None) -> str:
    """`` · predicted regions (one outline each): oedema 120 px, core 31 px`` for a multi-region campaign (the
    predicted mask's regions, else the human's, else the pseudo-mask's), ``""`` otherwise."""
    if not regions:
        return ""
    for kind in ("predicted", "human", "pseudo"):
        m = masks.get(kind)
        values = [] if m is None else region_values(m)
        if values:
            counts = [f"{regions[v - 1]} {int((np.asarray(m) == v).sum())} px" for v in values if v <= len(regions)]
            return f" · {kind} regions (one outline each): " + ", ".join(counts)
    return ""


def overlay(image: np.ndarray, masks: dict[str, np.ndarray | None], scale: int = 4) -> np.ndarray:
    """The image (upscaled ``scale`` times) with the outline of each mask in its label colour.

    Outlines are one pixel wide after upscaling: human outside the mask edge, pseudo on it, predicted
    inside it, so all three show even when the masks agree. A mask with several region labels
    (``data.regions``) is outlined region by region, so the borders between regions show too.
    """
    rgb = _rgb(image)
    rgb = np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else rgb
    block = np.ones((scale, scale), dtype=np.uint8)
    for kind, mask in masks.items():
        if mask is None:
            continue
        labels = np.asarray(mask)
        values = region_values(labels)
        parts = [labels == v for v in values] if len(values) > 1 else [(labels > 0) & (labels != 255)]
        for part in parts:
            m = np.kron(part.astype(np.uint8), block) > 0
            if m.shape != rgb.shape[:2]:
                break
            rgb[_ring(m, _RING.get(kind, "edge"))] = OVERLAY_RGB.get(kind, (255, 255, 255))
    return rgb


def heatmap(umap: np.ndarray, scale: int = 4, vmax: float | None = None) -> np.ndarray:
    """Pixel uncertainty as an RGB image (matplotlib 'magma'; 0 dark, ``vmax`` bright)."""
    from matplotlib import colormaps

    u = np.asarray(umap, dtype=np.float32)
    top = vmax if vmax is not None else float(np.nanmax(u)) if u.size and np.nanmax(u) > 0 else 1.0
    rgb = (colormaps["magma"](np.clip(u / top, 0, 1))[..., :3] * 255).astype(np.uint8)
    return np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8)) if scale > 1 else rgb
