"""The common interface of every joint classification + segmentation model.

Every model maps an image batch ``(B, C, H, W)`` (C = 1 or 3) to a :class:`JointOutput`
holding *raw* logits; a head (:mod:`medloop.trainers.heads`) turns logits into
probabilities (softmax) or Dirichlet parameters (evidential).

MC-dropout contract: ``forward(x) == decode(encode(x))``. ``encode`` is the whole
encoder and holds no dropout module; ``decode`` holds every dropout module. A model may
also split ``decode`` where its first *active* dropout module sits:
``decode(f) == decode_rest(decode_prefix(f))``, with ``decode_prefix`` deterministic (by
default it returns ``f`` and ``decode_rest`` is ``decode``). The cached MC sampler runs
``decode_prefix(encode(x))`` once and ``decode_rest`` T times on a batch repeated T times,
so with dropout only on the last decoder level (placement "last_decoder") T passes cost
little more than one. ``encode`` and ``decode_prefix`` may return a tensor, or a
tuple/list/dict of tensors (skip connections); every tensor in it has the batch on
dimension 0.
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

    def decode_prefix(self, features: Any) -> Any:
        """The deterministic start of :meth:`decode` (before its first active dropout module)."""
        return features

    def decode_rest(self, state: Any) -> JointOutput:
        """The rest of :meth:`decode` from :meth:`decode_prefix`'s state."""
        return self.decode(state)

    def forward(self, x: torch.Tensor) -> JointOutput:
        return self.decode(self.encode(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
