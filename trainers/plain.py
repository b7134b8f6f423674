"""The training loop's pieces, and a plain single-process loop built from them.

The Ray Train loop (:mod:`medloop.trainers.train`) and Ray Tune trials reuse :func:`train_epoch`,
:func:`predict` and :func:`validation_metrics`; :func:`train_plain` runs them in one process
(``compute.num_workers = 0``, the benchmark baseline, tests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from medloop.config import Campaign

from .checkpoints import build_model, model_spec, unwrap
from .dataset import IGNORE, Augment, JointDataset, SampleArrays
from .models import resolve_heads
from .semi import SemiOptions, SemiTrainer, split_output, unlabeled_batch_size, unlabeled_loss
from .windowed import windowed

#: the validation metric that picks the best epoch and drives early stopping / ASHA
SCORE_METRIC = "val_score"


@dataclass
class LoopSettings:
    """Everything a training loop needs besides the data (plain, picklable)."""

    model: dict[str, Any]  # {"name", "options"} for the models registry
    classes: list[str]
    cls_head: str = "softmax"
    seg_head: str = "softmax"
    loss: str | None = None  # None: the model's default_loss
    loss_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 8
    batch_size: int = 16
    min_epoch_samples: int = 0
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int | None = None
    keep: str = "last"
    lr_schedule: str = "cosine"
    warmup_epochs: int = 1
    augment: list[str] = field(default_factory=list)
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    image_size: int = 64
    channels: int = 1
    volume_size: list[int] | None = None  # volumes: [slices, rows, columns] the 3D model sees (None: 2D images)
    patch_size: list[int] | None = None  # volumes: trained on patches of this size (data.patch_size), else the grid
    semi: SemiOptions = field(default_factory=SemiOptions)
    no_lesion_class: str | None = None
    init_weights: str | None = None  # model.weights, resolved: where a round from scratch starts
    regions: dict[str, list[int]] = field(default_factory=dict)  # volumes: data.regions + groups (metrics)

    @classmethod
    def from_campaign(cls, campaign: Campaign, *, volume_channels: int | None = None, **override: Any) -> LoopSettings:
        """The campaign's settings; ``volume_channels`` (the sequences of a volume campaign, see
        :func:`medloop.trainers.dataset.volume_channels`) trains the model's 3D version on ``data.volume_size``."""
        c, m, t, sel = campaign.compute, campaign.model, campaign.training, campaign.selection
        opts = dict(m.options)
        loss = opts.pop("loss", None)
        loss_options = dict(opts.pop("loss_options", {}) or {})
        spec = model_spec(campaign)
        spec["options"] = {k: v for k, v in spec["options"].items() if k not in ("loss", "loss_options")}
        volume_size = patch_size = None
        if volume_channels is not None:
            volume_size = list(campaign.data.volume_size)
            patch_size = None if campaign.data.patch_size is None else list(campaign.data.patch_size)
            spec = volume_spec(spec, volume_channels, patch_size or volume_size,
                               "patch_size" if patch_size else "volume_size")
        if campaign.data.regions is not None:
            spec["options"]["seg_classes"] = campaign.data.seg_classes
        cls_head, seg_head = resolve_heads(spec["name"], m.cls_head, m.seg_head)  # None: the model's own heads
        base = cls(
            model=spec, classes=list(campaign.data.classes), cls_head=cls_head, seg_head=seg_head,
            loss=loss, loss_options=loss_options, epochs=c.epochs, batch_size=c.batch_size,
            min_epoch_samples=c.min_epoch_samples, lr=c.lr,
            weight_decay=c.weight_decay, patience=c.patience, keep=c.keep,
            lr_schedule=c.lr_schedule, warmup_epochs=c.warmup_epochs,
            augment=c.augmentations(volume=volume_channels is not None), amp=c.amp,
            channels_last=c.channels_last, compile=c.compile, seed=c.seed,
            image_size=campaign.data.image_size,
            channels=campaign.data.channels if volume_channels is None else volume_channels,
            volume_size=volume_size, patch_size=patch_size, no_lesion_class=campaign.data.no_lesion_class,
            init_weights=str(campaign.resolve_path(m.weights)) if m.weights else None,
            regions=campaign.data.region_sets(),
            semi=SemiOptions(
                method=t.semi, weight=t.semi_weight, ramp_up=t.ramp_up, unlabeled_ratio=t.unlabeled_ratio,
                ema_decay=t.ema_decay, teacher_passes=t.teacher_passes, strong_augment=tuple(t.strong_augment),
                tau_c=sel.tau_c, tau_u=sel.tau_u, pixel_tau_u=sel.pixel_tau_u,
                distribution_alignment=t.distribution_alignment,
                min_val_dice=sel.min_val_dice if t.semi_seg_gate else 0.0,
                max_val_ece=sel.max_ece if t.semi_cls_gate else None,
            ),
        )
        return replace(base, **override)

    @classmethod
    def from_ledger(cls, campaign: Campaign, ledger: Any, **override: Any) -> LoopSettings:
        """:meth:`from_campaign` for the data the campaign's ledger holds: a volume campaign trains the 3D
        model (training rounds and tuning both come here)."""
        from .dataset import volume_channels

        return cls.from_campaign(campaign, volume_channels=volume_channels(ledger), **override)

    def meta(self) -> dict[str, Any]:
        """The checkpoint meta fields that describe the model."""
        return {
            "model": self.model, "classes": self.classes, "cls_head": self.cls_head, "seg_head": self.seg_head,
            "image_size": self.image_size, "channels": self.channels, "no_lesion_class": self.no_lesion_class,
            **({"volume_size": self.volume_size} if self.volume_size is not None else {}),
            **({"patch_size": self.patch_size} if self.patch_size is not None else {}),
            **({"regions": self.regions} if self.regions else {}),
        }

    @property
    def no_lesion_index(self) -> int | None:
        return no_lesion_index(self.classes, self.no_lesion_class)


