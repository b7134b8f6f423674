"""A round's checkpoint -> ``torch.export`` programs + the settings of the served model.

Three programs, each with a dynamic batch dimension (``encode`` and ``decode`` traced with every
module in eval mode; ``decode_mc`` with the dropout layers sampling, BatchNorm frozen, as
``medloop.trainers.uncertainty.mc`` does). ``encode`` returns the model's features flattened to a
tuple of tensors (``torch.utils._pytree``), the decoders take that tuple back, so MC dropout runs the
encoder once and the decoder on the features repeated T times, as medloop's cached sampler does
(the MC-dropout contract ``forward(x) == decode(encode(x))`` of ``medloop.trainers.models.base``).
The programs hold no medloop class: :mod:`medloop.tracking.pyfunc_model` loads them with torch only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from medloop.config import Campaign, model_heads

PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
NORMALISATION = ("float32 (N, C, S, S) in [0, 1]: the image converted to grey (C = 1) or RGB (C = 3), "
                 "resized bilinearly to S x S, uint8 / 255 (no mean/std shift)")
VOLUME_NORMALISATION = ("float32 (N, C, D, H, W) = volume_size: canonical RAS+ volume as (sequences, slices, rows, "
                        "columns), CT window to [0, 1] or MRI z-score within the body per sequence (data.intensity), "
                        "resized trilinearly to volume_size")


class _Encode(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(pytree.tree_flatten(self.model.encode(x))[0])  # type: ignore[operator]


class _Decode(nn.Module):
    def __init__(self, model: nn.Module, spec: pytree.TreeSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec

    def forward(self, leaves: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.decode(pytree.tree_unflatten(list(leaves), self.spec))  # type: ignore[operator]
        return out.cls_logits, out.seg_logits


@dataclass
class ServedModel:
    """What :func:`export_checkpoint` wrote: artifact files by name and the pyfunc ``model_config``."""

    artifacts: dict[str, str]
    config: dict[str, Any]


def has_dropout(model: nn.Module) -> bool:
    from medloop.trainers.uncertainty.mc import is_dropout

    return any(is_dropout(m) and float(getattr(m, "p", 0.0)) > 0 for m in model.modules())


def served_config(campaign: Campaign, meta: dict[str, Any], dropout: bool) -> dict[str, Any]:
    """The pyfunc ``model_config``: shapes, heads, uncertainty method and defaults, classes."""
    from medloop.trainers.plain import no_lesion_index

    cls_head, seg_head = model_heads(campaign.model)
    classes = list(meta.get("classes") or campaign.data.classes)
    u = campaign.uncertainty
    mc_default = u.mc_passes if (dropout and u.method != "evidential") else 1
    return {
        "classes": classes,
        "channels": int(meta.get("channels") or campaign.data.channels),
        "image_size": int(meta.get("image_size") or campaign.data.image_size),
        "cls_head": str(meta.get("cls_head") or cls_head),
        "seg_head": str(meta.get("seg_head") or seg_head),
        "method": u.method,
        "mc_passes": int(mc_default),
        "boundary_band": int(u.boundary_band),
        "no_lesion_class": no_lesion_index(classes, meta.get("no_lesion_class", campaign.data.no_lesion_class)),
        "uncertainty_measure": campaign.selection.measure,
        "model": str((meta.get("model") or {}).get("name", campaign.model.name)),
        "normalisation": NORMALISATION if not meta.get("volume_size") else VOLUME_NORMALISATION,
        **({"volume_size": [int(v) for v in meta["volume_size"]]} if meta.get("volume_size") else {}),
        **({"patch_size": [int(v) for v in meta["patch_size"]]} if meta.get("patch_size") else {}),
    }


def spatial_shape(config: dict[str, Any]) -> tuple[int, ...]:
    """(S, S) for an image model, ``volume_size`` (D, H, W) for a volume model."""
    if config.get("volume_size"):
        return tuple(int(v) for v in config["volume_size"])
    return (int(config["image_size"]), int(config["image_size"]))


def export_programs(model: nn.Module, channels: int, size: int | tuple[int, ...], out: Path) -> dict[str, str]:
    """Write ``encode.pt2``, ``decode.pt2`` and (when the model has dropout) ``decode_mc.pt2`` to ``out``.
    ``size``: the image side, or a volume model's (D, H, W)."""
    from medloop.trainers.uncertainty.mc import eval_mode

    out.mkdir(parents=True, exist_ok=True)
    grid = (size, size) if isinstance(size, int) else tuple(size)
    example = torch.rand(2, channels, *grid, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    files: dict[str, str] = {}
    with torch.no_grad(), eval_mode(model):
        flat, spec = pytree.tree_flatten(model.encode(example))  # type: ignore[operator]
        leaves = tuple(flat)
        enc = torch.export.export(_Encode(model), (example,), dynamic_shapes=({0: batch},))
        feature_dims = (tuple({0: batch} for _ in leaves),)
        dec = torch.export.export(_Decode(model, spec), (leaves,), dynamic_shapes=feature_dims)
    programs = {"encode": enc, "decode": dec}
    if has_dropout(model):
        with torch.no_grad(), eval_mode(model, dropout_on=True):
            programs["decode_mc"] = torch.export.export(_Decode(model, spec), (leaves,), dynamic_shapes=feature_dims)
    for name, program in programs.items():
        program.example_inputs = None  # not needed to run; at 256 px the decoder's features would add 15 MB
        path = out / f"{name}.pt2"
        torch.export.save(program, path)
        files[name] = str(path)
    return files


def export_checkpoint(campaign: Campaign, checkpoint_path: str, out: Path) -> ServedModel:
    """Rebuild the round's model from its checkpoint and export it for the pyfunc model."""
    from medloop.trainers.checkpoints import load_model

    model, meta = load_model(checkpoint_path, windowed=False)  # a patch model: exported at its patch grid
    dropout = has_dropout(model)
    config = served_config(campaign, meta, dropout)
    grid = tuple(config["patch_size"]) if config.get("patch_size") else spatial_shape(config)
    files = export_programs(model, config["channels"], grid, out)
    return ServedModel(files, config)


def signature(config: dict[str, Any]) -> Any:
    """The pyfunc signature: image batch -> named outputs; params ``mc_passes`` and ``seed``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    c, grid, k = config["channels"], spatial_shape(config), len(config["classes"])
    f32, i64, u8 = np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.uint8)
    per_image = ("confidence", "uncertainty", "std", "entropy", "mutual_info", "vacuity", "margin",
                 "lesion_uncertainty", "lesion_fraction")
    outputs: list[ColSpec | TensorSpec] = [
        TensorSpec(f32, (-1, k), "class_probs"), TensorSpec(i64, (-1,), "pred_class"),
        TensorSpec(f32, (-1, *grid), "mask_probs"), TensorSpec(u8, (-1, *grid), "mask"),
        TensorSpec(f32, (-1, *grid), "pixel_uncertainty"),
        *(TensorSpec(f32, (-1,), name) for name in per_image)]
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, c, *grid))]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("mc_passes", "integer", int(config["mc_passes"])),
                            ParamSpec("seed", "integer", -1)]),
    )


def input_example(config: dict[str, Any]) -> np.ndarray:
    """One image (or volume) in the model's input form: a smooth blob on a darker background, float32 in [0, 1]."""
    c, grid = config["channels"], spatial_shape(config)
    axes = np.meshgrid(*[np.linspace(0.0, 1.0, n, dtype=np.float32) for n in grid], indexing="ij")
    centre = [0.5] * (len(grid) - 1) + [0.45]
    blob = np.exp(-sum((a - m) ** 2 for a, m in zip(axes, centre)) / 0.02)
    image = np.clip(0.2 + 0.6 * blob, 0.0, 1.0).astype(np.float32)
    return np.broadcast_to(image, (1, c, *grid)).copy()
