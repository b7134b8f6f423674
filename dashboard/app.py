"""The medloop dashboard (Streamlit). It only reads: the ledger (opened read-only) and MLflow.

Run: ``medloop dashboard --config campaign.toml`` or
``streamlit run dashboard/app.py -- --config campaign.toml`` (or set ``MEDLOOP_CONFIG``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from medloop.config import Campaign, ConfigError, load_campaign
from medloop.dashboard import charts, queries
from medloop.data.imagestore import ImageStore, mask_at
from medloop.rounds.recovery import round_in_progress

PAGES = ["Overview", "Calibration", "Selection", "Annotation", "Sample explorer"]
PAGE_SIZE = 12
CACHE_TTL = 30  # seconds: a running campaign shows new rounds after at most this long
LABEL_CURVE_CAPTION = (
    "Label efficiency: each point is a round's model, its validation Dice and accuracy against the human "
    "labels it used (train + validation, test never counted); the bars show what each round trained on."
)


def config_path() -> str | None:
    """``--config`` after ``--`` on the streamlit command line, else ``MEDLOOP_CONFIG``, else defaults."""
    if sys.argv and Path(sys.argv[0]).name == Path(__file__).name:
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--config")
        args, _ = parser.parse_known_args(sys.argv[1:])
        if args.config:
            return args.config
    return os.environ.get("MEDLOOP_CONFIG") or None


# ---- cached access (keyed by URL so a cached result never mixes campaigns) -----------------------------


@st.cache_resource(show_spinner=False)
def _engine(url: str):  # noqa: ANN202
    return queries.open_readonly(url)


@st.cache_data(ttl=CACHE_TTL, show_spinner=False)
def q(url: str, name: str, *args: Any) -> Any:
    return getattr(queries, name)(_engine(url), *args)


@st.cache_resource(show_spinner=False)
def _client(uri: str):  # noqa: ANN202
    return queries.tracking_client(uri)


@st.cache_data(ttl=CACHE_TTL, show_spinner=False)
def mlq(uri: str, name: str, *args: Any) -> Any:
    return getattr(queries, name)(_client(uri), *args)


def tracking(campaign: Campaign, name: str, *args: Any) -> tuple[Any, str | None]:
    """(result, None) or (None, a message saying why MLflow could not be read)."""
    try:
        return mlq(campaign.tracking_uri, name, *args), None
    except queries.TrackingUnavailable as err:
        return None, str(err)
    except Exception as err:  # noqa: BLE001 - an unreadable MLflow store must not break the ledger pages
        return None, f"MLflow at {campaign.tracking_uri} could not be read: {type(err).__name__}: {err}"


def chart(c: Any) -> None:
    st.altair_chart(c, width="stretch")


def txt(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and pd.isna(x)) or x == "" else str(x)


def fmt(x: Any, spec: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and pd.isna(x)) else format(x, spec)


# ---- pages ----------------------------------------------------------------------------------------------


def page_overview(c: Campaign, url: str, rounds: pd.DataFrame) -> None:
    st.header("Overview")
    curve = q(url, "label_curve")
    if len(curve):
        st.caption(LABEL_CURVE_CAPTION)
        left, right = st.columns([3, 2])
        placed = curve.dropna(subset=["human_labels"])
        with left:
            if placed[["val_dice", "val_accuracy"]].notna().any().any():
                chart(charts.label_efficiency(curve))
            else:
                st.info("No round recorded validation Dice or accuracy in its train step yet.")
        with right:
            if (curve[["human", "pseudo", "unlabeled"]].fillna(0) > 0).any().any():
                chart(charts.trained_on_stack(curve))
            else:
                st.info("What the rounds trained on is not recorded.")
        notes = {"reconstructed": "no `trained_on` recorded (older ledger): counts rebuilt from label timestamps, "
                                  "unlabeled unknown",
                 "missing": "what the model trained on is not known (not shown on the curve)"}
        for how, note in notes.items():
            ids = curve.loc[curve["composition"] == how, "round"].astype(int).tolist()
            if ids:
                st.caption(f"Round{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}: {note}.")
        with st.expander("Label-efficiency numbers"):
            st.dataframe(curve, hide_index=True, width="stretch")
    splits = q(url, "split_counts")
    total = int(splits["samples"].sum()) if len(splits) else 0
    cols = st.columns(4)
    cols[0].metric("Samples", f"{total:,}")
    cols[1].metric("Rounds", len(rounds))
    last = "—" if rounds.empty else f"{int(rounds['round'].iloc[-1])}: {rounds['status'].iloc[-1]}"
    cols[2].metric("Last round", last)
    cols[3].metric("Open annotation queue", q(url, "open_queue_size"))
    if total:
        st.dataframe(splits.set_index("split").T, width="content")
    if rounds.empty:
        st.info(
            "No rounds yet in this campaign. Start one with `medloop round --config <file>`; "
            "this page fills in as rounds finish."
        )
        return
    live = bool((rounds["status"] == "running").any())  # main() already asked the round lock
    chart(charts.step_timeline(queries.with_shown_states(q(url, "round_steps"), "state", live)))
    chart(charts.pool_stack(q(url, "pool_composition")))

    st.subheader("Champion model")
    champ, why = tracking(c, "champion", f"medloop-{c.name}")
    if champ:
        st.markdown(
            f"**{champ['model']}** version **{champ['version']}** (alias `champion`, "
            f"round {champ.get('round') or '?'}, run `{champ['run_id']}`)"
        )
        m = champ["metrics"]
        keys = [k for k in ("val_dice", "val_iou", "val_accuracy", "val_f1", "val_auc", "val_ece", "val_brier",
                            "val_nll") if k in m]
        for col, key in zip(st.columns(max(len(keys), 1)), keys):
            col.metric(key, fmt(m[key]))
    else:
        best = rounds.dropna(subset=["dice"]).sort_values("dice").tail(1)
        st.warning(why or f"MLflow has no model `medloop-{c.name}` with the alias `champion` yet.")
        if len(best):
            b = best.iloc[0]
            st.markdown(f"Best round in the ledger by validation Dice: **round {int(b['round'])}** "
                        f"(Dice {fmt(b['dice'])}, ECE {fmt(b['ece'])}).")
    st.subheader("Validation metrics per round")
    show = ["round", "status", "model_version", "dice", "iou", "accuracy", "f1", "auc", "ece", "adaptive_ece",
            "brier", "nll", "gate", "stop"]
    st.dataframe(rounds[show], hide_index=True, width="stretch")
    runs, why = tracking(c, "mlflow_rounds", c.experiment_name)
    if runs is not None and len(runs):
        metric = st.selectbox("Training curve (MLflow)", ["val_dice", "val_ece", "val_accuracy", "val_iou", "val_nll"])
        hist, _ = tracking(c, "train_history", dict(zip(runs["round"].astype(int), runs["run_id"])), metric)
        if hist is not None and len(hist):
            chart(charts.epoch_lines(hist, metric))
        else:
            st.caption(f"No per-epoch `{metric}` in the MLflow train runs.")
    elif why:
        st.caption(why)


def page_calibration(c: Campaign, url: str, rounds: pd.DataFrame) -> None:
    st.header("Calibration")
    if rounds.empty:
        st.info("No rounds yet: calibration appears after the first round's report step.")
        return
    ids = rounds["round"].astype(int).tolist()
    left, right = st.columns(2)
    rnd = left.selectbox("Round", ids, index=len(ids) - 1, key="cal_round")
    task_names = {"class": "classification", "seg": "segmentation"}
    task = right.radio("Task", list(task_names), format_func=task_names.get, horizontal=True, key="cal_task")
    row = rounds.loc[rounds["round"] == rnd].iloc[0]
    cards: tuple[tuple[str, ...], tuple[str, ...]] = (("ece", "adaptive_ece", "brier", "nll"),
                                                      ("ECE", "Adaptive ECE", "Brier", "NLL"))
    if task == "seg":
        cards = (("seg_ece",), ("Pixel ECE",))
    cols = st.columns(4)
    for col, key, label in zip(cols, *cards):
        col.metric(f"{label} (round {rnd})", fmt(row[key], ".4f"))
    bins = queries.reliability_bins(rounds, rnd, task)
    a, b = st.columns(2)
    with a:
        if len(bins):
            chart(charts.reliability(bins, f"Reliability, {task_names[task]}, round {rnd}"))
        else:
            st.info(f"Round {rnd} has no {task_names[task]} reliability bins in its metrics.")
    with b:
        chart(charts.metric_lines(rounds, ["ece", "adaptive_ece", "brier", "nll"], "Calibration over rounds",
                                  "value (lower is better)"))
    st.subheader("Per-class calibration (validation predictions vs human labels)")
    binned = q(url, "per_class_calibration", rnd, list(c.data.classes))
    if len(binned):
        a, b = st.columns(2)
        with a:
            chart(charts.per_class_reliability(binned, list(c.data.classes)))
        with b:
            st.dataframe(queries.per_class_summary(binned).round(4), hide_index=True, width="stretch")
    else:
        st.info(f"No validation predictions with human labels for round {rnd}.")
    a, b = st.columns(2)
    with a:
        rc = queries.risk_coverage(rounds)
        if len(rc):
            chart(charts.risk_coverage(rc))
            aurc = rc.groupby("round")["aurc"].first().reset_index()
            st.caption("AURC per round: " + ", ".join(f"round {int(r)}: {fmt(v, '.4f')}" for r, v in aurc.values))
        else:
            st.info("No risk-coverage curves recorded yet.")
    with b:
        pairs = q(url, "uncertainty_pairs", rnd)
        if len(pairs):
            chart(charts.uncertainty_scatter(pairs, list(c.data.classes)))
            corr = pairs[["std", "vacuity"]].corr(method="spearman").iloc[0, 1]
            st.caption(f"{len(pairs)} predictions with both estimates; Spearman correlation {fmt(corr)}.")
        else:
            st.info("MC-dropout and evidential uncertainty are not both recorded for this round "
                    "(set `uncertainty.method = \"both\"`).")


def page_selection(c: Campaign, url: str, rounds: pd.DataFrame) -> None:
    st.header("Selection")
    if rounds.empty:
        st.info("No rounds yet: pseudo-labels and the queue appear after the first select step.")
        return
    classes = list(c.data.classes)
    pseudo = q(url, "pseudo_per_class")
    cols = st.columns(3)
    cols[0].metric("Pseudo-labels (all rounds)", int(pseudo["samples"].sum()) if len(pseudo) else 0)
    last = int(rounds["round"].iloc[-1])
    cols[1].metric(f"Pseudo-labels in round {last}",
                   int(pseudo.loc[pseudo["round"] == last, "samples"].sum()) if len(pseudo) else 0)
    cols[2].metric("Policy (config)", c.selection.policy.upper())
    if len(pseudo):
        chart(charts.pseudo_bars(pseudo, classes))
    else:
        st.info("No pseudo-labels so far (the calibration gate or the thresholds held them back).")

    st.subheader("Thresholds in force")
    s = c.selection
    st.markdown(f"Campaign file: policy **{s.policy}**, tau_c = **{s.tau_c:g}**, tau_u = **{s.tau_u:g}** on "
                f"**{s.measure}**, pixel tau_u = {s.pixel_tau_u:g}, mask gate = {s.mask_gate:g}, "
                f"max ECE = {s.max_ece:g}.")
    th = q(url, "thresholds")
    gates = rounds[["round", "gate", "stop"]]
    table = gates.merge(th, on="round", how="left") if len(th) else gates
    st.dataframe(table, hide_index=True, width="stretch")

    st.subheader("Confidence vs uncertainty")
    ids = rounds["round"].astype(int).tolist()
    rnd = st.selectbox("Round", ids, index=len(ids) - 1, key="sel_round")
    tau_c, tau_u, measure = s.tau_c, s.tau_u, s.measure
    used = th.loc[th["round"] == rnd, "thresholds"] if len(th) else pd.Series(dtype=str)
    if len(used) and used.iloc[0]:
        recorded = json.loads(used.iloc[0])
        tau_c = float(recorded.get("tau_c", tau_c))
        tau_u = float(recorded.get("tau_u", tau_u))
        measure = recorded.get("measure", measure)
    measure = measure if measure in queries.UNCERTAINTY_MEASURES else "std"
    scatter = q(url, "selection_scatter", rnd, measure)
    if len(scatter):
        chart(charts.selection_scatter(scatter, tau_c, tau_u, measure))
        st.caption(f"tau_c = {tau_c:g}, tau_u = {tau_u:g} ({measure}); up to 4,000 pool samples shown.")
    else:
        st.info(f"No pool predictions with `{measure}` in round {rnd}.")

    st.subheader("Acceptance rates")
    dec = q(url, "decision_counts")
    if len(dec):
        chart(charts.rate_bars(dec))
        st.dataframe(dec, hide_index=True, width="stretch")
    else:
        st.info("No selections recorded yet.")

    st.subheader("Pseudo-label precision")
    audit, truth = q(url, "audit_precision"), q(url, "truth_precision")
    parts = []
    shown = ["round", "source", "policy", "precision", "n"]
    if len(audit):
        parts.append(audit.assign(source="human audit", policy="audited", n=audit["answered"])[shown])
    if len(truth):
        parts.append(truth.assign(source="hidden truth", n=truth["checked"])[shown])
    if parts:
        prec = pd.concat(parts, ignore_index=True)
        pcols = st.columns(2)
        if len(audit):
            pcols[0].metric("Audit precision (latest)", f"{audit['precision'].iloc[-1]:.1%}",
                           help=f"{int(audit['agreed'].iloc[-1])} of {int(audit['answered'].iloc[-1])} audited")
        if len(truth):
            pcols[1].metric("Hidden-truth precision (latest)", f"{truth['precision'].iloc[-1]:.1%}")
        chart(charts.precision_lines(prec, "Precision of pseudo class labels"))
    elif len(pseudo) and (pseudo["class"] == "(mask only)").all():
        st.info("The pseudo-labels of this campaign are masks only, so class precision does not apply "
                "(audits still show up on the Annotation page).")
    else:
        st.info("No audited pseudo-labels answered and no hidden truth to check against yet.")

    policies = dec.loc[dec["decision"] == "pseudo"] if len(dec) else dec
    if len(policies) and policies["policy"].nunique() > 1:
        st.subheader("PL / CPL / UPS comparison")
        chart(charts.policy_comparison(policies))


def page_annotation(c: Campaign, url: str, rounds: pd.DataFrame) -> None:
    st.header("Annotation")
    states, kept = q(url, "task_states"), q(url, "kept_prediction")
    cols = st.columns(4)
    cols[0].metric("Queue (waiting now)", q(url, "open_queue_size"))
    cols[1].metric("Done", int(states.loc[states["status"] == "done", "tasks"].sum()) if len(states) else 0)
    cols[2].metric("Skipped", int(states.loc[states["status"] == "skipped", "tasks"].sum()) if len(states) else 0)
    cols[3].metric("Quarantined annotations", q(url, "quarantined"))
    if states.empty:
        st.info("No annotation tasks yet: the queue fills at a round's select/push steps.")
        return
    chart(charts.task_bars(states))
    st.dataframe(states.pivot_table(index="round", columns="status", values="tasks", fill_value=0),
                 width="stretch")
    if len(kept) and kept["answered"].sum() > 0:
        total = kept["kept"].sum() / kept["answered"].sum()
        st.metric("Kept the pre-annotation (all rounds)", f"{total:.1%}")
        chart(charts.kept_bars(kept))
    else:
        st.info("No completed tasks say whether the pre-annotation was kept.")


def page_explorer(c: Campaign, url: str, rounds: pd.DataFrame) -> None:
    st.header("Sample explorer")
    if rounds.empty:
        st.info("No rounds yet: the explorer shows the samples a round selected.")
        return
    classes = list(c.data.classes)
    ids = rounds["round"].astype(int).tolist()
    a, b, d = st.columns(3)
    rnd = a.selectbox("Round", ids, index=len(ids) - 1, key="ex_round")
    cls = b.selectbox("Predicted class", ["all", *classes], key="ex_class")
    decision = d.selectbox("Decision", ["all", *queries.DECISIONS], key="ex_decision")
    k = None if cls == "all" else classes.index(cls)
    dec = None if decision == "all" else decision
    total = q(url, "explorer_count", rnd, k, dec)
    pages = max(1, -(-total // PAGE_SIZE))
    page = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1, key="ex_page")
    if total == 0:
        st.info("No samples match these filters.")
        return
    st.caption(f"{total:,} samples; showing {(page - 1) * PAGE_SIZE + 1}–{min(page * PAGE_SIZE, total)}. "
               "Outlines: human mask (green), pseudo mask (orange), predicted mask (blue). "
               "Right: pixel uncertainty (dark = certain, bright = uncertain).")
    rows = q(url, "explorer_page", rnd, k, dec, int(page) - 1, PAGE_SIZE)
    store = ImageStore(c.store)
    grid = st.columns(3)
    for i, row in enumerate(rows.itertuples(index=False)):
        with grid[i % 3]:
            render_sample(store, row, classes, c.data.regions)


def _load(loader: Any, rel: Any) -> Any:
    if not isinstance(rel, str) or not rel:
        return None
    try:
        return loader(rel)
    except (OSError, ValueError):
        return None


def render_sample(store: ImageStore, row: Any, classes: list[str], regions: list[str] | None = None) -> None:
    pred = classes[int(row.pred_class)] if row.pred_class is not None and not pd.isna(row.pred_class) else "—"
    title = (f"**{row.uid}** · {row.decision} · predicted {pred} ({fmt(row.confidence, '.2f')})  \n"
             f"human: {txt(row.human_class)} · pseudo: {txt(row.pseudo_class)} · std {fmt(row.std, '.3f')}")
    st.markdown(title)
    if str(row.image_path).endswith(".npy"):  # a volume: one axial slice at a time
        render_volume(store, row, regions)
        return
    image = _load(store.load_image, row.image_path)
    if image is None:
        st.warning(f"Image missing in the store: {row.image_path}")
        return
    # label maps: a multi-region campaign's masks keep their region labels (one outline per region)
    load = store.load_label_map if regions else store.load_mask
    masks = {"human": _load(load, row.human_mask), "pseudo": _load(load, row.pseudo_mask),
             "predicted": _load(load, row.pred_mask)}
    # the image and human masks are native, predicted and pseudo-masks at the model size: outline at the image's
    masks = {k: None if m is None else mask_at(m, image.shape[:2]) for k, m in masks.items()}
    scale = max(1, 128 // max(image.shape[:2]))
    pics = [charts.overlay(image, masks, scale=scale)]
    caps = ["image + masks" + charts.region_note(masks, regions)]
    umap = _load(store.load_array, row.umap_path)
    if umap is not None:
        pics.append(charts.heatmap(umap, scale=scale))
        caps.append(f"pixel uncertainty (max {float(umap.max()):.3f})")
    st.image(pics, caption=caps, width=150)


def render_volume(store: ImageStore, row: Any, regions: list[str] | None = None) -> None:
    """A volume case as a slice viewer: a slider over its axial slices (starting on the slice with the most
    lesion voxels), the slice with the outlines of the human, pseudo and predicted masks on it (a partial
    human label shows only on its annotated slice), and the slice of the voxel uncertainty."""
    from medloop.data.imagestore import nearest_resize
    from medloop.labeling.volume_slices import annotated_slice, slice_image

    volume = _load(store.load_volume, row.image_path)
    if volume is None:
        st.warning(f"Volume missing in the store: {row.image_path}")
        return
    shape = tuple(int(n) for n in volume.shape[1:])
    paths = {"human": row.human_mask, "pseudo": row.pseudo_mask, "predicted": row.pred_mask}
    # masks come at the stored grid (human) or the model's (pseudo, predicted): shown at the stored grid
    maps = {k: _load(store.load_label_map, rel) for k, rel in paths.items()}
    maps = {k: None if m is None or m.ndim != 3 else nearest_resize(m, shape) for k, m in maps.items()}
    lesion = np.zeros(shape[0])
    for m in maps.values():
        if m is not None:
            lesion += ((m > 0) & (m != 255)).reshape(shape[0], -1).sum(1)
    start = int(np.argmax(lesion)) if lesion.max() > 0 else shape[0] // 2
    index = st.slider(f"axial slice (of {shape[0]})", 0, shape[0] - 1, start, key=f"slice-{row.uid}")
    image = slice_image(volume, index)
    masks = {k: None if m is None else annotated_slice(m, index, regions=bool(regions)) for k, m in maps.items()}
    scale = max(1, 128 // max(image.shape[:2]))
    pics = [charts.overlay(image, masks, scale=scale)]
    human = maps["human"]
    partial = human is not None and bool((human[index] == 255).all())
    caps = [f"slice {index + 1} of {shape[0]} + masks" + (" (human: not annotated here)" if partial else "")
            + charts.region_note(masks, regions)]
    umap = _load(store.load_array, row.umap_path)
    if umap is not None and umap.ndim == 3:
        u = nearest_resize(umap, shape)[index]
        pics.append(charts.heatmap(u, scale=scale, vmax=float(umap.max()) if umap.max() > 0 else None))
        caps.append(f"voxel uncertainty, slice {index + 1} (max {float(umap.max()):.3f})")
    st.image(pics, caption=caps, width=150)


# ---- entry ------------------------------------------------------------------------------------------------


def main() -> None:
    st.set_page_config(page_title="medloop dashboard", layout="wide")
    path = config_path()
    try:
        campaign = load_campaign(path)
    except ConfigError as err:
        st.title("medloop dashboard")
        st.error(str(err))
        return
    wanted = st.query_params.get("page", PAGES[0])  # e.g. ?page=Calibration (links, browser tests)
    page = st.sidebar.radio("Page", PAGES, index=PAGES.index(wanted) if wanted in PAGES else 0, key="page")
    st.sidebar.caption(f"Campaign **{campaign.name}**  \nconfig: `{path or '(defaults)'}`  \n"
                       f"ledger: `{campaign.ledger}`  \nMLflow: `{campaign.tracking_uri}`")
    st.sidebar.caption("Read-only view; data refreshes every 30 s.")
    st.title(f"medloop · {campaign.name}")
    url = campaign.ledger
    try:
        _engine(url)
    except queries.LedgerUnavailable as err:
        st.info(f"This campaign has no data yet. {err}")
        return
    # a round left "running" by a killed process reads "interrupted", as in `medloop status` (the OS
    # lock is asked afresh on every run; the ledger query stays cached)
    rounds = queries.with_shown_states(q(url, "rounds"), "status", round_in_progress(campaign))
    {
        "Overview": page_overview,
        "Calibration": page_calibration,
        "Selection": page_selection,
        "Annotation": page_annotation,
        "Sample explorer": page_explorer,
    }[page](campaign, url, rounds)


main()
