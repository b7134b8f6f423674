"""Run real medloop campaigns for the benchmarks: what is measured is what users run.

One campaign per arm and seed, in ``<out>/<arm>-s<seed>/`` (``campaign.toml`` written with tomli-w,
``root`` = that folder): the dataset is ingested once (``medloop.data.ingest.ingest``, skipped when the
ledger already holds samples), then ``medloop.rounds.orchestrator.run_round`` runs round after round
(sync -> train on Ray Train -> MC scoring -> selection -> push -> report, MLflow included) with
``labeling.enabled = false`` and ``labeling.oracle = true``: the push step's oracle answers the queued
cases from the hidden truth, as ``medloop demo`` does. ``run_round`` resumes an unfinished round by
itself, and is called with ``force=True`` so that every arm gets the same number of rounds (no
stopping rule ends one early).

After every round, that round's checkpoint (``Round.checkpoint_path``) is evaluated on the test split
(``medloop.trainers.evaluate.evaluate_checkpoint``; the loop never trains or selects on it) and one row
is added to the arm's result file ``<results>/<arm>-s<seed>.json``, written atomically (temporary file
+ ``os.replace``) after every round. A rerun skips the rounds already in the file and continues; a
rerun with other settings for an existing campaign is refused (delete the folder and the file).

A row (see :func:`round_record`): ``round``; ``human_labels`` = the train step's
``trained_on.human_labels`` (every human label the round's model used, validation labels included);
``trained_on``; ``test`` (the test metrics); ``val`` (the train step's best validation metrics);
``pseudo_labels`` / ``pseudo_masks`` / ``pseudo_per_class`` / ``pool_predicted_per_class`` /
``queue_size`` / ``audit_size`` (select step); ``pseudo_precision`` / ``pseudo_mask_dice`` (the report's
precision of the class pseudo-labels and Dice of the pseudo-masks against the hidden truth,
``Round.metrics``), ``pseudo_class_precision`` (the same per class, from the ledger); ``gates``;
``oracle`` (push step); ``epochs_run``, ``seconds``.
The pseudo-labels of round r are chosen after round r's training: round r + 1 trains on them.

Used by ``bench_label_efficiency.py`` and ``bench_pseudo_labels.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT_ROOT = ROOT / "bench" / "out"
RESULTS_ROOT = ROOT / "bench" / "results"
DEFAULT_BUSI = ROOT.parent / "shared" / "data" / "busi"
DEFAULT_LIDC = ROOT.parent / "shared" / "data" / "lidc_nodules"
#: LIDC nodule crops: the generic volume layout, patients from the file names <patient>_R_<nodule>
LIDC_DATA = {"source": "generic", "classes": ["benign", "malignant"], "group_pattern": r"^(.+)_R_\d+$"}

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

# ---- campaign settings ------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` into a copy of ``base``, section by section (nested dicts merged, other values replaced)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``["compute.num_workers=0", "training.semi=fixmatch"]`` -> nested overrides (values read as TOML,
    else kept as strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: expected section.key=value")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def count_cases(dataset: str, busi: str | Path | None, n_synthetic: int) -> int:
    """Cases the ingest will find (BUSI: images in the folder, no decoding)."""
    if dataset == "synthetic":
        return int(n_synthetic)
    if dataset == "lidc":
        path = Path(busi or DEFAULT_LIDC)
        if not (path / "images").is_dir():
            raise SystemExit(f"LIDC nodules not found at {path}; pass --lidc PATH")
        return sum(1 for p in (path / "images").iterdir() if p.name.endswith((".nii", ".nii.gz")))
    from medloop.config import CLASSES_DEFAULT
    from medloop.data.busi import busi_root, scan_busi

    path = Path(busi or DEFAULT_BUSI)
    if not path.is_dir():
        raise SystemExit(f"BUSI not found at {path}; pass --busi PATH or --dataset synthetic")
    items, _ = scan_busi(busi_root(path), list(CLASSES_DEFAULT))
    return len(items)


def expected_train_count(n_cases: int, split: list[float]) -> int:
    """Training-split size before the pool is moved out (as ``medloop.data.splits.assign_splits``)."""
    return n_cases - int(round((split[1] + split[2]) * n_cases))


def unlabeled_fraction_for(init_labels: int, train_count: int) -> float:
    """``data.unlabeled_fraction`` that leaves about ``init_labels`` labelled training cases."""
    if train_count <= 0 or init_labels >= train_count:
        return 0.0
    return 1.0 - init_labels / train_count


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


@dataclass
class ArmRun:
    """One arm x seed: its campaign settings, folder, result file and number of rounds."""

    arm: str
    seed: int
    settings: dict[str, Any]
    rounds: int
    folder: Path
    result_file: Path
    dataset: str
    data_path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def base_settings(args: argparse.Namespace, seed: int, *, train_count: int, init_labels: int) -> dict[str, Any]:
    """Campaign settings every arm of a seed shares (product defaults for everything not named)."""
    split = [float(x) for x in args.split]
    data: dict[str, Any] = {
        "source": args.dataset, "image_size": args.size, "split": split, "seed": seed,
        "unlabeled_fraction": unlabeled_fraction_for(init_labels, train_count),
    }
    if args.dataset == "synthetic":
        data["n_samples"] = args.n_synthetic
    elif args.dataset == "lidc":
        data.update(LIDC_DATA, path=str(Path(args.lidc).resolve()), volume_size=list(args.volume_size))
    else:
        data["path"] = str(Path(args.busi).resolve())
    compute: dict[str, Any] = {"epochs": args.epochs, "seed": seed}
    if getattr(args, "gpu", False):
        compute["use_gpu"] = True
    return {
        "data": data,
        "model": {"name": args.model, "width": args.width},
        "compute": compute,
        "selection": {"budget": args.budget, "seed": seed},
        "labeling": {"enabled": False, "oracle": True},
    }


def make_run(args: argparse.Namespace, arm: str, seed: int, overrides: dict[str, Any], rounds: int, *,
             out_dir: Path, results_dir: Path, prefix: str, train_count: int, init_labels: int) -> ArmRun:
    folder = (out_dir / f"{arm}-s{seed}").resolve()
    settings = deep_merge(base_settings(args, seed, train_count=train_count, init_labels=init_labels), overrides)
    settings = deep_merge(settings, parse_sets(getattr(args, "set", None) or []))
    settings = _drop_none({"name": f"{prefix}-{arm}-s{seed}", "root": str(folder), **settings})
    return ArmRun(arm, seed, settings, rounds, folder, results_dir / f"{arm}-s{seed}.json", args.dataset,
                  settings["data"].get("path"),
                  {"init_labels": init_labels, "expected_train_count": train_count})


# ---- files --------------------------------------------------------------------------------------------


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace`` (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=C.json_default) + "\n")
    os.replace(tmp, path)


def _canonical(d: dict[str, Any]) -> str:
    return json.dumps(d, sort_keys=True)


def write_campaign(run: ArmRun) -> Any:
    """``campaign.toml`` in the run's folder; refuses to change the settings of an existing campaign."""
    import tomli_w

    from medloop.config import load_campaign

    run.folder.mkdir(parents=True, exist_ok=True)
    f = run.folder / "campaign.toml"
    text = tomli_w.dumps(run.settings)
    if f.exists() and _canonical(tomllib.loads(f.read_text())) != _canonical(tomllib.loads(text)):
        if (run.folder / "ledger.db").exists():
            raise SystemExit(f"{f} was written with other settings than this run's; rerun with the same flags, "
                             f"or delete {run.folder} and {run.result_file} to start that arm again")
    f.write_text(text)
    return load_campaign(f)


