"""One round's training on Ray Train (DDP), with checkpoints, warm start, resume and early stopping.

``train_round(campaign, ledger, round_id=n)`` decodes the training and validation sets once
(:mod:`medloop.trainers.dataset`), puts them in the Ray object store and runs
``TorchTrainer(train_loop_per_worker, ScalingConfig(num_workers, use_gpu))``. Each epoch every
worker trains on its shard (``prepare_data_loader`` adds a ``DistributedSampler``), validates on
its shard of the val split, the predictions are gathered, and rank 0 reports the ``val_*``
metrics with a checkpoint. Checkpoints live in ``<storage>/round-<n>/`` (storage = the campaign's
``checkpoints`` folder, or any pyarrow filesystem URI); Ray keeps the best ones by
``val_score`` and always the latest. Running ``train_round`` again for the same round resumes
from the latest checkpoint (``resume=True``): a killed run continues where it stopped, a
finished one returns its result without training again.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from medloop.config import Campaign
from medloop.ledger.store import Ledger

from .checkpoints import build_model, load_state, read_meta, save_checkpoint, unwrap
from .dataset import JointDataset, SampleArrays, load_arrays
from .models.weights import load_weights
from .plain import (
    SCORE_METRIC,
    EarlyStop,
    LoopSettings,
    epoch_lr,
    make_loader,
    make_loss,
    make_optimizer,
    make_semi,
    maybe_compile,
    predict,
    prepare_for_device,
    set_lr,
    train_epoch,
    train_plain,
    validation_metrics,
)
from .ray_local import cpus_per_worker, ensure_ray
from .windowed import windowed


class TrainError(RuntimeError):
    """Training could not run or did not produce a checkpoint."""


@dataclass
class TrainResult:
    """What a round's training produced (see docs/contracts.md)."""

    checkpoint_path: str  # best epoch on validation
    best_metrics: dict[str, float]
    history: list[dict[str, float]]  # one dict per epoch, all epochs of the run (resumed ones included)
    global_step: int  # optimisation steps across rounds, after this run
    model_version: str
    latest_checkpoint_path: str | None = None
    epochs_done: int = 0
    stopped_early: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# ---- Ray ----------------------------------------------------------------------------------------------
# ensure_ray (ray_local): the campaign's cluster, else a local Ray on 127.0.0.1 that medloop shuts down


def storage_root(campaign: Campaign, storage_path: str | None = None) -> str:
    """Where round runs live: a URI/path given, else the campaign's checkpoints folder (absolute)."""
    if storage_path:
        return storage_path
    root = campaign.checkpoints.resolve()
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def _delete_run(storage: str, name: str) -> None:
    if "://" in storage and not storage.startswith("file://"):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(storage)
        try:
            fs.delete_dir(f"{path.rstrip('/')}/{name}")
        except (FileNotFoundError, OSError):
            pass
    else:
        shutil.rmtree(Path(storage.removeprefix("file://")) / name, ignore_errors=True)


# ---- the worker loop ------------------------------------------------------------------------------------


def _fingerprint(model: torch.nn.Module) -> float:
    """A number that changes with the weights (sum of |w| over all tensors), for warm-start checks."""
    state = unwrap(model).state_dict().values()
    return float(sum(v.detach().double().abs().sum() for v in state if v.is_floating_point()))


def scratch_weights(settings: LoopSettings) -> dict[str, torch.Tensor] | None:
    """The campaign's ``model.weights`` file as the state dict of the settings' model (checked by
    ``load_weights``: a file that does not fit names its keys and shapes), or None without one."""
    if not settings.init_weights:
        return None
    model = build_model(settings.model)
    load_weights(model, settings.init_weights)
    return model.state_dict()


