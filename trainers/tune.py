"""Hyper-parameter search with Ray Tune + ASHA on a campaign's labeled data.

Searched: learning rate, dropout, model width and the composite loss's task weights. Each
trial runs the plain loop (:func:`medloop.trainers.plain.train_plain`) in one Ray actor and
reports ``val_score`` (mean of validation Dice and accuracy) every epoch; ASHA stops weak
trials early. ``write_back`` stores the best values in the campaign TOML file.

Keys of the returned configuration are dotted campaign keys: ``compute.lr``, ``model.dropout``,
``model.width``, ``model.options.loss_options.<weight>``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from medloop.config import Campaign, ConfigError, load_campaign
from medloop.ledger.store import Ledger

from .dataset import SampleArrays
from .plain import SCORE_METRIC, LoopSettings, train_plain

#: the task-weight options of each composite loss (searched on a log scale around their defaults)
LOSS_WEIGHTS = {"mtunet": ("seg_weight", "cls_weight"), "tim_upa": ("seg_weight", "cls_weight"),
                "jrl": ("lambda1", "lambda2")}


def loss_name(campaign: Campaign) -> str:
    from medloop.trainers.models import model_class

    return campaign.model.options.get("loss") or model_class(campaign.model.name).default_loss


def default_space(campaign: Campaign) -> dict[str, Any]:
    """The search space (Ray Tune sampling objects) for ``campaign``."""
    from ray import tune

    w = campaign.model.width
    space: dict[str, Any] = {
        "compute.lr": tune.loguniform(1e-4, 1e-2),
        "model.dropout": tune.uniform(0.0, 0.5),
        "model.width": tune.choice(sorted({max(4, w // 2), w, w * 2})),
    }
    for key in LOSS_WEIGHTS.get(loss_name(campaign), ()):
        space[f"model.options.loss_options.{key}"] = tune.loguniform(0.2, 5.0)
    return space


def apply_config(settings: LoopSettings, config: dict[str, Any]) -> LoopSettings:
    """A copy of ``settings`` with the dotted keys of a trial's ``config`` applied."""
    from dataclasses import replace

    model = {"name": settings.model["name"], "options": dict(settings.model["options"])}
    loss_options = dict(settings.loss_options)
    changes: dict[str, Any] = {}
    for key, value in config.items():
        if key == "compute.lr":
            changes["lr"] = float(value)
        elif key == "model.dropout":
            model["options"]["dropout"] = float(value)
        elif key == "model.width":
            model["options"]["width"] = int(value)
        elif key.startswith("model.options.loss_options."):
            loss_options[key.rsplit(".", 1)[1]] = float(value)
        else:
            raise ValueError(f"tune: unknown search key {key!r}")
    return replace(settings, model=model, loss_options=loss_options, **changes)


def _trial(config: dict[str, Any], *, settings: LoopSettings, data: tuple[SampleArrays, SampleArrays]) -> None:
    import torch
    from ray import tune

    torch.set_num_threads(1)
    train, val = data
    trial_settings = apply_config(settings, config)
    train_plain(trial_settings, train, val, on_epoch=lambda epoch, row: tune.report(
        {k: float(v) for k, v in row.items() if isinstance(v, (int, float))}))


def tune_campaign(
    campaign: Campaign,
    ledger: Ledger,
    *,
    num_samples: int = 8,
    max_epochs: int | None = None,
    space: dict[str, Any] | None = None,
    storage_path: str | None = None,
    cpus_per_trial: float = 1.0,
) -> dict[str, Any]:
    """Search with ASHA; returns ``{"config": best dotted keys, "metrics": its last epoch, "trials": n}``."""
    from ray import tune
    from ray.tune import RunConfig, TuneConfig, Tuner
    from ray.tune.schedulers import ASHAScheduler

    from .train import ensure_ray, load_training_data

    max_epochs = max_epochs or campaign.compute.epochs
    settings = LoopSettings.from_ledger(campaign, ledger, epochs=max_epochs, patience=max_epochs)
    train, val, _unlabeled = load_training_data(campaign, ledger)  # trials tune the supervised part
    data = (train, val)
    if len(data[1]) == 0:
        raise ValueError("tune: the campaign has no validation samples (split val with human labels)")
    ensure_ray(campaign)
    trainable = tune.with_resources(tune.with_parameters(_trial, settings=settings, data=data),
                                    {"cpu": cpus_per_trial, "gpu": 1 if campaign.compute.use_gpu else 0})
    storage = storage_path or str((campaign.folder / "tune").resolve())
    tuner = Tuner(
        trainable,
        param_space=space if space is not None else default_space(campaign),
        tune_config=TuneConfig(
            metric=SCORE_METRIC, mode="max", num_samples=num_samples,
            scheduler=ASHAScheduler(max_t=max_epochs, grace_period=1, reduction_factor=2),
        ),
        run_config=RunConfig(name=f"tune-{campaign.name}", storage_path=storage, verbose=0),
    )
    results = tuner.fit()
    best = results.get_best_result(metric=SCORE_METRIC, mode="max", scope="all")
    if best is None or best.metrics is None:
        raise RuntimeError("tune: no trial reported a result")
    errors = [results[i].error for i in range(len(results)) if results[i].error is not None]
    return {"config": dict(best.config or {}), "metrics": dict(best.metrics), "trials": len(results),
            "errors": len(errors)}


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"write_back: {key!r} crosses a non-table value")
    node[parts[-1]] = value


def write_back(campaign_file: str | Path, best: dict[str, Any]) -> Path:
    """Write the best configuration (dotted keys, or ``tune_campaign``'s result) into the campaign TOML.

    The file is validated as a campaign before it replaces the old one (comments are not kept).
    """
    import tomli_w

    path = Path(campaign_file)
    config = best.get("config", best)
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    for key, value in config.items():
        if key == "model.width":
            value = int(value)
        elif isinstance(value, float):
            value = float(f"{value:.6g}")
        _set_dotted(data, key, value)
    text = tomli_w.dumps(data)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    try:
        load_campaign(tmp)
    except ConfigError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path
