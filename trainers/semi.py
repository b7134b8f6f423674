"""Semi-supervised training inside a round: the unlabeled pool gives a signal where the teacher is
confident AND certain (the UPS rule, Rizve et al., ICLR 2021; per case and per pixel as in
Cheng et al., MTTU-Net, IEEE TMI 2022, Eq. 19).

Two methods, selectable by name (``[training] semi``):

* ``fixmatch`` (Sohn et al., FixMatch, NeurIPS 2020; pixel-wise for masks as UniMatch, Yang et al.,
  CVPR 2023): the student itself, without gradients, predicts on the weak view of an unlabeled
  image; the kept predictions supervise the student on a strong view of the same image.
* ``mean_teacher`` (Tarvainen & Valpola, NeurIPS 2017): the teacher is an exponential moving
  average of the student's weights; its kept predictions on the weak view supervise the student
  on the strong view.

In both, the teacher runs ``teacher_passes`` MC-dropout passes (the cached sampler of
:mod:`medloop.trainers.uncertainty.mc`): a case gives a class target when its confidence is
>= ``tau_c`` and its std over passes <= ``tau_u``; a pixel gives a mask target when its
confidence is >= ``tau_c`` and its std <= ``pixel_tau_u``; everything else is ignored (label -1,
mask 255). The unlabeled loss is FixMatch's cross-entropy on the kept targets, averaged over every
case and pixel of the unlabeled batch (:func:`unlabeled_loss`). The unlabeled loss weight ramps up
as ``w * exp(-5 (1 - t)^2)`` over the first ``ramp_up`` of the round's epochs (Laine & Aila,
Temporal Ensembling, ICLR 2017). The campaign's geometric augmentations (``compute.augment``: for 2D
images a left-right flip and a small affine change by default) are part of the weak view, so image and
target stay aligned; the strong view adds only photometric changes and cut-out (:class:`StrongAugment`),
suited to ultrasound and dermoscopy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .dataset import IGNORE
from .models.base import JointOutput
from .uncertainty import measures as M
from .uncertainty.mc import mc_sample

SEMI_METHODS = ("none", "fixmatch", "mean_teacher")
NO_LABEL = -1


# ---- pure pieces ---------------------------------------------------------------------------------------


def ramp_weight(progress: float, ramp_up: float, weight: float) -> float:
    """Sigmoid ramp-up ``weight * exp(-5 (1 - min(1, progress / ramp_up))^2)`` (Laine & Aila 2017);
    ``progress`` is the fraction of the round's training done, in [0, 1]; ``ramp_up = 0``: no ramp."""
    if ramp_up <= 0.0:
        return float(weight)
    t = min(1.0, max(0.0, progress) / ramp_up)
    return float(weight * math.exp(-5.0 * (1.0 - t) ** 2))


@dataclass
class Targets:
    """Teacher targets for a batch: ``label`` (B,) int64 with -1 = not kept, ``mask`` (B, H, W)
    int64 with 255 = not kept, and the kept fractions (for the training log)."""

    label: torch.Tensor
    mask: torch.Tensor
    kept_cases: float
    kept_pixels: float


def align_distribution(cls_samples: torch.Tensor, prior: torch.Tensor, running: torch.Tensor) -> torch.Tensor:
    """Distribution alignment (Berthelot et al., ReMixMatch, ICLR 2020, Eq. 1): every pass's class
    probabilities ``cls_samples`` (T, B, K) scaled by ``prior / running`` (the labeled class ratio over the
    running mean of the teacher's predictions on unlabeled data, both (K,)) and renormalised, so that
    pseudo-targets follow the labeled class ratio instead of drifting to the majority class."""
    scaled = cls_samples * (prior.clamp_min(1e-6) / running.clamp_min(1e-6)).to(cls_samples)
    return scaled / scaled.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def ups_targets(
    cls_samples: torch.Tensor,
    seg_samples: torch.Tensor,
    *,
    tau_c: float,
    tau_u: float,
    pixel_tau_u: float,
) -> Targets:
    """UPS targets from T sampled predictions: ``cls_samples`` (T, B, K), ``seg_samples`` (T, B, Q, H, W).

    A case keeps its predicted class when ``confidence >= tau_c`` and ``std <= tau_u``; a pixel keeps
    its predicted class when its confidence >= ``tau_c`` and its std <= ``pixel_tau_u`` (std = the
    population std over passes of the mean-predicted class's probability; 0 when T = 1).
    """
    probs = M.mean_probs(cls_samples)
    conf, pred = probs.max(dim=1)
    std = M.predicted_class_std(cls_samples) if cls_samples.shape[0] > 1 else torch.zeros_like(conf)
    keep = (conf >= tau_c) & (std <= tau_u)
    seg_mean = M.mean_probs(seg_samples)
    pconf, pmask = seg_mean.max(dim=1)
    pstd = M.predicted_class_std(seg_samples) if seg_samples.shape[0] > 1 else torch.zeros_like(pconf)
    keep_px = (pconf >= tau_c) & (pstd <= pixel_tau_u)
    label = torch.where(keep, pred, torch.full_like(pred, NO_LABEL))
    mask = torch.where(keep_px, pmask, torch.full_like(pmask, IGNORE))
    return Targets(label.long(), mask.long(), float(keep.float().mean()), float(keep_px.float().mean()))


