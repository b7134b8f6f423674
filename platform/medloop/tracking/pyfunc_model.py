"""The registered model as MLflow loads it: an MLflow pyfunc "model from code".

MLflow copies this file into the logged model and runs it on ``mlflow.pyfunc.load_model``; it imports
only torch, numpy and mlflow (never medloop), so the model loads and serves wherever the logged
requirements are installed. The network is a set of ``torch.export`` programs written by
:mod:`medloop.tracking.export` (artifacts ``encode``, ``decode`` and, when the model has dropout,
``decode_mc``: the decoder with its dropout layers sampling), plus the settings in ``model_config``.

Input: float32 image batch ``(N, C, S, S)`` in [0, 1] (medloop's normalisation: the image converted
to grey (C = 1) or RGB (C = 3), resized bilinearly to S x S, uint8 / 255; no mean/std shift); a volume
campaign's model takes ``(N, C, D, H, W)`` = ``volume_size``, normalised as ingest does (CT window to
[0, 1] or MRI z-score within the body, docs/volumes.md). A model trained on patches (``patch_size`` in the
config) is exported at the patch grid and covers ``volume_size`` with a sliding window (:func:`window_starts`,
:func:`gaussian_weight`: overlapping patches, each pass's probabilities blended with Gaussian weights, the class
probabilities the mean over the patches), as medloop's own ``SlidingWindow`` does with MONAI.
Params: ``mc_passes`` (T; 1 = one deterministic pass, dropout off) and ``seed`` (>= 0 makes the
MC-dropout masks reproducible; -1 = unseeded). Output: a dict of arrays, the fields of medloop's
``score_batch`` (see ``docs/using-the-model.md``): ``class_probs``, ``mask_probs`` (lesion
probability), ``mask``, ``uncertainty`` (the campaign's selection measure) and the named measures.
The formulas repeat ``medloop.trainers.heads`` and ``medloop.trainers.uncertainty.measures``
(entropy, BALD mutual information and std of Gal & Ghahramani's MC dropout as in Cheng et al.,
MTTU-Net, IEEE TMI 2022; vacuity K / S of Ren, Zou et al., UML, MICCAI 2023, Eq. 1-2); a test holds
them equal to medloop's own prediction.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import mlflow
import numpy as np
import torch
import torch.nn.functional as F
from mlflow.pyfunc import PythonModel, PythonModelContext

_EPS = 1e-12
FIELDS = ("class_probs", "pred_class", "confidence", "mask_probs", "mask", "uncertainty", "std", "entropy",
          "mutual_info", "vacuity", "margin", "lesion_uncertainty", "lesion_fraction", "pixel_uncertainty")


def _probs(logits: torch.Tensor, head: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(probabilities, Dirichlet alpha or None) along dim 1: softmax, or alpha / S with alpha = softplus + 1."""
    if head == "evidential":
        alpha = F.softplus(logits) + 1.0
        return alpha / alpha.sum(dim=1, keepdim=True), alpha
    return torch.softmax(logits, dim=1), None


def _entropy(p: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(_EPS))).sum(dim=dim)


def _class_std(samples: torch.Tensor) -> torch.Tensor:
    """Std over passes (ddof 0) of the probability of the mean-predicted class; samples (T, B, K, ...)."""
    pred = samples.mean(0).argmax(dim=1)
    index = pred.unsqueeze(0).unsqueeze(2).expand(samples.shape[0], -1, 1, *pred.shape[1:])
    return samples.gather(2, index).squeeze(2).std(dim=0, unbiased=False)


def _dilate(mask: torch.Tensor, band: int) -> torch.Tensor:
    if band <= 0:
        return mask.bool()
    m = mask.float().unsqueeze(1)
    pool = F.max_pool3d if m.dim() == 5 else F.max_pool2d  # a volume's mask dilates in 3D
    return pool(m, kernel_size=2 * band + 1, stride=1, padding=band).squeeze(1) > 0.5


def _lesion_uncertainty(pixel: torch.Tensor, pred_mask: torch.Tensor, fg_prob: torch.Tensor, band: int,
                        possible: float = 0.1) -> torch.Tensor:
    """Mean pixel uncertainty over the possible lesion (predicted, or foreground probability >= 0.1) and a
    band of ``band`` pixels around it; 0 where no pixel may be lesion."""
    region = _dilate((pred_mask > 0) | (fg_prob >= possible), band).to(pixel.dtype)
    count = region.flatten(1).sum(1)
    total = (pixel * region).flatten(1).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))