def ensure_ingested(campaign: Any, dataset: str, path: str | None) -> bool:
    """Ingest once: skipped when the campaign's ledger already holds samples. True when it ingested."""
    from sqlalchemy import func, select

    from medloop.data.ingest import ingest
    from medloop.ledger.schema import Sample
    from medloop.ledger.store import Ledger

    if (campaign.folder / "ledger.db").exists():
        led = Ledger.open(campaign.ledger)
        try:
            with led.reading() as s:
                if int(s.scalar(select(func.count()).select_from(Sample)) or 0) > 0:
                    return False
        finally:
            led.close()
    ingest(campaign, "generic" if dataset == "lidc" else dataset, path)
    return True


# ---- one round's row ------------------------------------------------------------------------------------


def _pseudo_class_precision(s: Any, round_id: int) -> dict[str, dict[str, Any]]:
    """Per predicted class: this round's class pseudo-labels and how many agree with the hidden truth."""
    from sqlalchemy import select

    from medloop.ledger.schema import Label

    truth = dict(s.execute(select(Label.sample_id, Label.class_name).where(Label.kind == "truth")).all())
    out: dict[str, dict[str, Any]] = {}
    for sid, cls in s.execute(select(Label.sample_id, Label.class_name).where(
            Label.kind == "pseudo", Label.round_id == round_id, Label.class_name.is_not(None))).all():
        if truth.get(sid) is None:
            continue
        c = out.setdefault(cls, {"n": 0, "correct": 0})
        c["n"] += 1
        c["correct"] += int(truth[sid] == cls)
    for c in out.values():
        c["precision"] = c["correct"] / c["n"]
    return out