def volume_spec(spec: dict[str, Any], channels: int, volume_size: list[int], key: str = "volume_size"
                ) -> dict[str, Any]:
    """A model spec for volumes: the 3D version of the model (:func:`medloop.trainers.models.volume_model`)
    with one input channel per sequence, made for the grid ``volume_size`` (the patch grid with
    ``data.patch_size``); a ``ValueError`` naming ``data.<key>`` when the model's down-sampling does not divide it."""
    from medloop.trainers.models import model_defaults, volume_model

    name = volume_model(spec["name"])
    defaults = model_defaults(name)
    options = {**spec["options"], "in_channels": channels}
    if "image_size" in defaults:  # mttu3d: its learned position embedding is made for this grid
        options.setdefault("image_size", list(volume_size))
    depth = int(options.get("depth", defaults["depth"]))
    step = 2**depth
    if any(int(s) % step for s in volume_size):
        fits = [max(step, round(int(s) / step) * step) for s in volume_size]
        raise ValueError(f"data.{key} = {volume_size} cannot be divided by 2**{depth} = {step} on every axis, "
                         f'the down-sampling of model "{name}"; use data.{key} = {fits} or a smaller model.depth')
    return {"name": name, "options": options}


def no_lesion_index(classes: list[str], no_lesion_class: str | None) -> int | None:
    """Index of the no-lesion class in ``classes`` (None when there is none)."""
    return classes.index(no_lesion_class) if no_lesion_class in classes else None


def make_loss(model: nn.Module, settings: LoopSettings, train_labels: np.ndarray | None = None) -> nn.Module:
    """The model's joint loss. ``loss_options.class_weights = "auto"`` (the default of losses with
    ``frequency_weighted_ce``, i.e. ``mttu``) becomes the class weights of
    Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 14, of ``train_labels``."""
    from medloop.trainers.losses import LOSSES, build_loss
    from medloop.trainers.losses.classification import frequency_class_weights

    name = settings.loss or str(getattr(unwrap(model), "default_loss", "mtunet"))
    options = dict(settings.loss_options)
    default = "auto" if getattr(LOSSES.get(name), "frequency_weighted_ce", False) else None
    choice = options.get("class_weights", default)
    if choice == "none" or (choice == "auto" and train_labels is None):
        options.pop("class_weights", None)
    elif choice == "auto" and train_labels is not None:  # (None was handled above)
        options["class_weights"] = frequency_class_weights(train_labels, len(settings.classes)).tolist()
    return build_loss(name, **_loss_head_options(name, settings, options))


