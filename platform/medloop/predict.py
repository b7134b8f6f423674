"""``medloop predict``: run a campaign's model on image files and write masks, a CSV and overlays.

Output folder (written to a temporary sibling, then renamed):

* ``masks/<name>.png``: the lesion mask at the input's own size, 0 / 255 (a multi-region model: the region
  labels 1..R);
* ``predictions.csv``: one row per image (columns :data:`CSV_COLUMNS` with ``p_<class>`` for each class);
* ``unreadable.csv``: ``file, reason`` for every input that could not be used;
* ``overlays/<name>.png`` with ``--overlays``: the image with the mask outline | the pixel uncertainty;
* ``run.json``: the model (registered version, round, checkpoint), T, method, device, counts, speed.

Nothing is written to the campaign (ledger, store, MLflow).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from medloop.config import Campaign
from medloop.data.errors import BadFile, DataError, FileError
from medloop.data.inputs import InputFile, InputImage, list_inputs, read_input
from medloop.trainers.inference import MEASURES, ImagePrediction, InferenceModel, Settings

if TYPE_CHECKING:
    from medloop.predict_ray import ModelArgs

CSV_COLUMNS = ("file", "name", "mask", "width", "height", "class", "<p_class>", *MEASURES, "lesion_area_px",
               "lesion_fraction", "notes")


class NothingReadable(DataError):
    """No input could be read: nothing is written."""


@dataclass
class PredictReport:
    out: Path
    model: str
    device: str
    passes: int
    method: str
    predicted: int = 0
    unreadable: list[BadFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    engine: str = "in-process"
    unit: str = "image"  # what was predicted: image, or volume

    @property
    def images_per_s(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        how = self.method if self.engine == "in-process" else f"{self.method}; {self.engine}"
        lines = [f"predicted {self.predicted} {self.unit}(s) with {self.model} on {self.device} "
                 f"({how}) in {self.seconds:.1f} s ({self.images_per_s:.1f} {self.unit}s/s)",
                 f"wrote {self.out}"]
        if self.notes:
            lines.append(f"{len(self.notes)} note(s):")
            lines += [f"  {n}" for n in self.notes]
        if self.unreadable:
            lines.append(f"{len(self.unreadable)} input(s) could not be used (listed in unreadable.csv):")
            lines += [f"  {b}" for b in self.unreadable]
        return "\n".join(lines)


def settings_for(campaign: Campaign, passes: int | None) -> Settings:
    """T from ``--mc-passes`` or ``uncertainty.mc_passes``; the evidential method always makes one pass."""
    u, c = campaign.uncertainty, campaign.compute
    t = u.mc_passes if passes is None else int(passes)
    if t < 1:
        raise ValueError(f"--mc-passes: expected T >= 1 (got {t})")
    if u.method == "evidential":
        t = 1
    return Settings(passes=t, method=u.method, boundary_band=u.boundary_band, amp=c.amp, channels_last=c.channels_last)


def _window(campaign: Campaign) -> tuple[float, float] | None:
    w = campaign.data.intensity_window
    return None if w is None else (float(w[0]), float(w[1]))


# ---- pictures ----------------------------------------------------------------------------------------


def outline(mask: np.ndarray) -> np.ndarray:
    """The boundary pixels of a binary mask (the mask minus its 4-connected erosion)."""
    from medloop.trainers.metrics.segmentation import surface

    return surface(np.asarray(mask) > 0)


def overlay(image: np.ndarray, mask: np.ndarray, uncertainty: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """uint8 RGB (H, 2W, 3): the image with the mask outline in red | the pixel uncertainty (magma, 0 to
    ``vmax``, default its maximum) at the image's size."""
    import matplotlib

    grey = np.asarray(image)
    rgb = np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey[..., :3].copy()
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    edge = outline(mask)
    if edge.shape[0] > 64:  # a 2-pixel line on larger images
        edge = edge | np.roll(edge, 1, axis=0) | np.roll(edge, 1, axis=1)
    rgb[edge] = (255, 40, 40)
    u = np.nan_to_num(np.asarray(uncertainty, np.float64), nan=0.0)
    top = float(u.max()) if vmax is None else float(vmax)
    scaled = u / top if top > 0 else np.zeros_like(u)
    heat = (matplotlib.colormaps["magma"](np.clip(scaled, 0.0, 1.0))[..., :3] * 255 + 0.5).astype(np.uint8)
    return np.concatenate([rgb, heat], axis=1)


def mask_picture(mask: np.ndarray) -> np.ndarray:
    """What ``masks/<name>.png`` holds: 0 / 255 for a lesion mask, the labels 1..R of a multi-region model."""
    m = np.asarray(mask, np.uint8)
    return m if int(m.max(initial=0)) > 1 else m * np.uint8(255)