def round_record(campaign: Any, ledger: Any, round_id: int) -> dict[str, Any]:
    """The benchmark row of a finished round: test metrics of its checkpoint plus what the round did."""
    from medloop.ledger.schema import Round
    from medloop.rounds import state
    from medloop.trainers.evaluate import evaluate_checkpoint

    with ledger.reading() as s:
        rnd = s.get(Round, round_id)
        if rnd is None or rnd.status != "done":
            raise ValueError(f"round {round_id} is not done")
        metrics, ckpt = dict(rnd.metrics or {}), rnd.checkpoint_path
        seconds = (rnd.finished_at - rnd.started_at).total_seconds() if rnd.finished_at and rnd.started_at else None
        train_d, select_d = state.step_detail(s, round_id, "train"), state.step_detail(s, round_id, "select")
        push_d = state.step_detail(s, round_id, "push")
        per_class = _pseudo_class_precision(s, round_id)
    ckpt = ckpt or train_d.get("checkpoint_path")
    t0 = time.perf_counter()
    test = evaluate_checkpoint(campaign, ledger, ckpt, split="test")
    trained_on = dict(train_d.get("trained_on") or {})
    return {
        "round": round_id,
        "human_labels": trained_on.get("human_labels"),
        "trained_on": trained_on,
        "test": test,
        "val": dict(train_d.get("best_metrics") or {}),
        "pseudo_labels": select_d.get("pseudo_labels"),
        "pseudo_masks": select_d.get("pseudo_masks"),
        "pseudo_per_class": select_d.get("pseudo_per_class"),
        "pool_predicted_per_class": select_d.get("pool_predicted_per_class"),
        "queue_size": select_d.get("queue_size"),
        "audit_size": select_d.get("audit_size"),
        "pseudo_precision": metrics.get("pseudo_precision_truth"),
        "pseudo_precision_n": metrics.get("pseudo_truth_n"),
        "pseudo_mask_dice": metrics.get("pseudo_mask_dice_truth"),
        "pseudo_mask_dice_n": metrics.get("pseudo_mask_truth_n"),
        "pseudo_class_precision": per_class,
        "gates": {"calibration_open": select_d.get("gate_open"), "val_ece": select_d.get("val_ece"),
                  "calibration": select_d.get("gate"), "segmentation_open": select_d.get("seg_gate_open"),
                  "val_dice": select_d.get("val_dice"), "segmentation": select_d.get("seg_gate")},
        "policy": select_d.get("policy"),
        "acquisition": select_d.get("acquisition"),
        "oracle": {k: v for k, v in push_d.items() if k != "tasks"},
        "epochs_run": len(train_d.get("history") or []),
        "checkpoint": ckpt,
        "seconds": seconds,
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }


# ---- the loop over rounds -------------------------------------------------------------------------------


