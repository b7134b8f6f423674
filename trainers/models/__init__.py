"""Joint classification + segmentation models, selectable by name.

``build(name, **options)`` takes a model from :data:`MODELS`; see ``docs/models.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
    (16/4 for most; jrl 16/5 = channels 32..320; mttu and mttu3d 16/3 = bottleneck at H/8).
    Volume models (``mttu3d``, ``mtunet3d``: class attribute ``spatial_dims = 3``) take any
    ``in_channels`` >= 1 (one per sequence); 2D models 1 or 3."""
    if getattr(model_class(name), "spatial_dims", 2) == 3:  # volumes: any number of sequences (e.g. 4 MRI)
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    elif in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    sizes = {k: v for k, v in (("width", width), ("depth", depth)) if v is not None}
    return MODELS.build(
        name, in_channels=in_channels, num_classes=num_classes, dropout=dropout,
        dropout_placement=dropout_placement, seg_classes=seg_classes, **sizes, **options,
    )


def model_class(name: str) -> type[JointModel]:
    """The :class:`JointModel` subclass that model ``name`` builds (registered factories are
    annotated with it; a registered class is returned as is)."""
    import typing

    factory = MODELS.get(name)
    if isinstance(factory, type):
        return factory
    cls = typing.get_type_hints(factory).get("return")
    if not (isinstance(cls, type) and issubclass(cls, JointModel)):
        raise TypeError(f"model {name!r}: its factory must be annotated '-> <JointModel subclass>'")
    return cls


def model_defaults(name: str) -> dict[str, Any]:
    """The builder options of model ``name`` with their defaults (``depth``, ``image_size``, ...), the model
    class's own first: a subclass that only changes some defaults (``mttu3d``) inherits the rest."""
    import inspect

    out: dict[str, Any] = {}
    for cls in reversed(model_class(name).__mro__):
        init = cls.__dict__.get("__init__")
        if init is None or not issubclass(cls, JointModel):
            continue
        for param in inspect.signature(init).parameters.values():
            if param.kind is param.KEYWORD_ONLY:
                out[param.name] = param.default
    return out


def default_heads(name: str) -> tuple[str, str]:
    """(cls_head, seg_head) of model ``name`` when the campaign leaves them unset (class attribute
    ``default_heads``: evidential for ``uml``, softmax for the others)."""
    cls_head, seg_head = model_class(name).default_heads
    return str(cls_head), str(seg_head)


def resolve_heads(name: str, cls_head: str | None = None, seg_head: str | None = None) -> tuple[str, str]:
    """The heads a campaign trains and scores with: the ones it sets, else the model's defaults.

    The one place where ``model.cls_head`` / ``model.seg_head`` = None is resolved (training
    settings, checkpoint meta -> scoring, and the campaign's load-time cross-checks)."""
    if cls_head is not None and seg_head is not None:
        return cls_head, seg_head
    d_cls, d_seg = default_heads(name)
    return cls_head or d_cls, seg_head or d_seg


#: the 3D version a 2D model name trains as when the campaign's data are volumes
VOLUME_COUNTERPARTS = {"mtunet": "mtunet3d", "mttu": "mttu3d"}


def is_volume_model(name: str) -> bool:
    """True for a registered 3D (volume) model (class attribute ``spatial_dims = 3``)."""
    return getattr(model_class(name), "spatial_dims", 2) == 3


def volume_model(name: str) -> str:
    """The model a volume campaign trains: a 3D name as it is, ``mtunet`` / ``mttu`` as their 3D versions;
    a 2D-only model (``jrl``, ``tim_upa``, ``uml``) is a ``ValueError`` naming ``model.name`` and the choices."""
    if is_volume_model(name):
        return name
    if name in VOLUME_COUNTERPARTS:
        return VOLUME_COUNTERPARTS[name]
    choices = sorted({*VOLUME_COUNTERPARTS, *VOLUME_COUNTERPARTS.values()})
    raise ValueError(f'model.name = "{name}" has no 3D version; the campaign holds volumes: use one of '
                     f'{", ".join(choices)}')


# register the model families (import order = registration order)
from . import jrl, mttu, mttu3d, mtunet, mtunet3d, tim_upa, uml  # noqa: E402,F401

__all__ = ["MODELS", "build", "model_class", "model_defaults", "volume_model", "is_volume_model", "VOLUME_COUNTERPARTS",
           "default_heads", "resolve_heads", "JointModel", "JointOutput", "count_parameters"]