def initial_state(config: dict[str, Any], checkpoint_dir: str | None) -> dict[str, Any]:
    """Where a worker starts: a resumed checkpoint (everything), a warm start (weights + global step),
    the campaign's weights file (``model.weights``), or scratch."""
    if checkpoint_dir is not None:
        state, meta, train_state = load_state(checkpoint_dir, with_train_state=True)
        return {"weights": state, "meta": meta, "train_state": train_state or {}, "source": "resume"}
    warm = config.get("warm_start")
    if warm:
        state, meta, _ = load_state(warm)
        return {"weights": state, "meta": meta, "train_state": {}, "source": "warm_start",
                "global_step": int(meta.get("global_step", 0))}
    settings: LoopSettings | None = config.get("settings")
    weights = scratch_weights(settings) if settings is not None else None
    return {"weights": weights, "meta": {}, "train_state": {}, "source": "scratch" if weights is None else
            "weights_file", "global_step": 0}


def _gather(pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return pred
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, pred)
    return {k: np.concatenate([p[k] for p in parts if len(p[k])] or [pred[k]]) for k in pred}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: DDP training with per-epoch validation, checkpoints and early stopping."""
    import ray
    import ray.train
    import ray.train.torch

    settings: LoopSettings = config["settings"]
    train_arrays, val_arrays, unlabeled_arrays = ray.get(config["data"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(int(config.get("threads", 1)))  # Ray's default for a worker is 1 thread
    torch.manual_seed(settings.seed)

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = initial_state(config, d)
    else:
        start = initial_state(config, None)
    ts = start["train_state"]
    model = build_model(settings.model)
    if start["weights"] is not None:
        model.load_state_dict(start["weights"])
    init_fp = ts.get("init_fingerprint", _fingerprint(model))
    global_step = int(ts.get("global_step", start.get("global_step", 0)))
    start_step = int(ts.get("start_global_step", global_step))
    epoch0 = int(ts.get("epoch", 0))
    history: list[dict[str, float]] = list(ts.get("history", []))
    stopper = EarlyStop(settings.patience, **ts.get("stopper", {}))
    stopped = bool(ts.get("stopped", False))

    model = prepare_for_device(model, settings, device)
    loss_fn = make_loss(model, settings, train_arrays.labels).to(device)
    if "loss" in ts:
        loss_fn.load_state_dict(ts["loss"])
    model = ray.train.torch.prepare_model(
        model,
        move_to_device=False,
        parallel_strategy_kwargs={"find_unused_parameters": settings.model.get("find_unused", False)},
    )
    optimizer = make_optimizer(model, loss_fn, settings)
    if "optimizer" in ts:
        optimizer.load_state_dict(ts["optimizer"])
    run_model = maybe_compile(model, settings)

    pin = device.type == "cuda"
    train_loader = ray.train.torch.prepare_data_loader(make_loader(train_arrays, settings, train=True, pin_memory=pin))
    val_shard = val_arrays.subset(np.arange(rank, len(val_arrays), world))
    val_loader = make_loader(val_shard, settings, train=False, pin_memory=pin)
    semi = make_semi(settings, unlabeled_arrays, model, rank=rank, pin_memory=pin, teacher_state=ts.get("teacher"),
                     labels=train_arrays.labels)
    if semi is not None and history:  # resumed: the gate as the last epoch's validation left it
        semi.update_gate(history[-1].get("val_dice"), history[-1].get("val_ece"))

    for epoch in range(epoch0, settings.epochs):
        if stopped:
            break
        if hasattr(train_loader, "dataset"):
            cast(JointDataset, train_loader.dataset).set_epoch(epoch)
        set_lr(optimizer, epoch_lr(settings, epoch))
        if hasattr(train_loader, "sampler") and hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        global_step, stats = train_epoch(
            run_model, train_loader, loss_fn, optimizer, device=device, global_step=global_step,
            amp=settings.amp, channels_last=settings.channels_last, semi=semi, epoch=epoch,
        )
        metrics: dict[str, float] = {}
        if len(val_arrays):
            pred = predict(windowed(run_model, settings.patch_size), val_loader, device=device,
                           cls_head=settings.cls_head, amp=settings.amp, channels_last=settings.channels_last,
                           no_lesion=settings.no_lesion_index)
            metrics = validation_metrics(_gather(pred), len(settings.classes), settings.regions)
        if semi is not None:
            semi.update_gate(metrics.get("val_dice"), metrics.get("val_ece"))
        images = float(stats.pop("images")) * world
        row = {"epoch": epoch + 1, "global_step": global_step, "lr": epoch_lr(settings, epoch), "images": images,
               **stats, **metrics}
        if SCORE_METRIC not in row:
            row[SCORE_METRIC] = -row.get("loss", 0.0)
        row = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()}
        history.append(row)
        stopper.update(row[SCORE_METRIC], epoch + 1)
        stopped = stopper.stop
        train_state = {
            "epoch": epoch + 1, "global_step": global_step, "start_global_step": start_step,
            "history": history, "stopper": {"best": stopper.best, "best_epoch": stopper.best_epoch,
                                            "bad_epochs": stopper.bad_epochs},
            "stopped": stopped, "optimizer": optimizer.state_dict(), "loss": loss_fn.state_dict(),
            "init_fingerprint": init_fp, "init_source": ts.get("init_source", start["source"]),
            "teacher": semi.teacher_state() if semi is not None else None,
        }
        report = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        report["stopped"] = int(stopped)
        if rank == 0:
            meta = {
                **settings.meta(), "global_step": global_step, "epoch": epoch + 1, "metrics": report,
                "history": history, "round_id": config["round_id"], "model_version": config["model_version"],
                "warm_start": config.get("warm_start"), "start_global_step": start_step,
                "init_fingerprint": init_fp, "init_source": train_state["init_source"],
            }
            with tempfile.TemporaryDirectory() as tmp:
                save_checkpoint(tmp, model, meta, train_state)
                ray.train.report(report, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(report, checkpoint=None)


# ---- the driver ------------------------------------------------------------------------------------------


def load_training_data(campaign: Campaign, ledger: Ledger) -> tuple[SampleArrays, SampleArrays, SampleArrays | None]:
    """Training and validation sets, and the unlabeled pool when semi-supervised training is on."""
    train, val = load_arrays(campaign, ledger, "train"), load_arrays(campaign, ledger, "val")
    if len(train) == 0:
        raise TrainError("no training samples: the ledger has no active human or pseudo labels outside val/test")
    unlabeled = load_arrays(campaign, ledger, "unlabeled") if campaign.training.semi != "none" else None
    return train, val, unlabeled


def train_round(
    campaign: Campaign,
    ledger: Ledger,
    *,
    round_id: int,
    warm_start: str | None = None,
    resume: bool = True,
    storage_path: str | None = None,
    num_workers: int | None = None,
    **settings_override: Any,
) -> TrainResult:
    """Train the round's model; returns the best checkpoint on validation and the per-epoch history.

    ``warm_start``: checkpoint of the previous round (weights and global step carried over).
    ``resume``: continue the round's run from its latest checkpoint if one exists (else start clean).
    ``num_workers``: override ``compute.num_workers``; 0 runs the plain single-process loop.
    ``settings_override``: fields of :class:`LoopSettings` (e.g. ``epochs=2``).
    """
    settings = LoopSettings.from_ledger(campaign, ledger, **settings_override)
    if settings.init_weights and not warm_start and not Path(settings.init_weights).is_file():
        raise TrainError(f"model.weights {settings.init_weights}: no such file (a relative path starts at the "
                         "campaign file's folder)")
    workers = campaign.compute.num_workers if num_workers is None else num_workers
    model_version = f"round-{round_id}"
    train, val, unlabeled = load_training_data(campaign, ledger)
    storage = storage_root(campaign, storage_path)
    name = model_version
    if not resume:
        _delete_run(storage, name)
    if workers == 0:
        return _train_round_plain(campaign, settings, train, val, storage, name, round_id, warm_start, unlabeled)

    import ray
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ensure_ray(campaign)
    use_gpu = campaign.compute.use_gpu
    cpus = cpus_per_worker(campaign.compute.cpus_per_worker, ray.cluster_resources().get("CPU", 1), workers)
    data_ref = ray.put((train, val, unlabeled))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "settings": settings, "data": data_ref, "warm_start": warm_start,
            "round_id": round_id, "model_version": model_version, "threads": cpus,
        },
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute=SCORE_METRIC, checkpoint_score_order="max"
            ),
            failure_config=FailureConfig(max_failures=campaign.compute.model_dump().get("max_failures", 0)),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as err:  # ray.train.TrainingFailedError and friends
        raise TrainError(f"round {round_id}: training failed: {err}") from err
    return _result_from_ray(result, model_version, keep=settings.keep)


def _result_from_ray(result: Any, model_version: str, keep: str = "best") -> TrainResult:
    """The round's checkpoint: the latest one (``keep = "last"``) or the best by ``val_score``."""
    if result.checkpoint is None:
        raise TrainError(f"{model_version}: training reported no checkpoint")
    scored = [(c, m) for c, m in (result.best_checkpoints or []) if m.get(SCORE_METRIC) is not None]
    if keep == "last":
        best_ckpt = result.checkpoint
        best_metrics = dict(read_meta(result.checkpoint.path).get("metrics") or result.metrics or {})
    elif scored:
        best_ckpt, best_metrics = max(scored, key=lambda cm: _finite(cm[1][SCORE_METRIC]))
    else:
        best_ckpt, best_metrics = result.checkpoint, dict(result.metrics or {})
    latest_meta = read_meta(result.checkpoint.path)
    history = latest_meta.get("history", [])
    return TrainResult(
        checkpoint_path=best_ckpt.path,
        best_metrics=dict(best_metrics),
        history=history,
        global_step=int(latest_meta.get("global_step", 0)),
        model_version=model_version,
        latest_checkpoint_path=result.checkpoint.path,
        epochs_done=int(latest_meta.get("epoch", len(history))),
        stopped_early=bool(latest_meta.get("metrics", {}).get("stopped", 0)),
        extra={"start_global_step": latest_meta.get("start_global_step"),
               "init_fingerprint": latest_meta.get("init_fingerprint"),
               "init_source": latest_meta.get("init_source")},
    )


