"""A volume model trained on patches, run over a whole volume grid with a sliding window.

A campaign with ``data.patch_size`` trains its 3D model on random patches of the ``data.volume_size`` grid
(:class:`medloop.trainers.dataset.JointDataset`, ``patch``); everything that predicts (validation, pool
scoring, evaluation, ``medloop predict``) runs it through :class:`SlidingWindow`, which takes the whole grid:
MONAI's ``sliding_window_inference`` over overlapping patches, the segmentation logits blended with Gaussian
weights (the patch centre counts most), the class logits and the embedding the mean over the volume's patches
(as :func:`medloop.trainers.uncertainty.volume.score_volume` does for its class probabilities).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from medloop.trainers.models.base import JointOutput

if TYPE_CHECKING:
    from medloop.trainers.uncertainty.mc import MCSamples

OVERLAP = 0.25


class SlidingWindow(nn.Module):
    """``patch_model`` (trained on ``roi_size`` patches) over any larger volume batch (B, C, D, H, W).

    An input of exactly ``roi_size`` goes straight through. :meth:`sample` draws MC-dropout passes over the
    grid (what :func:`medloop.trainers.uncertainty.mc.mc_sample` calls for this module): each patch's T passes
    in one call of the cached sampler, the T x Q probability maps blended."""

    def __init__(self, patch_model: nn.Module, roi_size: Sequence[int], *, overlap: float = OVERLAP,
                 sw_batch_size: int = 4) -> None:
        super().__init__()
        self.patch_model = patch_model
        self.roi_size = tuple(int(s) for s in roi_size)
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.default_loss = getattr(patch_model, "default_loss", "mtunet")
        self.default_heads = getattr(patch_model, "default_heads", ("softmax", "softmax"))

    def forward(self, x: torch.Tensor) -> JointOutput:
        if x.dim() != 5:
            raise ValueError(f"SlidingWindow takes a volume batch (B, C, D, H, W), got shape {tuple(x.shape)}")
        if tuple(x.shape[2:]) == self.roi_size:
            return self.patch_model(x)
        outs = [self._one(x[b:b + 1]) for b in range(x.shape[0])]
        return JointOutput(
            cls_logits=torch.cat([o.cls_logits for o in outs]),
            seg_logits=torch.cat([o.seg_logits for o in outs]),
            embedding=_joined([o.embedding for o in outs], torch.cat),
        )

    def _one(self, x: torch.Tensor) -> JointOutput:
        parts: list[JointOutput] = []

        def predictor(patch: torch.Tensor) -> torch.Tensor:
            out = self.patch_model(patch)
            parts.append(out)
            return out.seg_logits

        seg = self._blend(x, predictor)[None]
        cls = torch.cat([p.cls_logits for p in parts]).mean(0, keepdim=True)
        embedding = _joined([p.embedding for p in parts], lambda e: torch.cat(e).mean(0, keepdim=True))
        return JointOutput(cls_logits=cls, seg_logits=seg, embedding=embedding)

    @torch.no_grad()
    def sample(self, x: torch.Tensor, passes: int, *, cached: bool | str = True, cls_head: str = "softmax",
               seg_head: str = "softmax", stochastic: bool = True) -> MCSamples:
        """T passes over volume batch ``x`` (B, C, D, H, W): every patch sampled T times at once (the cached
        sampler: the patch's encoder once), MONAI blending the T x Q probability maps (and the Dirichlet
        parameters of an evidential head) with Gaussian weights; each pass's class probabilities (and
        alphas) are the mean over the volume's patches, the embedding the mean over patches and passes."""
        from medloop.trainers.uncertainty.mc import MCSamples, mc_sample

        if tuple(x.shape[2:]) == self.roi_size:  # one patch: the patch model's own sampler, as forward does
            return mc_sample(self.patch_model, x, passes, cached=cached,  # type: ignore[arg-type]
                             cls_head=cls_head, seg_head=seg_head, stochastic=stochastic)
        cls_p, seg_p, cls_a, seg_a, emb = [], [], [], [], []
        for b in range(x.shape[0]):
            parts: list[MCSamples] = []
            blended = self._blend(x[b:b + 1].float(), partial(self._patch_passes, parts, passes, cached=cached,
                                                              cls_head=cls_head, seg_head=seg_head,
                                                              stochastic=stochastic))
            q = parts[0].seg_probs.shape[2]
            seg_p.append(blended[:passes * q].reshape(passes, q, *blended.shape[1:]))  # channels: pass-major
            if parts[0].seg_alpha is not None:
                seg_a.append(blended[passes * q:].reshape(passes, q, *blended.shape[1:]))
            cls_p.append(torch.cat([p.cls_probs for p in parts], 1).mean(1))  # (T, K)
            if parts[0].cls_alpha is not None:
                cls_a.append(torch.cat([p.cls_alpha for p in parts if p.cls_alpha is not None], 1).mean(1))
            emb.append(_joined([p.embedding for p in parts], lambda e: torch.cat(e).mean(0)))
        return MCSamples(
            cls_probs=torch.stack(cls_p, 1), seg_probs=torch.stack(seg_p, 1),
            cls_alpha=torch.stack(cls_a, 1) if cls_a else None, seg_alpha=torch.stack(seg_a, 1) if seg_a else None,
            embedding=_joined(emb, torch.stack),
        )

    def _blend(self, x: torch.Tensor, predictor: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """MONAI's Gaussian-weighted sliding window of ``predictor`` over one volume (1, C, D, H, W)."""
        from monai.inferers import sliding_window_inference

        return torch.as_tensor(sliding_window_inference(x, self.roi_size, self.sw_batch_size, predictor,
                                                        overlap=self.overlap, mode="gaussian"))[0]

    def _patch_passes(self, parts: list[MCSamples], passes: int, patch: torch.Tensor, **options: object
                      ) -> torch.Tensor:
        """A batch of patches sampled T times (kept in ``parts``), as T x Q (+ T x Q alphas) maps to blend."""
        from medloop.trainers.uncertainty.mc import mc_sample

        s = mc_sample(self.patch_model, patch, passes, **options)  # type: ignore[arg-type]
        parts.append(s)
        maps = [s.seg_probs] + ([s.seg_alpha] if s.seg_alpha is not None else [])
        t, n = s.seg_probs.shape[:2]
        return torch.cat([m.permute(1, 0, 2, 3, 4, 5).reshape(n, t * m.shape[2], *m.shape[3:]) for m in maps], 1)


def _joined(parts: Sequence[torch.Tensor | None], join: Callable[[list[torch.Tensor]], torch.Tensor]
            ) -> torch.Tensor | None:
    """``join`` of the parts' embeddings, or None when any part has none (a model without an embedding)."""
    present = [p for p in parts if p is not None]
    return join(present) if present and len(present) == len(parts) else None


def windowed(model: nn.Module, patch_size: Sequence[int] | None) -> nn.Module:
    """``model`` as it predicts: through :class:`SlidingWindow` when it was trained on patches."""
    if patch_size is None or isinstance(model, SlidingWindow):
        return model
    return SlidingWindow(model, patch_size)