def _loss_head_options(name: str, settings: LoopSettings, options: dict[str, Any]) -> dict[str, Any]:
    """Pass the heads to losses that take them (evidential heads change the loss)."""
    import inspect

    from medloop.trainers.losses import LOSSES

    try:
        params = inspect.signature(LOSSES.get(name)).parameters
    except (TypeError, ValueError):
        return options
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("cls_head", settings.cls_head), ("seg_head", settings.seg_head)):
        if (key in params or takes_any) and key not in options:
            options[key] = value
    return options


def make_optimizer(model: nn.Module, loss_fn: nn.Module, settings: LoopSettings) -> torch.optim.Optimizer:
    params = list(model.parameters()) + [p for p in loss_fn.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)


def epoch_lr(settings: LoopSettings, epoch: int) -> float:
    """Learning rate of epoch ``epoch`` (0-based) of a round: linear warm-up over ``warmup_epochs``,
    then cosine decay to 2 % of ``lr`` at the last epoch (Loshchilov & Hutter, SGDR, ICLR 2017);
    ``constant``: ``lr``. A function of the epoch alone, so a resumed run needs no scheduler state."""
    lr = settings.lr
    if settings.lr_schedule == "constant":
        return lr
    warm = settings.warmup_epochs
    if epoch < warm:
        return lr * (epoch + 1) / (warm + 1)
    span = max(1, settings.epochs - warm - 1)
    t = min(1.0, (epoch - warm) / span)
    floor = 0.02 * lr
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def make_loader(
    arrays: SampleArrays, settings: LoopSettings, *, train: bool, pin_memory: bool = False, workers: int = 0
) -> DataLoader:
    """Training: shuffled, augmented, and at least ``settings.min_epoch_samples`` items an epoch (the
    labeled set repeated); evaluation: each sample once, in order."""
    augment = Augment.from_names(settings.augment) if train else None
    length = max(len(arrays), settings.min_epoch_samples) if train and len(arrays) else None
    dataset = JointDataset(arrays, augment, seed=settings.seed, length=length,
                           patch=settings.patch_size if train else None)
    generator = torch.Generator().manual_seed(settings.seed)
    return DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=train, drop_last=False, pin_memory=pin_memory,
        num_workers=workers, generator=generator if train else None,
    )


def make_unlabeled_loader(arrays: SampleArrays, settings: LoopSettings, *, rank: int = 0,
                          pin_memory: bool = False) -> DataLoader:
    """Weakly augmented unlabeled images, ``unlabeled_ratio`` times the labeled batch size, shuffled
    with a stream of its own per worker (``rank``)."""
    dataset = JointDataset(arrays, Augment.from_names(settings.augment), seed=settings.seed + 1000 * (rank + 1),
                           patch=settings.patch_size)
    generator = torch.Generator().manual_seed(settings.seed * 1000 + rank + 17)
    return DataLoader(
        dataset, batch_size=unlabeled_batch_size(settings.batch_size, settings.semi.unlabeled_ratio), shuffle=True,
        drop_last=False, pin_memory=pin_memory, generator=generator,
    )


def class_ratio(labels: np.ndarray, num_classes: int) -> tuple[float, ...]:
    """The share of each class among the labels (``-1``, no class, left out); uniform without any label."""
    y = np.asarray(labels, np.int64)
    counts = np.bincount(y[y >= 0], minlength=num_classes).astype(np.float64)
    return tuple((counts / counts.sum()).tolist()) if counts.sum() else (1.0 / num_classes,) * num_classes


