"""Inference on images outside the campaign: native-size images in, per-image class probabilities,
uncertainty measures and native-size lesion mask / probability / uncertainty maps out.

Used by ``medloop predict`` and ``medloop evaluate``. The steps are the pool scoring's
(:mod:`medloop.trainers.score`), without the store or the ledger:

1. each image (uint8, (H, W) or (H, W, 3), its own size) is fitted to the model input
   (:func:`medloop.trainers.dataset.fit_image`: bilinear to ``image_size`` square, the model's channels);
2. the batch is scored by :func:`medloop.trainers.uncertainty.score_batch` (T MC-dropout passes with the
   cached sampler, or one deterministic pass for ``passes = 1`` / the evidential method), which gives the
   same measures as the pool's ``Prediction`` rows and empties the mask of a case predicted as the
   no-lesion class (``measures.class_consistent_mask``);
3. the model-size lesion probability is resized bilinearly to the image's own size and thresholded at 0.5
   (as ``labeling.push.preannotation_mask`` does for Label Studio), the pixel uncertainty likewise resized;
   a case whose model-size mask is empty gets an empty mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medloop.data.imagestore import prob_at
from medloop.trainers.dataset import fit_image, resize_volume, to_model_input
from medloop.trainers.uncertainty.scoring import BatchScores

#: the per-image measures of a prediction, in the order of ``predictions.csv`` (names as the ledger's
#: ``Prediction`` columns; NaN where the method cannot give one, e.g. std / mutual_info for one pass)
MEASURES = ("confidence", "std", "entropy", "mutual_info", "vacuity", "margin", "seg_uncertainty",
            "seg_uncertainty_image")


@dataclass
class InferenceModel:
    """A checkpoint's model ready for inference, with what the checkpoint says about it."""

    model: nn.Module
    checkpoint: str
    classes: list[str]
    image_size: int
    channels: int
    cls_head: str
    seg_head: str
    no_lesion: int | None  # index of the no-lesion class (its cases get an empty mask), None: none
    device: torch.device
    meta: dict[str, Any] = field(default_factory=dict)
    volume_size: tuple[int, int, int] | None = None  # a volume model's input grid (D, H, W); None: 2D images


@dataclass
class Settings:
    """How to score: ``passes`` T (1 = one deterministic pass), the uncertainty method, the boundary
    band of the lesion uncertainty, bf16 autocast and channels_last on GPU."""

    passes: int = 10
    method: str = "mc_dropout"
    boundary_band: int = 3
    amp: bool = True
    channels_last: bool = True

    def scoring_method(self) -> str:
        """T = 1 is one pass with dropout off: ``score_batch``'s ``deterministic`` method (std and
        mutual information NaN; pixel uncertainty = normalised entropy, or vacuity)."""
        return "deterministic" if self.passes <= 1 else self.method

    def label(self) -> str:
        """What the reports say: ``one deterministic pass`` or ``mc_dropout, T = 10``."""
        if self.passes <= 1:
            return "one deterministic pass" + (" (evidential)" if self.method == "evidential" else "")
        return f"{self.method}, T = {self.passes}"


@dataclass
class ImagePrediction:
    """One image's prediction. Maps are at the image's own size (``shape``)."""

    probs: np.ndarray  # (K,) float32, mean class probabilities
    pred_class: int
    measures: dict[str, float]  # MEASURES -> value (NaN where undefined)
    mask: np.ndarray  # (H, W) uint8 {0, 1}; a multi-region model (data.regions): its region label 1..R
    fg_prob: np.ndarray  # (H, W) float32, lesion probability
    uncertainty: np.ndarray  # (H, W) float32, pixel uncertainty

    @property
    def lesion_area(self) -> int:
        """Lesion pixels (any region) at the image's own size."""
        return int(np.count_nonzero(self.mask))

    @property
    def lesion_fraction(self) -> float:
        return self.lesion_area / self.mask.size if self.mask.size else 0.0


def pick_device(use_gpu: bool) -> torch.device:
    """CUDA when asked for and present, else the CPU."""
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


class VolumeModelError(ValueError):
    """A volume (3D) model given to an image command."""