def unlabeled_loss(output: JointOutput, targets: Targets, *, cls_head: str, seg_head: str) -> torch.Tensor:
    """FixMatch's unlabeled loss, per case and per pixel (Sohn et al. 2020; UniMatch, Yang et al. 2023):
    cross-entropy of the student's prediction against the kept hard targets, averaged over ALL cases
    and ALL pixels of the unlabeled batch (not kept = 0), so the signal grows with the share the UPS
    rule keeps. Region losses (Dice) are not used: on a sparse set of kept pixels, mostly confident
    background early on, they push the student towards empty masks."""
    from .heads import probs_from_logits

    eps = 1e-6
    seg_logp = torch.log(probs_from_logits(output.seg_logits, seg_head).clamp_min(eps))
    keep_px = targets.mask != IGNORE
    seg_nll = F.nll_loss(seg_logp, targets.mask.clamp(0, seg_logp.shape[1] - 1), reduction="none")
    seg = (seg_nll * keep_px).sum() / keep_px.numel()
    cls_logp = torch.log(probs_from_logits(output.cls_logits, cls_head).clamp_min(eps))
    keep = targets.label != NO_LABEL
    cls_nll = F.nll_loss(cls_logp, targets.label.clamp_min(0), reduction="none")
    cls = (cls_nll * keep).sum() / max(1, keep.numel())
    return seg + cls