def make_semi(settings: LoopSettings, unlabeled: SampleArrays | None, student: nn.Module, *, rank: int = 0,
              pin_memory: bool = False, teacher_state: dict[str, torch.Tensor] | None = None,
              labels: np.ndarray | None = None) -> SemiTrainer | None:
    """The round's semi-supervised part, or None (``semi = "none"`` or an empty pool). ``labels``: the labeled
    set's classes, whose ratio distribution alignment aims at."""
    if settings.semi.method == "none" or unlabeled is None or len(unlabeled) == 0:
        return None
    loader = make_unlabeled_loader(unlabeled, settings, rank=rank, pin_memory=pin_memory)
    options = settings.semi
    if options.distribution_alignment and labels is not None:
        options = replace(options, class_prior=class_ratio(labels, len(settings.classes)))
    return SemiTrainer(options, loader, unwrap(student), cls_head=settings.cls_head, seg_head=settings.seg_head,
                       epochs=settings.epochs, seed=settings.seed + rank, teacher_state=teacher_state)


def memory_format(ndim: int) -> torch.memory_format:
    """channels_last for image batches (4D), channels_last_3d for volume batches (5D)."""
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def _autocast(device: torch.device, amp: bool):
    enabled = amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _to(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool) -> dict[str, torch.Tensor]:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last and device.type == "cuda":
        out["image"] = out["image"].contiguous(memory_format=memory_format(out["image"].ndim))
    return out


def _sync_loss_grads(loss_fn: nn.Module) -> None:
    """All-reduce gradients of learnable loss parameters (e.g. Kendall weights) outside DDP."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    for p in loss_fn.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def train_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device,
    global_step: int,
    amp: bool = True,
    channels_last: bool = True,
    semi: SemiTrainer | None = None,
    epoch: int = 0,
) -> tuple[int, dict[str, float]]:
    """One pass over ``loader``; returns (global step after it, mean loss parts + images).

    With ``semi``, a step also draws an unlabeled batch while a gate is open: the teacher's UPS targets on
    its weak view supervise the student on its strong view, in the same forward pass as the labeled batch
    (one batch, so BatchNorm and DDP see one graph), weighted by the ramped unlabeled weight. A step whose
    unlabeled batch keeps no target (every gate closed, or no case or pixel confident and certain) trains on
    the labeled batch alone: the strong views would only shift BatchNorm's statistics."""
    model.train()
    loss_fn.train()
    t0 = time.perf_counter()
    sums: dict[str, float] = {}
    n_batches, n_images = 0, 0
    if semi is not None:
        semi.begin_epoch(epoch, len(loader))
    for batch in loader:
        batch = _to(batch, device, channels_last)
        images = batch["image"]
        targets = None
        if semi is not None and (semi.pixels_on or semi.classes_on):
            weak = semi.next_images(device)
            with _autocast(device, amp):
                targets = semi.targets(weak)
            if targets.kept_cases > 0 or targets.kept_pixels > 0:
                images = torch.cat([images, semi.strong_view(weak)])
                if channels_last and device.type == "cuda":
                    images = images.contiguous(memory_format=memory_format(images.ndim))
            else:
                targets = None  # nothing to learn from this batch: the step is the labeled batch's alone
        with _autocast(device, amp):
            output = model(images)
        output = _float_output(output)
        u_total, kept_cases, kept_pixels = torch.zeros(()), 0.0, 0.0
        if targets is None:
            total, parts = loss_fn(output, batch, step=global_step)
        else:
            assert semi is not None
            out_l, out_u = split_output(output, int(batch["image"].shape[0]))
            total, parts = loss_fn(out_l, batch, step=global_step)
            u_total = unlabeled_loss(out_u, targets, cls_head=semi.cls_head, seg_head=semi.seg_head)
            kept_cases, kept_pixels = targets.kept_cases, targets.kept_pixels
            total = total + semi.weight() * u_total
        if semi is not None:
            w = semi.weight()
            parts = {**parts, "unlabeled": u_total.detach(), "unlabeled_weight": torch.tensor(w),
                     "kept_cases": torch.tensor(kept_cases), "kept_pixels": torch.tensor(kept_pixels),
                     "pixel_gate": torch.tensor(float(semi.pixels_on)),
                     "class_gate": torch.tensor(float(semi.classes_on))}
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        _sync_loss_grads(loss_fn)
        optimizer.step()
        if semi is not None:
            semi.after_step()
        global_step += 1
        n_batches += 1
        n_images += int(batch["image"].shape[0])
        sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
        for k, v in parts.items():
            sums[f"loss_{k}"] = sums.get(f"loss_{k}", 0.0) + float(torch.as_tensor(v).detach().float().mean())
    stats = {k: v / max(n_batches, 1) for k, v in sums.items()}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats["images"] = float(n_images)
    stats["train_seconds"] = time.perf_counter() - t0  # data loading included
    return global_step, stats


