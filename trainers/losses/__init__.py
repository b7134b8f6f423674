"""Losses: CE / weighted / focal, Dice, focal Tversky, boundary, texture, evidential,
Kendall weighting, and the composite joint losses registered by model name in ``LOSSES``."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from torch import nn

from medloop.registry import Registry

LOSSES: Registry = Registry("loss")


def build_loss(name: str, **options: Any) -> nn.Module:
    """Build the composite loss registered as ``name`` (e.g. "mtunet", "tim_upa", "uml")."""
    return LOSSES.build(name, **options)


from medloop.trainers.losses.composite import JointLoss, JRLLoss, MTTULoss, MTUNetLoss, TIMUPALoss  # noqa: E402

LOSSES.register("mtunet")(MTUNetLoss)
LOSSES.register("jrl")(JRLLoss)
LOSSES.register("mttu")(MTTULoss)
LOSSES.register("tim_upa")(TIMUPALoss)

# The UML composite loss lives in its own module (another area); register it when present.
if importlib.util.find_spec("medloop.trainers.losses.uml_loss") is not None:
    importlib.import_module("medloop.trainers.losses.uml_loss")

__all__ = ["LOSSES", "build_loss", "JointLoss", "MTUNetLoss", "JRLLoss", "MTTULoss", "TIMUPALoss"]
