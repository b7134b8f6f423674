"""The common interface of every joint classification + segmentation model.

Every model maps an image batch ``(B, C, H, W)`` (C = 1 or 3) to a :class:`JointOutput`
holding *raw* logits; a head (:mod:`medloop.trainers.heads`) turns logits into
probabilities (softmax) or Dirichlet parameters (evidential).

MC-dropout contract: ``forward(x) == decode(encode(x))``. ``encode`` holds the
deterministic prefix of the network (everything before the first dropout layer for
the configured dropout placement); ``decode`` holds the stochastic rest. The cached
MC sampler runs ``encode`` once and ``decode`` T times on a batch repeated T times.
``encode`` may return a tensor, or a tuple/list/dict of tensors (skip connections);
every tensor in it has the batch on dimension 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class JointOutput:
    """What a joint model returns.

    cls_logits: (B, K) class logits.
    seg_logits: (B, Q, H, W) segmentation logits, background included (Q >= 2).
    aux: optional extra outputs, e.g. ``deep_supervision`` (list of (B, Q, h, w) logits),
        ``prelim_seg_logits`` (UML's preliminary mask M), ``seg_uncertainty``.
    embedding: (B, D) pooled bottleneck features (for diversity sampling).
    """

    cls_logits: torch.Tensor
    seg_logits: torch.Tensor
    aux: dict[str, Any] = field(default_factory=dict)
    embedding: torch.Tensor | None = None


class JointModel(nn.Module):
    """Base class: subclasses implement :meth:`encode` and :meth:`decode`."""

    #: name of the composite loss in ``medloop.trainers.losses.LOSSES`` used by default
    default_loss: str = "mtunet"
    #: (classification head, segmentation head) the model trains and scores with when the campaign
    #: leaves ``model.cls_head`` / ``model.seg_head`` unset: "softmax" | "evidential"
    default_heads: tuple[str, str] = ("softmax", "softmax")

    def encode(self, x: torch.Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, features: Any) -> JointOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> JointOutput:
        return self.decode(self.encode(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