def _finite(x: float) -> float:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else -math.inf


def _train_round_plain(
    campaign: Campaign, settings: LoopSettings, train: SampleArrays, val: SampleArrays,
    storage: str, name: str, round_id: int, warm_start: str | None, unlabeled: SampleArrays | None = None,
) -> TrainResult:
    """num_workers = 0: the plain loop in this process; the best epoch is saved as ``<run>/best``."""
    if "://" in storage and not storage.startswith("file://"):
        raise TrainError("num_workers = 0 writes checkpoints to a local folder only")
    folder = Path(storage.removeprefix("file://")) / name / "best"
    start = initial_state({"warm_start": warm_start, "settings": settings}, None)
    device = "cuda" if campaign.compute.use_gpu and torch.cuda.is_available() else "cpu"
    res = train_plain(settings, train, val, device=device, init_state=start["weights"],
                      global_step=start.get("global_step", 0), unlabeled=unlabeled)
    model = build_model(settings.model)
    model.load_state_dict(res.best_state if res.best_state is not None else res.model.state_dict())
    meta = {**settings.meta(), "global_step": res.global_step, "epoch": len(res.history),
            "metrics": res.best_metrics, "history": res.history, "round_id": round_id, "model_version": name,
            "warm_start": warm_start}
    save_checkpoint(folder, model, meta)
    return TrainResult(str(folder), res.best_metrics, res.history, res.global_step, name, str(folder),
                       len(res.history), len(res.history) < settings.epochs)
