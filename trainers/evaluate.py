"""Evaluation of a checkpoint on a labelled split the loop never trains on (``test`` by default).

:func:`evaluation_metrics` is pure: it takes the output of :func:`medloop.trainers.plain.predict`
(``probs`` (N, K), ``label`` (N,) with -1 = no class label, ``pred_mask`` (N, H, W), ``mask`` (N, H, W)
with 255 = ignore) and returns

* classification (cases with a class label): ``accuracy``, ``f1`` (macro), ``auc`` (one-vs-rest,
  macro), ``ece`` (15 equal-width bins, the default of ``metrics.ece``), ``adaptive_ece``, ``brier``,
  ``nll``, the ``confusion`` matrix (rows true, columns predicted) and ``per_class``: for every class
  ``n`` (support), ``recall`` (the class's accuracy: correct / cases of the class), ``precision`` and
  ``accuracy`` (one-vs-rest: (TP + TN) / N);
* segmentation, with the one definition medloop uses everywhere: ``dice`` / ``iou`` =
  ``metrics.lesion_dice`` / ``metrics.lesion_iou`` (mean per case over the cases with a lesion),
  ``hd95`` (mean of ``metrics.hd95`` over the same cases; an empty prediction on a lesion counts the
  image diagonal) and ``empty_rate`` = ``metrics.empty_mask_rate`` (share of the no-lesion cases
  predicted empty);
* counts: ``n``, ``n_class``, ``n_lesion``, ``n_no_lesion``.

A metric that is undefined on the data (e.g. Dice without a lesion case) is ``None``, so the dict
is plain JSON. :func:`evaluate_checkpoint` decodes the split's human labels from the ledger, loads
the checkpoint and runs one deterministic pass (dropout off).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medloop.trainers.dataset import IGNORE

SEG_KEYS = ("dice", "iou", "hd95", "empty_rate")
CLS_KEYS = ("accuracy", "f1", "auc", "ece", "adaptive_ece", "brier", "nll")


def _num(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def evaluation_metrics(pred: dict[str, np.ndarray], num_classes: int, class_names: Sequence[str],
                       spacing: np.ndarray | None = None, regions: dict[str, list[int]] | None = None
                       ) -> dict[str, Any]:
    """Test metrics of :func:`medloop.trainers.plain.predict` output (see the module docstring); ``spacing``
    (volumes: (N, 3) mm per voxel of each case's model grid) puts HD95 in millimetres, else it is in pixels.
    ``regions`` (a multi-region campaign: name -> labels) adds ``regions``: per region, :func:`region_summary`."""
    from medloop.trainers import metrics as M

    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    labels = np.asarray(pred["label"], np.int64).reshape(-1)
    masks = np.asarray(pred["mask"])
    pred_masks = np.asarray(pred["pred_mask"])
    n = int(labels.shape[0])
    out: dict[str, Any] = {"n": n}
    out.update(classification_summary(pred["probs"], labels, class_names))

    lesion = M.lesion_cases(masks, IGNORE) if n else np.zeros(0, bool)
    no_lesion = M.no_lesion_cases(masks, IGNORE) if n else np.zeros(0, bool)
    out["n_lesion"], out["n_no_lesion"] = int(lesion.sum()), int(no_lesion.sum())
    out.update({k: None for k in SEG_KEYS})
    if lesion.any():
        out["dice"] = _num(M.lesion_dice(pred_masks, masks, IGNORE))
        out["iou"] = _num(M.lesion_iou(pred_masks, masks, IGNORE))
        out["hd95"] = _num(np.mean([M.hd95(pred_masks[i], masks[i], None if spacing is None else spacing[i],
                                            ignore_index=IGNORE) for i in np.flatnonzero(lesion)]))
        out["hd95_unit"] = "pixel" if spacing is None else "mm"
    if no_lesion.any():
        out["empty_rate"] = _num(M.empty_mask_rate(pred_masks, masks, IGNORE))
    if regions:
        out["regions"] = region_summary(pred_masks, masks, regions, spacing)
    return out


def region_summary(pred_masks: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray,
                   regions: dict[str, list[int]], spacing: np.ndarray | None = None, *, n_boot: int = 0,
                   level: float = 0.95, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per region (or composite), over the cases whose target holds it: ``n``, mean ``dice`` and mean ``hd95``
    (mm with ``spacing``) as JSON numbers, None where undefined
    (:func:`medloop.trainers.metrics.regions.mean_over_holding_cases`). ``n_boot`` > 0 adds ``dice_ci`` and
    ``hd95_ci``: percentile bootstrap intervals, resampling cases (those holding the region in a resample)."""
    from functools import partial

    from medloop.trainers.metrics.bootstrap import bootstrap_cis
    from medloop.trainers.metrics.regions import mean_of_holding, per_case_regions

    per = per_case_regions(list(pred_masks), list(masks), regions, None if spacing is None else list(spacing))
    out: dict[str, dict[str, Any]] = {}
    for name, values in per.items():
        point = mean_of_holding(values)
        out[name] = {"n": int(point["n"]), "dice": _num(point["dice"]), "hd95": _num(point["hd95"])}
        if n_boot > 0:
            cis = bootstrap_cis(partial(mean_of_holding, values), len(values["holds"]), n_boot=n_boot,
                                level=level, seed=seed)
            for metric in ("dice", "hd95"):
                ci = cis.get(metric)
                out[name][f"{metric}_ci"] = None if ci is None else [_num(ci[0]), _num(ci[1])]
    return out


def classification_summary(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """The classification part of :func:`evaluation_metrics` over the cases with a class label (label >= 0):
    ``n_class``, :data:`CLS_KEYS`, ``confusion`` and ``per_class`` (None / {} without such a case)."""
    from medloop.trainers import metrics as M

    num_classes = len(class_names)
    labels = np.asarray(labels, np.int64).reshape(-1)
    probs = np.asarray(probs, np.float64).reshape(len(labels), -1)
    has_cls = labels >= 0
    out: dict[str, Any] = {"n_class": int(has_cls.sum())}
    out.update({k: None for k in CLS_KEYS})
    out["confusion"] = None
    out["per_class"] = {}
    if has_cls.any():
        y, p = labels[has_cls], probs[has_cls]
        yhat = p.argmax(1)
        cm = M.confusion_matrix(y, yhat, num_classes)
        out.update(
            accuracy=M.accuracy(y, yhat), f1=M.f1_score(y, yhat, num_classes, "macro"), auc=_num(M.auc_ovr(y, p)),
            ece=M.ece(p, y), adaptive_ece=M.adaptive_ece(p, y), brier=M.brier_score(p, y), nll=M.nll(p, y),
        )
        out["confusion"] = cm.tolist()
        tp = np.diag(cm)
        total = int(cm.sum())
        for k, name in enumerate(class_names):
            support, predicted = int(cm[k].sum()), int(cm[:, k].sum())
            tn = total - support - predicted + int(tp[k])
            out["per_class"][name] = {
                "n": support,
                "recall": _num(tp[k] / support) if support else None,
                "precision": _num(tp[k] / predicted) if predicted else None,
                "accuracy": _num((tp[k] + tn) / total),
            }
    for key in CLS_KEYS:
        if out[key] is not None:
            out[key] = _num(out[key])
    return out


def _device(campaign: Any) -> Any:
    import torch

    return torch.device("cuda" if campaign.compute.use_gpu and torch.cuda.is_available() else "cpu")


def evaluate_checkpoint(
    campaign: Any,
    ledger: Any,
    checkpoint_path: str | Path,
    split: str = "test",
    batch_size: int = 32,
) -> dict[str, Any]:
    """Metrics of ``checkpoint_path`` on the human labels of ``split`` (default ``test``).

    ``ledger`` is an open :class:`medloop.ledger.store.Ledger` (or a ledger URL, opened and closed
    here). Runs on the GPU when ``campaign.compute.use_gpu`` and one is available, else on the CPU.
    Raises ``ValueError`` when the split has no human label or the checkpoint was trained for another
    image size / channel count than the campaign's.
    """
    from torch.utils.data import DataLoader

    from medloop.ledger.store import Ledger
    from medloop.trainers.checkpoints import load_model
    from medloop.trainers.dataset import JointDataset, load_arrays
    from medloop.trainers.plain import no_lesion_index, predict

    own = isinstance(ledger, str)
    led = Ledger.open(ledger) if own else ledger
    try:
        arrays = load_arrays(campaign, led, split)
    finally:
        if own:
            led.close()
    if not len(arrays):
        raise ValueError(f"split {split!r} has no human label to evaluate on")
    device = _device(campaign)
    model, meta = load_model(checkpoint_path, device=device)
    d = campaign.data
    if meta.get("volume_size") is not None:  # a volume model: its grid must be the campaign's
        if [int(v) for v in meta["volume_size"]] != [int(v) for v in d.volume_size]:
            raise ValueError(f"checkpoint {checkpoint_path} has volume_size {meta['volume_size']}, the campaign "
                             f"{list(d.volume_size)}")
    else:
        for key, want in (("image_size", d.image_size), ("channels", d.channels)):
            if meta.get(key) is not None and int(meta[key]) != int(want):
                raise ValueError(f"checkpoint {checkpoint_path} has {key} {meta[key]}, the campaign {want}")
    classes = list(meta.get("classes") or d.classes)
    if classes != list(d.classes):
        raise ValueError(f"checkpoint {checkpoint_path} classes {classes} differ from the campaign's {list(d.classes)}")
    loader = DataLoader(JointDataset(arrays), batch_size=batch_size, shuffle=False)
    pred = predict(model, loader, device=device, cls_head=meta.get("cls_head") or "softmax",
                   amp=campaign.compute.amp, channels_last=campaign.compute.channels_last,
                   no_lesion=no_lesion_index(classes, meta.get("no_lesion_class")))
    spacing = None if arrays.spacing is None else arrays.spacing[np.asarray(pred["index"], np.int64)]
    out = evaluation_metrics(pred, len(classes), classes, spacing, meta.get("regions"))
    out["split"] = split
    out["device"] = device.type
    return out
