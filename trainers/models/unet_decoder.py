"""The decoder of the multi-task U-Nets (``mtunet``, ``mtunet3d``), split for cheap MC-dropout sampling.

The classifier reads the pooled bottleneck and the segmentation head the last decoder level. Where the
first *active* dropout sits decides what the cached MC sampler may run once
(:mod:`medloop.trainers.models.base`): the decoder levels before it and that level's up block. With
dropout only on the last level and in the classifier ("last_decoder" + "classifier") the repeated rest is
one dropout, the 1x1 segmentation head and the classifier MLP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from .base import JointModel, JointOutput


def is_active_dropout(module: nn.Module) -> bool:
    """A dropout module that drops now (train mode, p > 0); ``nn.Identity`` never."""
    return isinstance(module, _DropoutNd) and module.training and module.p > 0


class UNetDecoder(JointModel):
    """``decode``, ``decode_prefix`` and ``decode_rest`` of a U-Net with ``ups`` (level j: up block from the
    deeper features, skip ``feats[depth - j - 1]``), ``dec_drops``, ``bottleneck_drop``, ``seg_head``,
    ``classifier`` and ``depth``; ``pool`` maps the bottleneck to the classifier's embedding."""

    depth: int
    ups: nn.ModuleList
    dec_drops: nn.ModuleList
    bottleneck_drop: nn.Module
    seg_head: nn.Module
    classifier: nn.Module
    pool: Callable[[torch.Tensor], torch.Tensor]

    def decode(self, features: list[torch.Tensor]) -> JointOutput:
        feats = list(features)
        x = self.bottleneck_drop(feats[-1])
        return self._levels(feats, x, self.pool(x), start=0, up_done=False)

    def _levels(self, feats: list[torch.Tensor], x: torch.Tensor, emb: torch.Tensor, *, start: int,
                up_done: bool) -> JointOutput:
        """Decoder levels ``start`` .. depth - 1 from ``x`` (``up_done``: level ``start``'s up block has run),
        then the heads."""
        for j in range(start, self.depth):
            if not (up_done and j == start):
                x = self.ups[j](x, feats[self.depth - j - 1])
            x = self.dec_drops[j](x)
        return JointOutput(cls_logits=self.classifier(emb), seg_logits=self.seg_head(x), aux={}, embedding=emb)

    def _first_stochastic_level(self) -> int | None:
        """The first decoder level whose dropout is active now (the last level when none is); None when the
        bottleneck dropout is active (nothing after the encoder is deterministic)."""
        if is_active_dropout(self.bottleneck_drop):
            return None
        return next((j for j, m in enumerate(self.dec_drops) if is_active_dropout(m)), self.depth - 1)

    def decode_prefix(self, features: list[torch.Tensor]) -> dict[str, Any]:
        """The levels before the first active decoder dropout and that level's up block, run once."""
        feats = list(features)
        stop = self._first_stochastic_level()
        if stop is None:
            return {"feats": feats, "start": None}
        x = feats[-1]  # the bottleneck dropout is inactive (identity)
        for j in range(stop):
            x = self.dec_drops[j](self.ups[j](x, feats[self.depth - j - 1]))  # inactive dropouts: identity
        x = self.ups[stop](x, feats[self.depth - stop - 1])
        # the later levels' skips are feats[depth - j - 1] for j > stop: the first depth - stop - 1 entries
        return {"feats": feats[: self.depth - stop - 1], "x": x, "emb": self.pool(feats[-1]), "start": stop}

    def decode_rest(self, state: dict[str, Any]) -> JointOutput:
        if state["start"] is None:
            return self.decode(state["feats"])
        return self._levels(state["feats"], state["x"], state["emb"], start=state["start"], up_done=True)