def _float_output(output: Any) -> Any:
    """Losses run in float32 (autocast leaves bf16 logits)."""
    if output.cls_logits.dtype != torch.float32:
        output.cls_logits = output.cls_logits.float()
        output.seg_logits = output.seg_logits.float()
    return output


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    cls_head: str = "softmax",
    amp: bool = True,
    channels_last: bool = True,
    no_lesion: int | None = None,
) -> dict[str, np.ndarray]:
    """Deterministic predictions on ``loader``: class probs, predicted masks, and the targets.

    ``no_lesion``: index of the no-lesion class; a case predicted as that class gets an empty mask
    (:func:`medloop.trainers.uncertainty.measures.class_consistent_mask`)."""
    from medloop.trainers.heads import probs_from_logits
    from medloop.trainers.uncertainty.measures import class_consistent_mask

    model.eval()
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("index", "probs", "label", "pred_mask", "mask")}
    for batch in loader:
        batch = _to(batch, device, channels_last)
        with _autocast(device, amp):
            o = model(batch["image"])
        probs = probs_from_logits(o.cls_logits.float(), cls_head)
        masks = class_consistent_mask(o.seg_logits.float().argmax(1), probs.argmax(1), no_lesion)
        out["probs"].append(probs.cpu().numpy())
        out["pred_mask"].append(masks.to(torch.uint8).cpu().numpy())
        out["label"].append(batch["label"].cpu().numpy())
        out["mask"].append(batch["mask"].to(torch.uint8).cpu().numpy())
        out["index"].append(batch["index"].cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}


def validation_metrics(pred: dict[str, np.ndarray], num_classes: int,
                       regions: dict[str, list[int]] | None = None) -> dict[str, float]:
    """``val_*`` metrics (contract names) from :func:`predict` output, plus :data:`SCORE_METRIC`. With
    ``regions`` (a multi-region campaign) also ``val_dice_<region>``: the mean Dice of each region (or
    composite) over the cases that hold it; ``val_dice`` stays the Dice of the whole lesion (any region)."""
    from medloop.trainers import metrics as M

    out: dict[str, float] = {}
    labels, probs = pred["label"], pred["probs"]
    has_cls = labels >= 0
    if has_cls.any():
        y, p = labels[has_cls], probs[has_cls]
        yhat = p.argmax(1)
        out["val_accuracy"] = M.accuracy(y, yhat)
        out["val_f1"] = M.f1_score(y, yhat, num_classes, "macro")
        out["val_auc"] = M.auc_ovr(y, p)
        out["val_ece"] = M.ece(p, y)
        out["val_adaptive_ece"] = M.adaptive_ece(p, y)
        out["val_brier"] = M.brier_score(p, y)
        out["val_nll"] = M.nll(p, y)
    if len(pred["mask"]):
        # one definition everywhere: mean per-case Dice over the cases with a lesion (lesion_dice)
        if M.lesion_cases(pred["mask"], IGNORE).any():
            out["val_dice"] = M.lesion_dice(pred["pred_mask"], pred["mask"], IGNORE)
            out["val_iou"] = M.lesion_iou(pred["pred_mask"], pred["mask"], IGNORE)
        if M.no_lesion_cases(pred["mask"], IGNORE).any():
            out["val_empty_rate"] = M.empty_mask_rate(pred["pred_mask"], pred["mask"], IGNORE)
        if regions:
            from medloop.trainers.metrics.regions import mean_over_holding_cases

            per = mean_over_holding_cases(pred["pred_mask"], pred["mask"], regions, distances=False)
            out.update({f"val_dice_{name}": v["dice"] for name, v in per.items()})
    out = {k: float(v) for k, v in out.items()}
    terms = [out[k] for k in ("val_dice", "val_accuracy") if k in out and math.isfinite(out[k])]
    out[SCORE_METRIC] = float(np.mean(terms)) if terms else 0.0
    return out