def png_bytes(array: np.ndarray) -> bytes:
    """The PNG file of an image (what :func:`_save_png` writes; the Ray path encodes in its workers)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array))


# ---- rows ----------------------------------------------------------------------------------------------


def _cell(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.6g}"


def csv_header(classes: Sequence[str]) -> list[str]:
    i = CSV_COLUMNS.index("<p_class>")
    return [*CSV_COLUMNS[:i], *(f"p_{c}" for c in classes), *CSV_COLUMNS[i + 1:]]


def csv_row(inp: InputImage, pred: ImagePrediction, classes: Sequence[str]) -> list[str]:
    h, w = inp.image.shape[:2]
    return [str(inp.file.path), inp.file.name, f"masks/{inp.file.name}.png", str(w), str(h), classes[pred.pred_class],
            *(_cell(float(p)) for p in pred.probs), *(_cell(pred.measures[m]) for m in MEASURES),
            str(pred.lesion_area), _cell(pred.lesion_fraction), " | ".join(inp.notes)]


# ---- the run --------------------------------------------------------------------------------------------


def _read_batch(files: Sequence[InputFile], channels: int, window: tuple[float, float] | None
                ) -> tuple[list[InputImage], list[BadFile]]:
    good, bad = [], []
    for f in files:
        try:
            good.append(read_input(f, channels, window))
        except FileError as err:
            bad.append(err.as_bad())
        except (OSError, ValueError, MemoryError) as err:  # anything else a decoder may raise
            bad.append(BadFile(str(f.path), f"unreadable ({type(err).__name__}: {err})"))
    return good, bad


def batches(files: Sequence[InputFile], size: int, channels: int, window: tuple[float, float] | None
            ) -> Iterator[tuple[list[InputImage], list[BadFile]]]:
    """Decoded batches; the next batch is read in a thread while the caller scores the current one."""
    chunks = [files[i:i + size] for i in range(0, len(files), size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medloop-read") as pool:
        pending = pool.submit(_read_batch, chunks[0], channels, window)
        for k in range(len(chunks)):
            result = pending.result()
            if k + 1 < len(chunks):
                pending = pool.submit(_read_batch, chunks[k + 1], channels, window)
            yield result


def progress_bar(enabled: bool):
    """A transient rich progress bar (None when disabled)."""
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=True)


def predict_files(
    im: InferenceModel,
    files: Sequence[InputFile],
    settings: Settings,
    out: Path,
    *,
    batch_size: int = 32,
    window: tuple[float, float] | None = None,
    overlays: bool = False,
    progress: Any = None,
) -> tuple[int, list[BadFile], list[str]]:
    """Predict ``files`` into the folder ``out`` (masks, overlays, predictions.csv); returns (predicted,
    unreadable, notes)."""
    from medloop.trainers.inference import predict_images

    predicted, unreadable, notes = 0, [], []
    task = progress.add_task("predicting", total=len(files)) if progress is not None else None
    with (out / "predictions.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(csv_header(im.classes))
        for good, bad in batches(files, batch_size, im.channels, window):
            unreadable += bad
            preds = predict_images(im, [g.image for g in good], settings)
            for inp, pred in zip(good, preds):
                _save_png(out / "masks" / f"{inp.file.name}.png", mask_picture(pred.mask))
                if overlays:
                    picture = overlay(inp.image, pred.mask, pred.uncertainty)
                    _save_png(out / "overlays" / f"{inp.file.name}.png", picture)
                writer.writerow(csv_row(inp, pred, im.classes))
                notes += inp.notes
            predicted += len(preds)
            if progress is not None:
                progress.advance(task, len(good) + len(bad))
    return predicted, unreadable, notes


def write_unreadable(path: Path, bad: Sequence[BadFile]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "reason"])
        writer.writerows([b.path, b.problem] for b in bad)


def run_predict(
    campaign: Campaign,
    inputs: Sequence[str | Path],
    *,
    model: str = "champion",
    out: Path = Path("predictions"),
    passes: int | None = None,
    overlays: bool = False,
    force: bool = False,
    progress: bool = False,
    ray: bool = False,
    actors: int | None = None,
) -> PredictReport:
    """List and read the inputs, resolve ``model``, predict, write ``out`` whole (see the module docstring).
    With ``ray``, the batches run through Ray Data over ``actors`` (default ``compute.score_actors``)
    actors (:mod:`medloop.predict_ray`; same outputs).

    Raises :class:`medloop.tracking.resolve.ModelNotFound` for a bad ``model``,
    :class:`medloop.outdir.OutputExists` for a non-empty ``out`` without ``force`` and
    :class:`NothingReadable` when no input can be read (nothing written)."""
    from medloop.outdir import check_target, staged_output
    from medloop.tracking.resolve import resolve_model
    from medloop.trainers.inference import load_inference_model, pick_device

    check_target(Path(out), force)
    settings = settings_for(campaign, passes)
    source = resolve_model(campaign, model)
    d, c = campaign.data, campaign.compute
    model_args: ModelArgs = {"classes": list(d.classes), "image_size": d.image_size, "channels": d.channels,
                  "no_lesion_class": d.no_lesion_class, "channels_last": c.channels_last}
    device = pick_device(c.use_gpu)
    # with Ray the actors hold the model; the driver's copy (CPU) only says what the checkpoint records
    im = load_inference_model(source.checkpoint, device=torch.device("cpu") if ray else device, volumes=True,
                              **model_args)
    if im.volume_size is not None:
        if ray:
            raise ValueError("--ray: a volume model predicts its volumes in-process, one at a time; "
                             "leave out --ray")
        return run_predict_volumes(campaign, inputs, im, source, settings, out=Path(out), overlays=overlays,
                                   force=force, progress=progress)
    files, bad = list_inputs(inputs)
    target = Path(out).resolve()
    files = [f for f in files if not f.path.resolve().is_relative_to(target)]  # an earlier --out inside an input
    if not files:
        listed = "".join(f"\n  {b}" for b in bad)
        raise NothingReadable(f"no image file in {', '.join(map(str, inputs))} (expected "
                              f"png, jpg, bmp, tif or dcm files){listed}")
    report = PredictReport(out=Path(out), model=source.describe(), device=device.type, passes=settings.passes,
                           method=settings.label())
    n_actors = c.score_actors if actors is None else int(actors)
    if ray:
        if n_actors < 1:
            raise ValueError(f"--ray-actors: expected at least 1 actor (got {n_actors})")
        report.engine = f"Ray Data, {n_actors} actor(s)"
    t0 = time.perf_counter()
    with staged_output(Path(out), force) as tmp, progress_bar(progress) as bar:
        if ray:
            from medloop.predict_ray import predict_files_ray

            n, unreadable, notes = predict_files_ray(
                campaign, str(source.checkpoint), model_args, im.classes, files, settings, tmp,
                batch_size=c.score_batch_size, window=_window(campaign), overlays=overlays, actors=n_actors,
                use_gpu=device.type == "cuda", progress=bar)
        else:
            n, unreadable, notes = predict_files(im, files, settings, tmp, batch_size=c.score_batch_size,
                                                 window=_window(campaign), overlays=overlays, progress=bar)
        finish(tmp, report, t0, (n, bad + unreadable, notes), len(files), run_info(report, source, im, settings))
    return report


def finish(tmp: Path, report: PredictReport, t0: float, done: tuple[int, list[BadFile], list[str]], total: int,
           info: dict[str, Any]) -> None:
    """Close a prediction run in its temporary folder: refuse a run that predicted nothing (nothing is written),
    else fill the report and write ``unreadable.csv`` and ``run.json`` (``info``, counts and speed updated)."""
    n, unreadable, notes = done
    if n == 0:
        listed = "".join(f"\n  {b}" for b in unreadable)
        raise NothingReadable(f"none of the {total} {report.unit} file(s) could be read; nothing was written{listed}")
    report.seconds = time.perf_counter() - t0
    report.predicted, report.unreadable, report.notes = n, unreadable, notes
    write_unreadable(tmp / "unreadable.csv", unreadable)
    info.update(predicted=n, unreadable=len(unreadable), notes=len(notes), seconds=round(report.seconds, 3),
                images_per_s=round(report.images_per_s, 3))
    (tmp / "run.json").write_text(json.dumps(info, indent=1))


def run_predict_volumes(
    campaign: Campaign,
    inputs: Sequence[str | Path],
    im: InferenceModel,
    source: Any,
    settings: Settings,
    *,
    out: Path,
    overlays: bool,
    force: bool,
    progress: bool,
) -> PredictReport:
    """:func:`run_predict` for a volume model (:mod:`medloop.predict_volumes`): NIfTI files and DICOM series."""
    from medloop.outdir import staged_output
    from medloop.predict_volumes import list_volume_inputs, predict_volume_files

    cases, bad = list_volume_inputs(inputs, campaign.data.sequences)
    target = out.resolve()
    cases = [k for k in cases if not k.path.resolve().is_relative_to(target)]
    if not cases:
        listed = "".join(f"\n  {b}" for b in bad)
        raise NothingReadable(f"no volume in {', '.join(map(str, inputs))} (the model {source.describe()} takes "
                              f"volumes: .nii / .nii.gz files or DICOM series folders){listed}")
    report = PredictReport(out=out, model=source.describe(), device=im.device.type, passes=settings.passes,
                           method=settings.label(), unit="volume")
    t0 = time.perf_counter()
    with staged_output(out, force) as tmp, progress_bar(progress) as bar:
        n, unreadable, notes = predict_volume_files(im, campaign, cases, settings, tmp, overlays=overlays,
                                                    progress=bar)
        info = {**run_info(report, source, im, settings), "volume_size": list(im.volume_size or ())}
        finish(tmp, report, t0, (n, bad + unreadable, notes), len(cases), info)
    return report


def run_info(report: PredictReport, source: Any, im: InferenceModel, settings: Settings) -> dict[str, Any]:
    return {
        "model": {"spec": source.spec, "registered_model": source.registered_model, "version": source.version,
                  "round": source.round_id, "checkpoint": source.checkpoint},
        "classes": im.classes, "image_size": im.image_size, "channels": im.channels,
        "no_lesion_class": None if im.no_lesion is None else im.classes[im.no_lesion],
        "passes": settings.passes, "method": settings.label(), "device": report.device, "engine": report.engine,
        "predicted": report.predicted, "unreadable": len(report.unreadable), "notes": len(report.notes),
        "seconds": round(report.seconds, 3), "images_per_s": round(report.images_per_s, 3),
    }
