"""``medloop evaluate``: a campaign's model on a labeled dataset the campaign has not seen.

The dataset is read with ingest's readers (:func:`medloop.data.ingest.read_dataset`: BUSI or generic
layout, the same image rules) and never written to the campaign. Each image is predicted as
``medloop predict`` does (:mod:`medloop.trainers.inference`), its mask compared with the dataset's mask
at the image's own size, and the metrics of :mod:`medloop.trainers.evaluate_ci` computed with bootstrap
95 % confidence intervals. ``--out`` receives (through a temporary folder, renamed at the end):
``report.md``, ``report.json``, ``reliability.png``, ``confusion_matrix.png`` and ``cases.csv`` (one row
per case). The report is also logged to the campaign's MLflow experiment as an evaluation run tagged
with the registered model name and version (``--no-mlflow`` to skip). The ledger is only read: a
missing campaign is refused, and cases already in the campaign are counted in a warning.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medloop.config import Campaign
from medloop.data.errors import BadFile, DataError, FileError

FORMATS = ("busi", "generic")
EVAL_TAG = "medloop.evaluation"


class CampaignMissing(DataError):
    """The campaign to evaluate for does not exist (no ledger)."""


@dataclass
class EvaluateReport:
    out: Path
    model: str
    metrics: dict[str, Any]
    bad: list[BadFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mlflow_run_id: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        m = self.metrics
        lines = [f"evaluated {self.model} on {m['n']} case(s) ({m['n_class']} with a class, {m['n_lesion']} with a "
                 f"lesion, {m['n_no_lesion']} without) in {self.seconds:.1f} s"]
        lines += [f"  {name:<11} {fmt_entry(e)}" for name, e in m["metrics"].items()]
        lines.append(f"wrote {self.out}" + (f"; MLflow run {self.mlflow_run_id}" if self.mlflow_run_id else ""))
        lines += [f"warning: {w}" for w in self.warnings]
        if self.bad:
            lines.append(f"{len(self.bad)} file(s) left out:")
            lines += [f"  {b}" for b in self.bad]
        return "\n".join(lines)


def fmt_entry(e: dict[str, Any], digits: int = 3) -> str:
    """``0.812 [0.771, 0.850]``, or ``-`` when undefined."""
    if e.get("value") is None:
        return "-"
    text = f"{e['value']:.{digits}f}"
    if e.get("lo") is not None:
        text += f" [{e['lo']:.{digits}f}, {e['hi']:.{digits}f}]"
    return text


def campaign_hashes(campaign: Campaign) -> set[str]:
    """The case hashes of the campaign's samples; :class:`CampaignMissing` when it has no ledger."""
    from sqlalchemy import select

    from medloop.ledger.readonly import LedgerMissing, open_readonly
    from medloop.ledger.schema import Sample

    try:
        engine = open_readonly(campaign.ledger)
    except LedgerMissing as err:
        raise CampaignMissing(f"campaign {campaign.name!r}: {err}; evaluate needs an existing campaign") from None
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(Sample.content_hash)).scalars())
    finally:
        engine.dispose()


