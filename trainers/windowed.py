"""A volume model trained on patches, run over a whole volume grid with a sliding window.

A campaign with ``data.patch_size`` trains its 3D model on random patches of the ``data.volume_size`` grid
(:class:`medloop.trainers.dataset.JointDataset`, ``patch``); everything that predicts (validation, pool
scoring, evaluation, ``medloop predict``) runs it through :class:`SlidingWindow`, which takes the whole grid:
MONAI's ``sliding_window_inference`` over overlapping patches, the segmentation logits blended with Gaussian
weights (the patch centre counts most), the class logits and the embedding the mean over the volume's patches
(as :func:`medloop.trainers.uncertainty.volume.score_volume` does for its class probabilities).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medloop.trainers.models.base import JointOutput

OVERLAP = 0.25


class SlidingWindow(nn.Module):
    """``patch_model`` (trained on ``roi_size`` patches) over any larger volume batch (B, C, D, H, W).

    An input of exactly ``roi_size`` goes straight through. MC dropout works as for any model (its dropout
    modules are this module's), by full passes: the cached sampler's encode-once needs one patch grid."""

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
        embeddings = [o.embedding for o in outs if o.embedding is not None]
        return JointOutput(
            cls_logits=torch.cat([o.cls_logits for o in outs]),
            seg_logits=torch.cat([o.seg_logits for o in outs]),
            embedding=torch.cat(embeddings) if len(embeddings) == len(outs) else None,
        )

    def _one(self, x: torch.Tensor) -> JointOutput:
        from monai.inferers import sliding_window_inference

        parts: list[JointOutput] = []

        def predictor(patch: torch.Tensor) -> torch.Tensor:
            out = self.patch_model(patch)
            parts.append(out)
            return out.seg_logits

        seg = torch.as_tensor(sliding_window_inference(x, self.roi_size, self.sw_batch_size, predictor,
                                                       overlap=self.overlap, mode="gaussian"))
        cls = torch.cat([p.cls_logits for p in parts]).mean(0, keepdim=True)
        embeddings = [p.embedding for p in parts if p.embedding is not None]
        embedding = torch.cat(embeddings).mean(0, keepdim=True) if len(embeddings) == len(parts) else None
        return JointOutput(cls_logits=cls, seg_logits=seg, embedding=embedding)


def windowed(model: nn.Module, patch_size: Sequence[int] | None) -> nn.Module:
    """``model`` as it predicts: through :class:`SlidingWindow` when it was trained on patches."""
    if patch_size is None or isinstance(model, SlidingWindow):
        return model
    return SlidingWindow(model, patch_size)