def load_inference_model(
    checkpoint: str | Path,
    *,
    device: torch.device,
    classes: Sequence[str],
    image_size: int,
    channels: int,
    no_lesion_class: str | None,
    channels_last: bool = True,
    volumes: bool = False,
) -> InferenceModel:
    """Load a checkpoint folder (or URI) for inference. What its ``meta.json`` records (classes, image size,
    channels, heads, no-lesion class, a volume model's grid) wins; the arguments (the campaign's values)
    fill what it lacks. A volume model is a :class:`VolumeModelError` unless ``volumes`` (the caller takes
    volume files)."""
    from medloop.trainers.checkpoints import load_model
    from medloop.trainers.models import resolve_heads
    from medloop.trainers.plain import no_lesion_index

    model, meta = load_model(checkpoint, device=device)
    volume_size: tuple[int, int, int] | None = None
    if meta.get("volume_size"):
        d, h, w = (int(v) for v in meta["volume_size"])
        volume_size = (d, h, w)
    if volume_size is not None and not volumes:
        raise VolumeModelError(
            f"checkpoint {checkpoint} is a volume model (input {meta['volume_size']} slices x rows x columns): "
            "the Label Studio ML backend takes 2D images; medloop predict and medloop evaluate take its volume "
            "files (docs/volumes.md), and the slice tasks medloop pushes carry its pre-annotation")
    if device.type == "cuda" and channels_last:
        fmt = torch.channels_last_3d if volume_size is not None else torch.channels_last
        model = model.to(memory_format=fmt)  # type: ignore[call-overload]
    names = list(meta.get("classes") or classes)
    default_cls, default_seg = resolve_heads(str(meta["model"]["name"]), None, None)
    no_lesion = meta["no_lesion_class"] if "no_lesion_class" in meta else no_lesion_class
    return InferenceModel(
        model=model, checkpoint=str(checkpoint), classes=names,
        image_size=int(meta.get("image_size") or image_size), channels=int(meta.get("channels") or channels),
        cls_head=str(meta.get("cls_head") or default_cls), seg_head=str(meta.get("seg_head") or default_seg),
        no_lesion=no_lesion_index(names, no_lesion), device=device, meta=meta, volume_size=volume_size,
    )


def model_batch(images: Sequence[np.ndarray], size: int, channels: int) -> np.ndarray:
    """Native uint8 images -> the model's input batch, uint8 (B, C, size, size)."""
    return np.stack([fit_image(im, size, channels) for im in images])


@torch.no_grad()
def score_images(im: InferenceModel, batch: np.ndarray, settings: Settings) -> BatchScores:
    """Score a uint8 (B, C, S, S) image batch, or a float (B, C, D, H, W) volume batch, with
    :func:`score_batch` (as the pool scoring does)."""
    from medloop.trainers.uncertainty import score_batch

    x = to_model_input(batch).to(im.device)
    cuda = im.device.type == "cuda"
    if cuda and settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d if x.ndim == 5 else torch.channels_last)
    with torch.autocast(device_type=im.device.type, dtype=torch.bfloat16, enabled=settings.amp and cuda):
        return score_batch(im.model, x, method=settings.scoring_method(), passes=max(1, settings.passes),
                           cls_head=im.cls_head, seg_head=im.seg_head, boundary_band=settings.boundary_band,
                           cached=True, no_lesion_class=im.no_lesion)


