"""``medloop predict --ray``: the same per-batch inference as :func:`medloop.predict.predict_files`, run
through Ray Data for large folders.

``ray.data.from_items`` of the input paths -> ``map_batches`` over :class:`Predictor` actors (a fixed pool
of ``compute.score_actors``, ``ray.data.ActorPoolStrategy``; one GPU each when ``compute.use_gpu`` and a
GPU is present, else one CPU each computing with the cluster's CPUs / actors torch threads), each loading the
checkpoint once. An actor reads its batch with predict's rules, runs
:func:`medloop.trainers.inference.predict_images` with the same :class:`Settings`, and returns per file the
``predictions.csv`` row, the mask (and overlay) as PNG bytes, the notes, or the reason it could not be
used. The driver writes everything into the staged output folder (so the workers need to reach the
inputs, not the output), in input order (``preserve_order``): the files are byte-identical to the
in-process path's.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from medloop.config import Campaign
from medloop.data.errors import BadFile
from medloop.data.inputs import InputFile
from medloop.trainers.inference import Settings


class ModelArgs(TypedDict):
    """What :func:`load_inference_model` takes from the campaign (the checkpoint's meta.json wins)."""

    classes: list[str]
    image_size: int
    channels: int
    no_lesion_class: str | None
    channels_last: bool


class Predictor:
    """Ray Data actor: loads the checkpoint once; reads, predicts and PNG-encodes batches of files."""

    def __init__(self, checkpoint: str, model_args: ModelArgs, settings: Settings,
                 window: tuple[float, float] | None, overlays: bool, use_gpu: bool, threads: int) -> None:
        import torch

        from medloop.trainers.inference import load_inference_model, pick_device

        device = pick_device(use_gpu)
        if device.type == "cpu":
            torch.set_num_threads(threads)  # Ray starts a one-CPU actor with one thread
        self.im = load_inference_model(checkpoint, device=device, **model_args)
        self.settings, self.window, self.overlays = settings, window, overlays

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from medloop.predict import _read_batch, csv_row, mask_picture, overlay, png_bytes
        from medloop.trainers.inference import predict_images

        files = [InputFile(Path(str(p)), str(n)) for p, n in zip(batch["path"], batch["name"])]
        good, bad = _read_batch(files, self.im.channels, self.window)
        preds = predict_images(self.im, [g.image for g in good], self.settings)
        out: dict[str, list[Any]] = {k: [] for k in ("path", "name", "reason", "row", "notes", "mask",
                                                                 "overlay")}
        for inp, pred in zip(good, preds):
            out["path"].append(str(inp.file.path))
            out["name"].append(inp.file.name)
            out["reason"].append("")
            out["row"].append(json.dumps(csv_row(inp, pred, self.im.classes)))
            out["notes"].append(json.dumps(inp.notes))
            out["mask"].append(png_bytes(mask_picture(pred.mask)))
            out["overlay"].append(png_bytes(overlay(inp.image, pred.mask, pred.uncertainty)) if self.overlays
                                  else b"")
        for b in bad:
            out["path"].append(b.path)
            out["name"].append("")
            out["reason"].append(b.problem)
            out["row"].append("")
            out["notes"].append("[]")
            out["mask"].append(b"")
            out["overlay"].append(b"")
        return {k: np.array(v, dtype=object) for k, v in out.items()}


def predict_files_ray(
    campaign: Campaign,
    checkpoint: str,
    model_args: ModelArgs,
    classes: Sequence[str],
    files: Sequence[InputFile],
    settings: Settings,
    out: Path,
    *,
    batch_size: int = 32,
    window: tuple[float, float] | None = None,
    overlays: bool = False,
    actors: int = 1,
    use_gpu: bool = False,
    progress: Any = None,
) -> tuple[int, list[BadFile], list[str]]:
    """Predict ``files`` into ``out`` through Ray Data; returns (predicted, unreadable, notes) as
    :func:`medloop.predict.predict_files` does. Starts the local Ray (127.0.0.1) unless one is running or
    ``compute.ray_address`` names a cluster; the caller shuts it down (:func:`shutdown_local_ray`)."""
    import ray.data

    from medloop.predict import csv_header
    from medloop.trainers.ray_local import ensure_ray, threads_per_actor

    ensure_ray(campaign)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = True  # rows in input order, as the in-process path writes them
    ds: ray.data.Dataset = ray.data.from_items([{"path": str(f.path), "name": f.name} for f in files])
    ds = ds.map_batches(
        Predictor,
        fn_constructor_kwargs={"checkpoint": checkpoint, "model_args": model_args, "settings": settings,
                               "window": window, "overlays": overlays, "use_gpu": use_gpu,
                               "threads": threads_per_actor(actors, campaign.compute.score_threads)},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0,
        num_cpus=0 if use_gpu else 1,
    )
    predicted, unreadable, notes = 0, [], []
    task = progress.add_task("predicting (Ray Data)", total=len(files)) if progress is not None else None
    with (out / "predictions.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(csv_header(classes))
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            for path, name, reason, row, note, mask, pic in zip(
                    batch["path"], batch["name"], batch["reason"], batch["row"], batch["notes"], batch["mask"],
                    batch["overlay"]):
                if reason:
                    unreadable.append(BadFile(str(path), str(reason)))
                    continue
                (out / "masks" / f"{name}.png").parent.mkdir(parents=True, exist_ok=True)
                (out / "masks" / f"{name}.png").write_bytes(bytes(mask))
                if overlays:
                    (out / "overlays" / f"{name}.png").parent.mkdir(parents=True, exist_ok=True)
                    (out / "overlays" / f"{name}.png").write_bytes(bytes(pic))
                writer.writerow(json.loads(row))
                notes += json.loads(note)
                predicted += 1
            if progress is not None:
                progress.advance(task, len(batch["path"]))
    return predicted, unreadable, notes
