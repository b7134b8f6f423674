"""Joint classification + segmentation models, selectable by name.

``build(name, **options)`` takes a model from :data:`MODELS`; see ``docs/models.md``.
"""

from __future__ import annotations

from typing import Any, Iterable

from medloop.registry import Registry

from .base import JointModel, JointOutput, count_parameters

MODELS: Registry = Registry("model")


def build(
    name: str,
    *,
    in_channels: int = 1,
    num_classes: int = 3,
    width: int | None = None,
    depth: int | None = None,
    dropout: float = 0.2,
    dropout_placement: str | Iterable[str] | None = ("decoder", "classifier"),
    seg_classes: int = 2,
    **options: Any,
) -> JointModel:
    """Build model ``name``; ``width``/``depth`` None mean the model's own default size
    (16/4 for most; jrl 16/5 = channels 32..320; mttu 16/3 = bottleneck at H/8)."""
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    sizes = {k: v for k, v in (("width", width), ("depth", depth)) if v is not None}
    return MODELS.build(
        name, in_channels=in_channels, num_classes=num_classes, dropout=dropout,
        dropout_placement=dropout_placement, seg_classes=seg_classes, **sizes, **options,
    )


# register the model families (import order = registration order)
from . import jrl, mttu, mtunet, tim_upa, uml  # noqa: E402,F401

__all__ = ["MODELS", "build", "JointModel", "JointOutput", "count_parameters"]