def native_maps(pred_mask: np.ndarray, fg_prob: np.ndarray, pixel_uncertainty: np.ndarray,
                shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-size outputs of one image -> (mask, lesion probability, pixel uncertainty) at ``shape``.

    The probability is resized bilinearly, then thresholded at 0.5; an empty model-size mask (no lesion,
    or the no-lesion class predicted) stays empty at every size. A multi-region label map gives each lesion
    pixel its region (nearest)."""
    prob = prob_at(fg_prob, shape)
    unc = prob_at(np.nan_to_num(pixel_uncertainty, nan=0.0), shape)
    labels = np.asarray(pred_mask)
    if not labels.any():
        return np.zeros(shape, np.uint8), prob, unc
    lesion = prob >= 0.5
    if int(labels.max()) > 1:  # a multi-region label map (data.regions): each lesion pixel keeps its region
        from medloop.data.imagestore import mask_at

        regions = np.maximum(mask_at(labels.astype(np.uint8), shape), 1)
        return np.where(lesion, regions, 0).astype(np.uint8), prob, unc
    return lesion.astype(np.uint8), prob, unc


def _value(x: Any) -> float:
    v = float(x)
    return v if math.isfinite(v) else float("nan")


def to_native(scores: BatchScores, shapes: Sequence[tuple[int, int]]) -> list[ImagePrediction]:
    """Split a scored batch into per-image predictions with maps at each image's own size."""
    out = []
    for i, shape in enumerate(shapes):
        mask, prob, unc = native_maps(scores.pred_mask[i], scores.fg_prob[i], scores.pixel_uncertainty[i], shape)
        out.append(ImagePrediction(
            probs=np.asarray(scores.probs[i], np.float32), pred_class=int(scores.pred_class[i]),
            measures={m: _value(getattr(scores, m)[i]) for m in MEASURES}, mask=mask, fg_prob=prob, uncertainty=unc,
        ))
    return out


def predict_images(im: InferenceModel, images: Sequence[np.ndarray], settings: Settings) -> list[ImagePrediction]:
    """Native uint8 images (one batch) -> their predictions at their own sizes."""
    if not len(images):
        return []
    scores = score_images(im, model_batch(images, im.image_size, im.channels), settings)
    return to_native(scores, [tuple(np.asarray(x).shape[:2]) for x in images])  # type: ignore[misc]


# ---- volumes ------------------------------------------------------------------------------------------


@dataclass
class VolumePrediction:
    """One volume's prediction. Maps are on the volume's own grid, model axes (D, H, W)."""

    probs: np.ndarray  # (K,) float32
    pred_class: int
    measures: dict[str, float]
    mask: np.ndarray  # (D, H, W) uint8 {0, 1}
    fg_prob: np.ndarray  # (D, H, W) float32
    uncertainty: np.ndarray  # (D, H, W) float32

    @property
    def lesion_voxels(self) -> int:
        return int(self.mask.sum())


def native_volume_maps(pred_mask: np.ndarray, fg_prob: np.ndarray, voxel_uncertainty: np.ndarray,
                       shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model-grid outputs of one volume -> (mask, lesion probability, voxel uncertainty) on its own grid
    ``shape`` (D, H, W): trilinear resize (:func:`medloop.trainers.dataset.resize_volume`, as the volume was
    brought to the model's grid), then the probability thresholded at 0.5; an empty model-grid mask stays
    empty (the 3D counterpart of :func:`native_maps`). A multi-region label map keeps each lesion voxel's
    region (nearest neighbour) where the lesion probability is >= 0.5."""
    size = tuple(int(v) for v in shape)
    prob = resize_volume(np.asarray(fg_prob, np.float32)[None], size)[0]
    unc = resize_volume(np.nan_to_num(np.asarray(voxel_uncertainty, np.float32), nan=0.0)[None], size)[0]
    labels = np.asarray(pred_mask)
    if not labels.any():
        return np.zeros(size, np.uint8), prob, unc
    if int(labels.max()) > 1:  # a multi-region label map (data.regions): each lesion voxel keeps its region
        from medloop.data.imagestore import nearest_resize

        regions = nearest_resize(labels.astype(np.uint8), (size[0], size[1], size[2]))
        return np.where(prob >= 0.5, np.maximum(regions, 1), 0).astype(np.uint8), prob, unc
    return (prob >= 0.5).astype(np.uint8), prob, unc


def predict_volume(im: InferenceModel, volume: np.ndarray, settings: Settings,
                   shape: Sequence[int] | None = None) -> VolumePrediction:
    """A normalised (C, D, H, W) volume (what volume ingest stores) -> its prediction on the grid ``shape``
    (D, H, W; default the volume's own): the volume is resized to the model's grid ``im.volume_size`` as the
    rounds do, scored, and the maps resized to ``shape`` (the same field of view)."""
    if im.volume_size is None:
        raise ValueError(f"checkpoint {im.checkpoint} is a 2D image model, not a volume model")
    x = np.asarray(volume, np.float32)
    if x.ndim != 4 or x.shape[0] != im.channels:
        raise ValueError(f"expected a (C={im.channels}, D, H, W) volume for {im.checkpoint}, got shape {x.shape}")
    s = score_images(im, resize_volume(x, im.volume_size)[None], settings)
    grid = x.shape[1:] if shape is None else shape
    mask, prob, unc = native_volume_maps(s.pred_mask[0], s.fg_prob[0], s.pixel_uncertainty[0], grid)
    return VolumePrediction(probs=np.asarray(s.probs[0], np.float32), pred_class=int(s.pred_class[0]),
                            measures={m: _value(getattr(s, m)[0]) for m in MEASURES}, mask=mask, fg_prob=prob,
                            uncertainty=unc)