@dataclass
class EarlyStop:
    """Best score so far and epochs without improvement (``patience`` None: never stops)."""

    patience: int | None
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0

    def update(self, score: float, epoch: int) -> bool:
        """Record an epoch; True when it is the best so far."""
        if score > self.best:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience


def prepare_for_device(model: nn.Module, settings: LoopSettings, device: torch.device) -> nn.Module:
    """Move to ``device``; on GPU channels_last; optional torch.compile."""
    model = model.to(device)
    if device.type == "cuda" and settings.channels_last:
        # Module.to takes memory_format at runtime; torch's overloads do not list it
        fmt = memory_format(5 if settings.volume_size is not None else 4)
        model = model.to(memory_format=fmt)  # type: ignore[call-overload]
    return model


def maybe_compile(model: nn.Module, settings: LoopSettings) -> nn.Module:
    return cast(nn.Module, torch.compile(model)) if settings.compile else model  # the compiled module wraps it


@dataclass
class PlainResult:
    model: nn.Module
    history: list[dict[str, float]]
    global_step: int
    best_state: dict[str, torch.Tensor] | None
    best_metrics: dict[str, float]


def train_plain(
    settings: LoopSettings,
    train: SampleArrays,
    val: SampleArrays,
    *,
    device: str | torch.device = "cpu",
    init_state: dict[str, torch.Tensor] | None = None,
    global_step: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    unlabeled: SampleArrays | None = None,
) -> PlainResult:
    """Single-process training with validation and early stopping; keeps the best weights in memory."""
    if len(train) == 0:
        raise ValueError("no training samples: the ledger has no active human or pseudo labels outside val/test")
    device = torch.device(device)
    torch.manual_seed(settings.seed)
    model = build_model(settings.model)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = prepare_for_device(model, settings, device)
    loss_fn = make_loss(model, settings, train.labels).to(device)
    optimizer = make_optimizer(model, loss_fn, settings)
    run_model = maybe_compile(model, settings)
    pin = device.type == "cuda"
    train_loader = make_loader(train, settings, train=True, pin_memory=pin)
    val_loader = make_loader(val, settings, train=False, pin_memory=pin) if len(val) else None
    semi = make_semi(settings, unlabeled, model, pin_memory=pin, labels=train.labels)
    stopper = EarlyStop(settings.patience)
    history: list[dict[str, float]] = []
    best_state, best_metrics = None, {}
    for epoch in range(settings.epochs):
        cast(JointDataset, train_loader.dataset).set_epoch(epoch)
        set_lr(optimizer, epoch_lr(settings, epoch))
        global_step, stats = train_epoch(
            run_model, train_loader, loss_fn, optimizer, device=device, global_step=global_step,
            amp=settings.amp, channels_last=settings.channels_last, semi=semi, epoch=epoch,
        )
        metrics: dict[str, float] = {}
        if val_loader is not None:
            pred = predict(windowed(run_model, settings.patch_size), val_loader, device=device,
                           cls_head=settings.cls_head, amp=settings.amp, channels_last=settings.channels_last,
                           no_lesion=settings.no_lesion_index)
            metrics = validation_metrics(pred, len(settings.classes), settings.regions)
        if semi is not None:
            semi.update_gate(metrics.get("val_dice"), metrics.get("val_ece"))
        row = {"epoch": epoch + 1, "global_step": global_step, "lr": epoch_lr(settings, epoch), **stats, **metrics}
        history.append(row)
        improved = stopper.update(metrics.get(SCORE_METRIC, -stats["loss"]), epoch + 1)
        if improved or settings.keep == "last":
            best_state = {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
            best_metrics = row
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
        if stopper.stop:
            break
    return PlainResult(unwrap(model), history, global_step, best_state, best_metrics)