def joint_outputs(cls_samples: torch.Tensor, seg_samples: torch.Tensor, cls_alpha: torch.Tensor | None,
                  seg_alpha: torch.Tensor | None, *, mc: bool, method: str, boundary_band: int,
                  no_lesion_class: int | None, measure: str) -> dict[str, np.ndarray]:
    """Per-image outputs from T passes: cls (T, B, K), seg (T, B, Q, H, W), alphas of the same shapes or None."""
    probs = cls_samples.mean(0)
    seg_mean = seg_samples.mean(0)
    pred_class = probs.argmax(dim=1)
    pred_mask = seg_mean.argmax(dim=1)
    if no_lesion_class is not None:
        keep = (pred_class != no_lesion_class).view(-1, *([1] * (pred_mask.dim() - 1)))
        pred_mask = pred_mask * keep.to(pred_mask.dtype)
    fg_prob = 1.0 - seg_mean[:, 0]
    b = probs.shape[0]
    nan = torch.full((b,), float("nan"))
    if seg_alpha is not None and method != "mc_dropout":
        pixel = (seg_alpha.shape[2] / seg_alpha.sum(dim=2)).mean(0)
    elif mc:
        pixel = _class_std(seg_samples)
    else:
        pixel = _entropy(seg_mean, dim=1) / math.log(seg_mean.shape[1])
    top = probs.topk(2, dim=1).values
    if mc:
        mutual_info = (_entropy(probs) - _entropy(cls_samples, dim=2).mean(0)).clamp_min(0.0)
    out = {
        "class_probs": probs,
        "pred_class": pred_class,
        "confidence": probs.max(dim=1).values,
        "mask_probs": fg_prob,
        "mask": pred_mask.to(torch.uint8),
        "std": _class_std(cls_samples) if mc else nan,
        "entropy": _entropy(probs),
        "mutual_info": mutual_info if mc else nan,
        "vacuity": (cls_alpha.shape[2] / cls_alpha.sum(dim=2)).mean(0) if cls_alpha is not None else nan,
        "margin": top[:, 0] - top[:, 1],
        "lesion_uncertainty": _lesion_uncertainty(pixel, pred_mask, fg_prob, boundary_band),
        "lesion_fraction": (pred_mask > 0).flatten(1).float().mean(1),
        "pixel_uncertainty": pixel,
    }
    out["uncertainty"] = out[measure]
    return {k: out[k].detach().cpu().numpy().astype(np.uint8 if k == "mask" else
                                                    np.int64 if k == "pred_class" else np.float32)
            for k in FIELDS}


def window_starts(size: int, patch: int, overlap: float = 0.25) -> list[int]:
    """Where the patches start along one axis: every ``patch * (1 - overlap)`` voxels, the last one moved back
    so that it ends on the grid's edge (MONAI's ``dense_patch_slices`` layout)."""
    if size <= patch:
        return [0]
    step = max(1, int(patch * (1.0 - overlap)))
    starts = list(range(0, size - patch + 1, step))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def gaussian_weight(patch: tuple[int, ...], sigma_scale: float = 0.125) -> torch.Tensor:
    """Blending weights of a patch: a Gaussian with sigma = ``sigma_scale`` x the side on each axis, centre 1."""
    axes = []
    for n in patch:
        x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2.0
        axes.append(torch.exp(-0.5 * (x / max(sigma_scale * n, 1e-6)) ** 2))
    w = axes[0]
    for a in axes[1:]:
        w = w[..., None] * a
    return w.clamp_min(1e-4)


def spatial_shape(cfg: dict[str, Any]) -> tuple[int, ...]:
    """The model's input grid: ``(S, S)`` for images, ``volume_size`` (D, H, W) for a volume campaign's model."""
    if cfg.get("volume_size"):
        return tuple(int(v) for v in cfg["volume_size"])
    return (int(cfg["image_size"]), int(cfg["image_size"]))


