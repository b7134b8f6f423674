"""Loading an optional local weights file into a model, with a clear error on mismatch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class WeightsMismatchError(ValueError):
    """The weights file does not fit the model (missing/unexpected keys or wrong shapes)."""


def _state_dict_of(obj: object) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsMismatchError("weights file holds no state dict (name -> tensor)")
    return obj


def load_weights(model: nn.Module, path: str | Path, *, prefix: str = "", strict: bool = True) -> list[str]:
    """Load ``path`` (a ``torch.save``d state dict, optionally under "state_dict"/"model") into
    ``model`` (keys under ``prefix``, e.g. "encoder." for an encoder-only file).

    Shape mismatches and unknown keys always raise :class:`WeightsMismatchError`; missing keys
    raise when ``strict``. Returns the names loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    loaded = _state_dict_of(torch.load(path, map_location="cpu", weights_only=True))
    own = model.state_dict()
    theirs = {prefix + k: v for k, v in loaded.items()}
    unexpected = sorted(k for k in theirs if k not in own)
    wrong = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in theirs.items() if k in own and own[k].shape != v.shape
    )
    scope = [k for k in own if k.startswith(prefix)]
    missing = sorted(k for k in scope if k not in theirs) if strict else []
    if unexpected or wrong or missing:
        parts = []
        for title, items in (("unexpected keys", unexpected), ("shape mismatches", wrong), ("missing keys", missing)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
                parts.append(f"{title}: {shown}")
        raise WeightsMismatchError(
            f"weights file {path} does not match {type(model).__name__} "
            f"(check encoder/width/depth/in_channels): " + "; ".join(parts)
        )
    model.load_state_dict(theirs, strict=False)
    return sorted(theirs)