def load_result(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def run_arm(run: ArmRun, *, extras: dict[str, Any] | None = None,
            echo: Callable[[str], Any] | None = print, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rounds 1..``run.rounds`` of one campaign, a result row after each; resumable (see module doc)."""
    from medloop.ledger.schema import Round
    from medloop.ledger.store import Ledger
    from medloop.rounds.orchestrator import run_round

    result = load_result(run.result_file)
    if result is not None and _canonical(result.get("campaign") or {}) != _canonical(run.settings):
        raise SystemExit(f"{run.result_file} was measured with other settings than this run's; rerun with the "
                         f"same flags, or delete it and {run.folder} to start that arm again")
    if result is None:
        result = {"arm": run.arm, "seed": run.seed, "dataset": run.dataset, "rounds_planned": run.rounds,
                  **run.info, **(meta or {}), "campaign": run.settings, "rows": []}
    campaign = write_campaign(run)
    if ensure_ingested(campaign, run.dataset, run.data_path) and echo:
        echo(f"[{run.arm} s{run.seed}] ingested {run.dataset} into {campaign.folder}")
    have = {int(r["round"]) for r in result["rows"]}
    while True:
        led = Ledger.open(campaign.ledger)
        try:
            with led.reading() as s:
                done = sorted(r.id for r in s.query(Round).filter(Round.status == "done").all())
            done = [r for r in done if r <= run.rounds]
            for rid in done:
                if rid in have:
                    continue
                row = round_record(campaign, led, rid)
                result["rows"] = sorted([*result["rows"], row], key=lambda r: r["round"])
                result["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
                write_json_atomic(run.result_file, result)
                have.add(rid)
                if echo:
                    echo(row_line(run, row))
        finally:
            led.close()
        if len(done) >= run.rounds:
            return result
        out = run_round(campaign, force=True, extras=extras)
        if out.status != "done":
            raise RuntimeError(f"{run.arm} seed {run.seed}: round did not finish: {out.status}: {out.message}")


def row_line(run: ArmRun, row: dict[str, Any]) -> str:
    t = row["test"]
    return (f"[{run.arm} s{run.seed}] round {row['round']}: human labels {row['human_labels']}, "
            f"test Dice {fmt(t.get('dice'))}, accuracy {fmt(t.get('accuracy'))}, ECE {fmt(t.get('ece'))}; "
            f"pseudo {row['pseudo_labels']} (precision {fmt(row['pseudo_precision'])}), "
            f"masks {row['pseudo_masks']} (Dice {fmt(row['pseudo_mask_dice'])}); {fmt(row['seconds'], 0)} s")


# ---- reading results back ----------------------------------------------------------------------------------


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every ``<arm>-s<seed>.json`` of a results folder."""
    return [json.loads(p.read_text()) for p in sorted(Path(results_dir).glob("*-s*.json"))]


def finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out.append(float(v))
    return out


def mean_std(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """Mean and population std of the finite values; (None, None) when there is none."""
    import numpy as np

    v = finite(values)
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v))


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "nan"
    return str(v)


# ---- command line ------------------------------------------------------------------------------------------


def add_common_args(ap: argparse.ArgumentParser, *, size: int, epochs: int, rounds: int, budget: int,
                    init_labels: int, split: str, seeds: str, n_synthetic: int) -> None:
    ap.add_argument("--dataset", choices=["busi", "synthetic", "lidc"], default="busi")
    ap.add_argument("--busi", default=str(DEFAULT_BUSI), help="BUSI folder (with Dataset_BUSI_with_GT/)")
    ap.add_argument("--lidc", default=str(DEFAULT_LIDC), help="LIDC nodule crops (images/, masks/, labels.csv)")
    ap.add_argument("--volume-size", default=[16, 48, 48], type=lambda s: [int(x) for x in s.split(",")],
                    help="--dataset lidc: data.volume_size slices,rows,columns")
    ap.add_argument("--n-synthetic", type=int, default=n_synthetic, help="phantoms when --dataset synthetic")
    ap.add_argument("--seeds", default=seeds, help="comma list; a seed sets data/compute/selection seeds")
    ap.add_argument("--size", type=int, default=size, help="data.image_size")
    ap.add_argument("--model", default="mtunet", help="model.name")
    ap.add_argument("--width", type=int, default=16, help="model.width")
    ap.add_argument("--epochs", type=int, default=epochs, help="compute.epochs per round")
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--budget", type=int, default=budget, help="selection.budget: cases queued per round")
    ap.add_argument("--init-labels", type=int, default=init_labels,
                    help="labelled training cases at the start (-> data.unlabeled_fraction)")
    ap.add_argument("--split", default=split, type=lambda s: [float(x) for x in s.split(",")],
                    help="data.split: train,val,test fractions")
    ap.add_argument("--gpu", action="store_true", help="compute.use_gpu = true")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="any other campaign key for every arm (TOML value), e.g. compute.num_workers=1")
    ap.add_argument("--out", default=None, help="campaign folders (default bench/out/<bench>[_synthetic])")
    ap.add_argument("--results", default=None, help="result files (default bench/results/<bench>[_synthetic])")


def folders(args: argparse.Namespace, bench: str) -> tuple[Path, Path]:
    """(campaign folders, result folder): bench/out/<bench> and bench/results/<bench> for BUSI,
    with a ``_synthetic`` suffix for synthetic runs, unless --out / --results say otherwise."""
    tag = bench if args.dataset == "busi" else f"{bench}_{args.dataset}"
    out = Path(args.out) if args.out else OUT_ROOT / tag
    res = Path(args.results) if args.results else RESULTS_ROOT / tag
    return out, res


def seeds_of(args: argparse.Namespace) -> list[int]:
    return [int(s) for s in str(args.seeds).split(",") if s.strip()]


def machine() -> dict[str, Any]:
    from common import machine as _machine

    return _machine()


def command_line() -> str:
    from common import command_line as _cl

    return _cl()