class JointModel(PythonModel):
    """Class probabilities, lesion-mask probabilities and uncertainty of a medloop round's model."""

    def load_context(self, context: PythonModelContext) -> None:
        cfg = dict(context.model_config or {})
        self.cfg = cfg
        self.encode = torch.export.load(context.artifacts["encode"]).module()
        self.decode = torch.export.load(context.artifacts["decode"]).module()
        mc_path = context.artifacts.get("decode_mc")
        self.decode_mc = torch.export.load(mc_path).module() if mc_path else None

    def _batch(self, model_input: Any) -> torch.Tensor:
        if isinstance(model_input, dict) and len(model_input) == 1:
            model_input = next(iter(model_input.values()))
        x = np.asarray(model_input, dtype=np.float32)
        c, size = int(self.cfg["channels"]), spatial_shape(self.cfg)
        if x.ndim == len(size) + 1:
            x = x[None]
        if x.shape[1:] != (c, *size):
            what = "volume batch" if len(size) == 3 else "image batch"
            raise ValueError(f"expected a {what} of shape (N, {', '.join(map(str, (c, *size)))}), got {x.shape}")
        return torch.from_numpy(np.ascontiguousarray(x))

    def _passes(self, x: torch.Tensor, passes: int, mc: bool) -> tuple[torch.Tensor, ...]:
        """Class / segmentation probabilities (and alphas or None) of T passes, rows ordered pass-major."""
        leaves = tuple(self.encode(x))
        if mc:
            assert self.decode_mc is not None
            repeated = tuple(t.repeat(passes, *([1] * (t.dim() - 1))) for t in leaves)
            cls_logits, seg_logits = self.decode_mc(repeated)
        else:
            cls_logits, seg_logits = self.decode(leaves)
        cp, ca = _probs(cls_logits, self.cfg["cls_head"])
        sp, sa = _probs(seg_logits, self.cfg["seg_head"])
        return cp, sp, ca, sa  # type: ignore[return-value]

    def _windows(self, x: torch.Tensor, patch: tuple[int, ...], passes: int, mc: bool) -> tuple[torch.Tensor, ...]:
        """:meth:`_passes` over overlapping patches of a larger grid: segmentation blended with Gaussian weights,
        class probabilities (and alphas) the mean over the patches."""
        grid = tuple(x.shape[2:])
        weight = gaussian_weight(patch)
        seg_sum: torch.Tensor | None = None
        seg_alpha_sum: torch.Tensor | None = None
        norm = torch.zeros(grid)
        cls_parts: list[torch.Tensor] = []
        cls_alpha_parts: list[torch.Tensor] = []
        for corner in itertools.product(*(window_starts(n, p) for n, p in zip(grid, patch))):
            box = tuple(slice(c, c + p) for c, p in zip(corner, patch))
            rows = (slice(None), slice(None), *box)
            cp, sp, ca, sa = self._passes(x[rows].contiguous(), passes, mc)
            if seg_sum is None:
                seg_sum = torch.zeros(*sp.shape[:2], *grid)
                seg_alpha_sum = None if sa is None else torch.zeros(*sa.shape[:2], *grid)
            seg_sum[rows] += sp * weight
            if sa is not None and seg_alpha_sum is not None:
                seg_alpha_sum[rows] += sa * weight
            norm[box] += weight
            cls_parts.append(cp)
            if ca is not None:
                cls_alpha_parts.append(ca)
        assert seg_sum is not None
        cls_alpha = torch.stack(cls_alpha_parts).mean(0) if cls_alpha_parts else None
        seg_alpha = None if seg_alpha_sum is None else seg_alpha_sum / norm
        return torch.stack(cls_parts).mean(0), seg_sum / norm, cls_alpha, seg_alpha  # type: ignore[return-value]

    # no type hints: MLflow would read them as the input schema; the logged signature is the schema
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        params = params or {}
        cfg = self.cfg
        passes = int(params.get("mc_passes", cfg["mc_passes"]))
        seed = int(params.get("seed", -1))
        x = self._batch(model_input)
        mc = passes > 1
        if mc and self.decode_mc is None:
            raise ValueError("this model has no dropout layers: mc_passes must be 1")
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            if seed >= 0:
                torch.manual_seed(seed)
            b = x.shape[0]
            t = passes if mc else 1
            patch = tuple(int(v) for v in cfg["patch_size"]) if cfg.get("patch_size") else None
            if patch is None or tuple(x.shape[2:]) == patch:
                cp, sp, ca, sa = self._passes(x, passes, mc)
            else:
                cp, sp, ca, sa = self._windows(x, patch, passes, mc)

            def per_pass(v: torch.Tensor | None) -> torch.Tensor | None:
                return None if v is None else v.reshape(t, b, *v.shape[1:])

            method = cfg["method"] if mc else "evidential"
            if mc and method == "evidential":
                method = "both"
            return joint_outputs(per_pass(cp), per_pass(sp), per_pass(ca), per_pass(sa),  # type: ignore[arg-type,unused-ignore]
                                 mc=mc, method=method, boundary_band=int(cfg["boundary_band"]),
                                 no_lesion_class=cfg.get("no_lesion_class"), measure=cfg["uncertainty_measure"])


mlflow.models.set_model(JointModel())