# ---- the report ----------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    """The report as markdown: headline table, per-class table, confusion matrix, notes."""
    m, info = result["metrics"], result["run"]
    if info.get("volume_size"):
        grid = "x".join(map(str, info["volume_size"]))
        model_input, compared, hd_unit = f"{grid} voxels", "on each volume's own grid", "mm"
    else:
        model_input, compared, hd_unit = f"{info['image_size']} px", "at each image's own size", "px"
    lines = [
        f"# Evaluation of {info['model']}", "",
        f"Dataset `{info['dataset']}` ({info['format']}): {m['n']} case(s), {m['n_class']} with a class label, "
        f"{m['n_lesion']} with a lesion, {m['n_no_lesion']} without. Model input {model_input}, "
        f"{info['method']}, device {info['device']}. Masks compared {compared}.",
        "", f"95 % confidence intervals: percentile bootstrap over cases, {m['bootstrap']['n_boot']} resamples, "
        f"seed {m['bootstrap']['seed']}.", "",
        "| metric | value [95 % CI] | on |", "|---|---|---|",
    ]
    on = {"dice": "lesion cases", "iou": "lesion cases", "hd95": f"lesion cases ({hd_unit})",
          "empty_rate": "no-lesion cases"}
    for name, e in m["metrics"].items():
        lines.append(f"| {name} | {fmt_entry(e)} | {on.get(name, 'cases with a class label')} |")
    lines += ["", "## Per class", "",
              "| class | n | lesion / none | recall | precision | AUC | Dice | IoU | HD95 | empty rate |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in m["per_class"].items():
        cells = " | ".join(fmt_entry(e[k]) for k in ("recall", "precision", "auc", "dice", "iou", "hd95", "empty_rate"))
        lines.append(f"| {name} | {e['n']} | {e['n_lesion']} / {e['n_no_lesion']} | {cells} |")
    if m.get("regions"):
        lines += ["", f"## Per region (cases holding the region; HD95 in {hd_unit})", "",
                  "| region | n | Dice | HD95 |", "|---|---|---|---|"]
        lines += [f"| {name} | {e['n']} | {_with_ci(e, 'dice', 3)} | {_with_ci(e, 'hd95', 2)} |"
                  for name, e in m["regions"].items()]
    if m.get("confusion"):
        classes = list(m["per_class"])
        lines += ["", "## Confusion matrix (rows true, columns predicted)", "",
                  "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, m["confusion"])]
    lines += ["", "![reliability](reliability.png) ![confusion](confusion_matrix.png)"]
    if result.get("warnings") or result.get("bad"):
        lines += ["", "## Notes", ""]
        lines += [f"- {w}" for w in result.get("warnings", [])]
        lines += [f"- left out: {b['file']}: {b['reason']}" for b in result.get("bad", [])]
    return "\n".join(lines) + "\n"


def _with_ci(e: dict[str, Any], metric: str, digits: int) -> str:
    """``0.812 [0.776, 0.845]`` (the bootstrap interval when there is one)."""
    ci = e.get(f"{metric}_ci")
    tail = f" [{_fixed(ci[0], digits)}, {_fixed(ci[1], digits)}]" if ci else ""
    return _fixed(e[metric], digits) + tail


def _fixed(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_plots(result: dict[str, Any], folder: Path) -> list[Path]:
    from medloop.tracking.plots import confusion_matrix_png, reliability_diagram

    m = result["metrics"]
    files = [reliability_diagram(m["reliability"], folder / "reliability.png", title="reliability (evaluation)")]
    if m.get("confusion"):
        files.append(confusion_matrix_png(np.asarray(m["confusion"]), list(m["per_class"]),
                                          folder / "confusion_matrix.png"))
    return files


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else f"{v:.6g}"
    return str(v)


def write_cases(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = ["file", "class", "predicted", "confidence", "has_mask", "lesion", "predicted_empty", "dice", "iou", "hd95"]
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        w.writerows([_cell(r.get(c)) for c in cols] for r in rows)


# ---- MLflow --------------------------------------------------------------------------------------------


def _metric_items(m: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}

    def put(prefix: str, e: dict[str, Any]) -> None:
        for key, suffix in (("value", ""), ("lo", "_ci_lo"), ("hi", "_ci_hi")):
            v = e.get(key)
            if v is not None and math.isfinite(v):
                out[f"{prefix}{suffix}"] = float(v)

    for name, e in m["metrics"].items():
        put(f"eval_{name}", e)
    for cls, entry in m["per_class"].items():
        for name, e in entry.items():
            if isinstance(e, dict):
                put(f"eval_{cls}_{name}", e)
    out.update(eval_n=float(m["n"]), eval_n_lesion=float(m["n_lesion"]), eval_n_no_lesion=float(m["n_no_lesion"]))
    return out


def log_evaluation(campaign: Campaign, result: dict[str, Any], folder: Path) -> str:
    """An MLflow run in the campaign's experiment: metrics (value, CI bounds), the report files as artifacts,
    tags naming the dataset and the model (registered name, version, round, checkpoint)."""
    import re

    from mlflow.entities import Metric, Param

    from medloop.tracking import Tracker

    tracker = Tracker(campaign)
    c, info = tracker.client, result["run"]
    tags = {EVAL_TAG: str(info["dataset"]), "medloop.eval_format": info["format"],
            "mlflow.runName": f"evaluate-{Path(info['dataset']).name}",
            "medloop.checkpoint": str(info["checkpoint"])}
    if info.get("version") is not None:
        tags.update({"medloop.model_name": str(info["registered_model"]), "medloop.model_version": str(info["version"]),
                     "medloop.model_round": str(info["round"])})
    run = c.create_run(tracker.experiment_id, run_name=tags["mlflow.runName"], tags=tags)
    rid = run.info.run_id
    try:
        now = int(time.time() * 1000)
        metrics = [Metric(re.sub(r"[^A-Za-z0-9_\-./ ]", "_", k), v, now, 0)
                   for k, v in _metric_items(result["metrics"]).items()]
        params = [Param(k, str(info[k])) for k in ("passes", "method", "image_size", "device", "format")]
        params += [Param(f"bootstrap_{k}", str(v)) for k, v in result["metrics"]["bootstrap"].items()]
        for i in range(0, len(metrics), 500):
            c.log_batch(rid, metrics=metrics[i:i + 500])
        c.log_batch(rid, params=params)
        for f in sorted(folder.iterdir()):
            if f.is_file():
                c.log_artifact(rid, str(f))
        c.set_terminated(rid, "FINISHED")
    except BaseException:
        c.set_terminated(rid, "FAILED")
        raise
    return rid


# ---- predicting the cases --------------------------------------------------------------------------------


@dataclass
class CasePredictions:
    """What the evaluation needs of every labeled case: class probabilities and labels (-1: none),
    per-case segmentation results (:func:`medloop.trainers.evaluate_ci.case_segmentation`, in parts), one
    ``cases.csv`` row each, the case hashes (ingest's identity, to spot cases the campaign holds), and the
    files left out and notes."""

    probs: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    segs: list[dict[str, np.ndarray]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    bad: list[BadFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # a multi-region model: (predicted label map, true label map, spacing or None) of each case with a mask
    region_maps: list[tuple[np.ndarray, np.ndarray, tuple[float, float, float] | None]] = field(default_factory=list)

    def add(self, files: Sequence[str | None], classes: list[str | None], has_mask: list[bool], preds: list[Any],
            seg: dict[str, np.ndarray], names: list[str]) -> None:
        """One chunk of cases: files, true classes, whether each has a mask, predictions (``probs``,
        ``pred_class``, ``measures``) and their :func:`case_segmentation`."""
        self.segs.append(seg)
        for j, (f, cls, m, q) in enumerate(zip(files, classes, has_mask, preds)):
            self.probs.append(q.probs)
            self.labels.append(-1 if cls is None else names.index(cls))
            self.rows.append({"file": f, "class": cls, "predicted": names[q.pred_class],
                              "confidence": float(q.measures["confidence"]), "has_mask": m,
                              "lesion": bool(seg["lesion"][j]), "predicted_empty": bool(seg["empty"][j]),
                              **{k: None if np.isnan(seg[k][j]) else float(seg[k][j])
                                 for k in ("dice", "iou", "hd95")}})


def _no_case(path: str | Path, read_any: bool, bad: list[BadFile]) -> DataError:
    listed = "".join(f"\n  {b}" for b in bad)
    what = "labeled (no class and no mask)" if read_any else "readable"
    return DataError(f"{path}: no {what} case to evaluate on{listed}")


def _image_cases(campaign: Campaign, im: Any, path: str | Path, fmt: str, settings: Any, bar: Any) -> CasePredictions:
    """Images of a BUSI or generic folder, read as ingest reads them and predicted as ``medloop predict`` does;
    masks compared at each image's own size."""
    from medloop.data.ingest import read_dataset
    from medloop.trainers.evaluate_ci import case_segmentation
    from medloop.trainers.inference import predict_images

    prepared, bad = read_dataset(campaign, fmt, path, bar)
    cases = [p for p in prepared if p.class_name is not None or p.mask is not None]
    if not cases:
        raise _no_case(path, bool(prepared), bad)
    out = CasePredictions(bad=bad, warnings=[n for p in cases for n in p.notes], hashes=[p.case_hash for p in cases])
    task = bar.add_task("predicting", total=len(cases)) if bar is not None else None
    step = campaign.compute.score_batch_size
    for start in range(0, len(cases), step):
        chunk = cases[start:start + step]
        preds = predict_images(im, [p.pixels for p in chunk], settings)
        seg = case_segmentation([q.mask for q in preds], [p.mask for p in chunk])
        out.add([p.original_path for p in chunk], [p.class_name for p in chunk], [p.mask is not None for p in chunk],
                preds, seg, im.classes)
        if im.meta.get("regions"):  # label maps at each image's own size; HD95 in pixels
            out.region_maps += [(q.mask, p.mask, None) for p, q in zip(chunk, preds) if p.mask is not None]
        if bar is not None:
            bar.advance(task, len(chunk))
    return out


def _volume_cases(campaign: Campaign, im: Any, path: str | Path, fmt: str, settings: Any, bar: Any
                  ) -> CasePredictions:
    """Volumes of a generic folder (:func:`medloop.data.volume_dataset.read_volume_folder`), predicted as
    ``medloop predict`` does (:mod:`medloop.predict_volumes`); masks compared on each volume's own grid
    (any region label counts as lesion), HD95 in millimetres from its voxel spacing."""
    from medloop.data.volume_dataset import read_volume_folder
    from medloop.data.volume_ingest import model_axes, volume_case_hash
    from medloop.data.volumes import resample
    from medloop.predict_volumes import model_input
    from medloop.trainers.evaluate_ci import case_segmentation
    from medloop.trainers.inference import predict_volume

    d = campaign.data
    cases, bad = read_volume_folder(path, d.classes, sequences=d.sequences)
    labeled = [c for c in cases if c.label is not None or c.mask is not None]
    if not labeled:
        raise _no_case(path, bool(cases), bad)
    out = CasePredictions(bad=bad)
    task = bar.add_task("predicting volumes", total=len(labeled)) if bar is not None else None
    for case in labeled:
        try:
            array, notes = model_input(case.image, campaign, im.channels)
        except FileError as err:
            out.bad.append(err.as_bad())
            continue
        x, y, z = case.image.shape3d
        pred = predict_volume(im, array, settings, (z, y, x))
        mask = None if case.mask is None else model_axes(case.mask.array)[0]
        sx, sy, sz = case.image.spacing
        seg = case_segmentation([pred.mask], [mask], spacings=[(sz, sy, sx)])
        out.add([case.image.path], [case.label], [mask is not None], [pred], seg, im.classes)
        if mask is not None and im.meta.get("regions"):
            out.region_maps.append((pred.mask, mask, (sz, sy, sx)))
        stored_mask = None
        if case.mask is not None:
            stored_mask = model_axes((case.mask if d.spacing is None else resample(case.mask, d.spacing, mask=True))
                                     .array)[0]
        out.hashes.append(volume_case_hash(array, stored_mask))
        out.warnings += notes
        if bar is not None:
            bar.advance(task, 1)
    if not out.rows:
        raise _no_case(path, False, out.bad)
    return out


# ---- the run ---------------------------------------------------------------------------------------------


def run_evaluate(
    campaign: Campaign,
    path: str | Path,
    fmt: str,
    *,
    model: str = "champion",
    out: Path = Path("evaluation"),
    passes: int = 1,
    n_boot: int = 1000,
    seed: int = 0,
    log_mlflow: bool = True,
    force: bool = False,
    progress: bool = False,
) -> EvaluateReport:
    """Evaluate ``model`` on the dataset at ``path`` (see the module docstring)."""
    from medloop.outdir import check_target, staged_output
    from medloop.predict import progress_bar, settings_for
    from medloop.tracking.resolve import resolve_model
    from medloop.trainers.evaluate_ci import concat_segmentation, evaluate_with_ci
    from medloop.trainers.inference import load_inference_model, pick_device

    if fmt not in FORMATS:
        raise DataError(f"--format: expected one of {', '.join(FORMATS)} (got {fmt!r})")
    check_target(Path(out), force)
    known = campaign_hashes(campaign)
    source = resolve_model(campaign, model)
    d = campaign.data
    im = load_inference_model(source.checkpoint, device=pick_device(campaign.compute.use_gpu), classes=d.classes,
                              image_size=d.image_size, channels=d.channels, no_lesion_class=d.no_lesion_class,
                              channels_last=campaign.compute.channels_last, volumes=True)
    if list(im.classes) != list(d.classes):
        raise DataError(f"the model's classes {im.classes} differ from the campaign's data.classes {list(d.classes)}")
    if im.volume_size is not None and fmt != "generic":
        raise DataError(f"--format {fmt}: {source.describe()} is a volume model; it evaluates a generic-layout "
                        "folder of volumes (--format generic: images/*.nii.gz or DICOM series, masks/, labels.csv)")
    settings = settings_for(campaign, passes)
    t0 = time.perf_counter()
    with progress_bar(progress) as bar:
        predicted = (_volume_cases if im.volume_size is not None else _image_cases)(
            campaign, im, path, fmt, settings, bar)
    seen = sum(h in known for h in predicted.hashes)
    if seen:
        predicted.warnings.insert(0, f"{seen} of {len(predicted.rows)} case(s) are already in campaign "
                                     f"{campaign.name!r}: these metrics are not on unseen data")
    warnings, bad, rows = predicted.warnings, predicted.bad, predicted.rows
    metrics = evaluate_with_ci(np.stack(predicted.probs), np.asarray(predicted.labels, np.int64),
                               concat_segmentation(predicted.segs), im.classes, n_boot=n_boot, seed=seed)
    if predicted.region_maps:  # data.regions: Dice / HD95 (mm, or px for images) per region over the cases holding it
        from medloop.trainers.evaluate import region_summary

        preds, truths, spacings = zip(*predicted.region_maps)
        metrics["regions"] = region_summary(list(preds), list(truths), im.meta["regions"],
                                            None if spacings[0] is None else np.asarray(spacings), n_boot=n_boot,
                                            seed=seed)
    result: dict[str, Any] = {
        "run": {"model": source.describe(), "spec": source.spec, "registered_model": source.registered_model,
                "version": source.version, "round": source.round_id, "checkpoint": source.checkpoint,
                "dataset": str(Path(path).resolve()), "format": fmt, "image_size": im.image_size,
                "volume_size": None if im.volume_size is None else list(im.volume_size),
                "passes": settings.passes, "method": settings.label(), "device": im.device.type},
        "metrics": metrics, "warnings": warnings, "bad": [{"file": b.path, "reason": b.problem} for b in bad],
    }
    report = EvaluateReport(out=Path(out), model=source.describe(), metrics=metrics, bad=bad, warnings=warnings)
    with staged_output(Path(out), force) as tmp:
        (tmp / "report.md").write_text(markdown(result))
        write_plots(result, tmp)
        write_cases(tmp / "cases.csv", rows)
        report.seconds = time.perf_counter() - t0
        result["run"]["seconds"] = round(report.seconds, 3)
        (tmp / "report.json").write_text(json.dumps(result, indent=1))
        if log_mlflow:
            report.mlflow_run_id = log_evaluation(campaign, result, tmp)
            result["run"]["mlflow_run_id"] = report.mlflow_run_id
            (tmp / "report.json").write_text(json.dumps(result, indent=1))
    return report