def split_output(output: JointOutput, n: int) -> tuple[JointOutput, JointOutput]:
    """Split a joint output of a concatenated batch into its first ``n`` rows and the rest."""

    def cut(value: Any, part: slice) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value[part]
        if isinstance(value, dict):
            return {k: cut(v, part) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(cut(v, part) for v in value)
        return value

    def part_of(part: slice) -> JointOutput:
        return JointOutput(**{f.name: cut(getattr(output, f.name), part) for f in fields(output)})

    return part_of(slice(0, n)), part_of(slice(n, None))


# ---- strong view ---------------------------------------------------------------------------------------


@dataclass
class StrongAugment:
    """Photometric strong view + cut-out on a batch (B, C, H, W) in [0, 1], or of volumes (B, C, D, H, W), each
    op with probability ``p``: contrast / brightness, gamma, multiplicative speckle-like noise, Gaussian blur
    (in the row / column plane, each slice of a volume alike), and one cut-out box (up to half of each side)
    filled with the image mean. Geometry is left to the weak view. A batch whose intensities are not in [0, 1]
    (MRI volumes, z-scored at ingest) gets no gamma and no clipping."""

    ops: Sequence[str] = ("intensity", "gamma", "speckle", "blur", "cutout")
    p: float = 0.8
    strength: float = 0.4

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = x.shape[0]
        dev = x.device
        ones = (1,) * (x.dim() - 1)  # per-case factors broadcast over channels and the spatial axes
        unit = bool(float(x.min()) >= 0.0 and float(x.max()) <= 1.0)

        def draw(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator).to(dev)

        def on() -> torch.Tensor:
            return (draw(b, *ones) < self.p).to(x.dtype)

        s = self.strength
        if "intensity" in self.ops:
            contrast = 1.0 + s * (2 * draw(b, *ones) - 1)
            bright = 0.5 * s * (2 * draw(b, *ones) - 1)
            mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
            x = x + on() * ((x - mean) * contrast + mean + bright - x)
        if "gamma" in self.ops:
            gamma = torch.exp(s * 1.5 * (2 * draw(b, *ones) - 1))
            switch = on()  # drawn either way: the later ops' draws stay those of a [0, 1] batch
            if unit:
                x = x + switch * (x.clamp(0, 1) ** gamma - x)
        if "speckle" in self.ops:
            sigma = 0.25 * draw(b, *ones)
            noise = torch.randn(x.shape, generator=generator).to(dev)
            x = x + on() * (x * sigma * noise)
        if "blur" in self.ops:
            x = self._blur(x, on(), draw(b))
        if "cutout" in self.ops:
            x = self._cutout(x, on(), draw(b, 2 * (x.dim() - 2)))
        return x.clamp(0.0, 1.0) if unit else x

    @staticmethod
    def _blur(x: torch.Tensor, on: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        radius = 3
        r = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        h, w = x.shape[-2:]
        for i in range(x.shape[0]):
            if on.flatten()[i] == 0:
                continue
            sigma = 0.3 + 1.2 * float(u[i])
            k = torch.exp(-(r**2) / (2 * sigma**2))
            k = k / k.sum()
            img = x[i].reshape(-1, 1, h, w)  # every channel (and slice) blurred alike
            img = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
            img = F.conv2d(F.pad(img, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))
            out[i] = img.reshape(x[i].shape)
        return out

    @staticmethod
    def _cutout(x: torch.Tensor, on: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One box per switched-on case: ``u`` holds, per spatial axis, the box's size and start draws (in [0, 1]):
        (rows, columns, row start, column start) for images, then (slices, slice start) for volumes."""
        out = x.clone()
        sides = x.shape[2:]
        for i in range(x.shape[0]):
            if on.flatten()[i] == 0:
                continue
            box: list[slice] = []
            h, w = sides[-2:]
            ch, cw = max(1, int(h * (0.1 + 0.4 * float(u[i, 0])))), max(1, int(w * (0.1 + 0.4 * float(u[i, 1]))))
            top, left = int((h - ch) * float(u[i, 2])), int((w - cw) * float(u[i, 3]))
            if len(sides) == 3:
                d = sides[0]
                cd = max(1, int(d * (0.1 + 0.4 * float(u[i, 4]))))
                front = int((d - cd) * float(u[i, 5]))
                box.append(slice(front, front + cd))
            box += [slice(top, top + ch), slice(left, left + cw)]
            out[i][(slice(None), *box)] = x[i].mean()
        return out


# ---- the training-time object ------------------------------------------------------------------------------


@dataclass
class SemiOptions:
    """What :class:`SemiTrainer` needs (filled from ``[training]`` and ``[selection]``)."""

    method: str = "none"
    weight: float = 1.0
    ramp_up: float = 0.3
    unlabeled_ratio: int = 1
    ema_decay: float = 0.99
    teacher_passes: int = 4
    strong_augment: tuple[str, ...] = ("intensity", "gamma", "speckle", "blur", "cutout")
    tau_c: float = 0.9
    tau_u: float = 0.05
    pixel_tau_u: float = 0.1
    distribution_alignment: bool = False
    class_prior: tuple[float, ...] | None = None  # the labeled class ratio (distribution alignment)
    alignment_momentum: float = 0.99  # running mean of the teacher's class probabilities on the pool
    min_val_dice: float = 0.0  # segmentation gate of the pixel targets (0: always on), see SemiTrainer.update_gate
    max_val_ece: float | None = None  # calibration gate of the class targets (None: always on)


class SemiTrainer:
    """Unlabeled batches, teacher targets, the strong view, the ramped weight and the EMA teacher.

    ``loader`` yields weakly augmented unlabeled batches (``image``); it is cycled without end.
    ``student`` is the plain module (not the DDP wrapper): the ``fixmatch`` teacher, and the start
    of the ``mean_teacher`` EMA (or ``teacher_state`` when resuming).
    """

    def __init__(
        self,
        options: SemiOptions,
        loader: DataLoader,
        student: nn.Module,
        *,
        cls_head: str,
        seg_head: str,
        epochs: int,
        seed: int = 0,
        teacher_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        if options.method not in SEMI_METHODS or options.method == "none":
            raise ValueError(f"semi-supervised method must be one of {SEMI_METHODS[1:]}, got {options.method!r}")
        self.options = options
        self.loader = loader
        self.cls_head, self.seg_head = cls_head, seg_head
        self.epochs = max(1, epochs)
        self.strong = StrongAugment(tuple(options.strong_augment))
        self.generator = torch.Generator().manual_seed(int(seed) + 7919)
        self._iter: Iterator[dict[str, torch.Tensor]] | None = None
        self._epoch, self._batch, self._batches = 0, 0, 1
        self.student = student
        self.running: torch.Tensor | None = None  # distribution alignment: the pool's mean prediction so far
        self.teacher: nn.Module = student
        self.pixels_on = options.min_val_dice <= 0.0  # the segmentation gate: closed until a validation passes it
        self.classes_on = options.max_val_ece is None  # the calibration gate, likewise
        if options.method == "mean_teacher":
            self.teacher = copy.deepcopy(student)
            if teacher_state is not None:
                self.teacher.load_state_dict(teacher_state)
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    # -- schedule
    def begin_epoch(self, epoch: int, batches: int) -> None:
        self._epoch, self._batch, self._batches = epoch, 0, max(1, batches)

    def weight(self) -> float:
        progress = (self._epoch + self._batch / self._batches) / self.epochs
        return ramp_weight(progress, self.options.ramp_up, self.options.weight)

    def update_gate(self, val_dice: float | None, val_ece: float | None = None) -> None:
        """The gates of the unlabeled targets, decided after each epoch's validation of the student.

        Pixels (``min_val_dice`` > 0): the pixel term counts only while the validation Dice is at least
        ``min_val_dice``, the gate that holds a round's pseudo-masks back (``selection.min_val_dice``; no Dice
        closes it). Classes (``max_val_ece`` set): the class term counts only while the validation ECE is at
        most ``max_val_ece``, the calibration gate of class pseudo-labels (``selection.max_ece``; Cheng et
        al., MTTU-Net, 2022: confident predictions of a poorly calibrated network are often wrong)."""
        from medloop.selection.gate import calibration_gate, segmentation_gate

        self.pixels_on = segmentation_gate(val_dice, self.options.min_val_dice)[0]
        if self.options.max_val_ece is not None:
            self.classes_on = calibration_gate(val_ece, self.options.max_val_ece)[0]

    # -- data
    def next_images(self, device: torch.device) -> torch.Tensor:
        if self._iter is None:
            self._iter = iter(self.loader)
        try:
            batch = next(self._iter)
        except StopIteration:
            self._iter = iter(self.loader)
            batch = next(self._iter)
        return batch["image"].to(device, non_blocking=True)

    @torch.no_grad()
    def targets(self, weak: torch.Tensor) -> Targets:
        o = self.options
        passes = max(1, o.teacher_passes)
        s = mc_sample(self.teacher, weak, passes, cached=True, cls_head=self.cls_head, seg_head=self.seg_head,
                      stochastic=passes > 1)
        cls = s.cls_probs.float()
        if o.distribution_alignment and o.class_prior is not None:
            batch_mean = M.mean_probs(cls).mean(dim=0)
            m = o.alignment_momentum
            self.running = batch_mean if self.running is None else m * self.running + (1.0 - m) * batch_mean
            cls = align_distribution(cls, torch.tensor(o.class_prior, dtype=cls.dtype, device=cls.device),
                                     self.running)
        out = ups_targets(cls, s.seg_probs.float(), tau_c=o.tau_c, tau_u=o.tau_u, pixel_tau_u=o.pixel_tau_u)
        if not self.pixels_on:
            out.mask, out.kept_pixels = torch.full_like(out.mask, IGNORE), 0.0
        if not self.classes_on:
            out.label, out.kept_cases = torch.full_like(out.label, NO_LABEL), 0.0
        return out

    def strong_view(self, weak: torch.Tensor) -> torch.Tensor:
        return self.strong(weak, self.generator)

    # -- after each optimiser step
    @torch.no_grad()
    def after_step(self) -> None:
        self._batch += 1
        if self.options.method != "mean_teacher":
            return
        d = self.options.ema_decay
        t_state, s_state = self.teacher.state_dict(), self.student.state_dict()
        for k, t in t_state.items():
            s = s_state[k]
            if t.is_floating_point():
                t.mul_(d).add_(s.detach().to(t.dtype), alpha=1.0 - d)
            else:
                t.copy_(s)

    def teacher_state(self) -> dict[str, torch.Tensor] | None:
        """The EMA teacher's weights for a checkpoint (None for fixmatch: the teacher is the student)."""
        if self.options.method != "mean_teacher":
            return None
        return {k: v.detach().cpu().clone() for k, v in self.teacher.state_dict().items()}


def unlabeled_batch_size(batch_size: int, ratio: int) -> int:
    return max(1, int(batch_size) * int(ratio))
