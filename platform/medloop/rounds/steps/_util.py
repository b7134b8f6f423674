"""Small helpers shared by the steps."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

from medloop.data.imagestore import ImageStore

from ..context import StepContext


def store_of(ctx: StepContext) -> ImageStore:
    return ImageStore(ctx.campaign.store)


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy of a dataclass / dict / list of plain values (other values become strings)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = asdict(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return jsonable(obj.item())
        if isinstance(obj, np.ndarray):
            return jsonable(obj.tolist())
    except ImportError:  # pragma: no cover
        pass
    return str(obj)
