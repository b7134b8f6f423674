"""Model checkpoints: a folder with ``model.pt`` (state dict), ``meta.json`` and, for training runs,
``train_state.pt`` (optimizer, epoch, early-stopping state, history).

``meta.json`` holds ``model`` ({"name", "options"} = the builder's keyword arguments), ``classes``,
``cls_head``, ``seg_head``, ``image_size``, ``channels``, ``global_step`` (optimisation steps across
rounds, for evidential KL annealing), ``epoch`` (epochs done in this run), ``metrics`` (validation
metrics of that epoch) and ``history``. A checkpoint may live on any pyarrow filesystem (a URI);
:func:`load_model` copies it to a local temporary folder first.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from medloop.config import Campaign

MODEL_FILE = "model.pt"
META_FILE = "meta.json"
STATE_FILE = "train_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing or incomplete."""


def model_spec(campaign: Campaign, **override: Any) -> dict[str, Any]:
    """The registry name and builder options of the campaign's model (``override`` wins).

    ``model.depth`` unset (None) is left out, so the builder uses the model's own depth."""
    m = campaign.model
    options: dict[str, Any] = {
        "in_channels": campaign.data.channels,
        "num_classes": len(campaign.data.classes),
        "width": m.width,
        **({"depth": m.depth} if m.depth is not None else {}),
        "dropout": m.dropout,
        "dropout_placement": tuple(m.dropout_placement),
        **m.options,
    }
    options.update(override)
    return {"name": m.name, "options": options}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from a spec (``{"name", "options"}``) with the models registry."""
    from medloop.trainers.models import build

    options = dict(spec["options"])
    if "dropout_placement" in options:
        options["dropout_placement"] = tuple(options["dropout_placement"])
    return build(spec["name"], **options)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = cast(nn.Module, model._orig_mod)  # torch.compile
        elif isinstance(model, nn.parallel.DistributedDataParallel) or (
            hasattr(model, "module") and isinstance(model.module, nn.Module)
        ):
            model = cast(nn.Module, model.module)
        else:
            return model


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    meta: dict[str, Any],
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write the model weights (unwrapped, on CPU), ``meta.json`` and optionally the training state."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    torch.save(state, folder / MODEL_FILE)
    (folder / META_FILE).write_text(json.dumps(_jsonable(meta), indent=1))
    if train_state is not None:
        torch.save(train_state, folder / STATE_FILE)
    return folder


def _local(path: str | Path) -> tuple[Path, str | None]:
    """A local folder for ``path``; a URI (s3://, gs://, ...) is copied to a temporary folder."""
    text = str(path)
    if "://" not in text or text.startswith("file://"):
        return Path(text.removeprefix("file://")), None
    import pyarrow.fs as pafs

    fs, fs_path = pafs.FileSystem.from_uri(text)
    tmp = tempfile.mkdtemp(prefix="medloop-ckpt-")
    pafs.copy_files(fs_path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return Path(tmp), tmp


def read_meta(checkpoint_path: str | Path) -> dict[str, Any]:
    folder, tmp = _local(checkpoint_path)
    try:
        meta_file = folder / META_FILE
        if not meta_file.exists():
            raise CheckpointError(f"{checkpoint_path}: not a medloop checkpoint (no {META_FILE})")
        return json.loads(meta_file.read_text())
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _named(checkpoint_path: str | Path, name: str) -> str:
    """The file ``name`` of a checkpoint, as the user knows it (the URI for a remote checkpoint)."""
    return f"{str(checkpoint_path).rstrip('/')}/{name}"


def _torch_load(checkpoint_path: str | Path, folder: Path, name: str, *, weights_only: bool) -> Any:
    """``torch.load`` of one checkpoint file; a truncated or corrupt file is a :class:`CheckpointError`
    naming it (torch's own message, e.g. a zip error, names no file)."""
    try:
        return torch.load(folder / name, map_location="cpu", weights_only=weights_only)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "the file ends early"
        size = (folder / name).stat().st_size if (folder / name).exists() else 0
        raise CheckpointError(
            f"{_named(checkpoint_path, name)}: unreadable checkpoint file ({size} bytes; "
            f"{type(err).__name__}: {first[:160]}); it is truncated or corrupt"
        ) from err


def load_state(checkpoint_path: str | Path, *, with_train_state: bool = False) -> tuple[dict, dict, dict | None]:
    """(model state dict, meta, training state or None) from a checkpoint folder or URI."""
    folder, tmp = _local(checkpoint_path)
    try:
        for name in (MODEL_FILE, META_FILE):
            if not (folder / name).exists():
                raise CheckpointError(f"{checkpoint_path}: incomplete checkpoint, {name} is missing")
        state = _torch_load(checkpoint_path, folder, MODEL_FILE, weights_only=True)
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise CheckpointError(f"{_named(checkpoint_path, META_FILE)}: unreadable checkpoint file "
                                  f"({type(err).__name__}: {err})") from err
        train_state = None
        if with_train_state and (folder / STATE_FILE).exists():
            train_state = _torch_load(checkpoint_path, folder, STATE_FILE, weights_only=False)
        return state, meta, train_state
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def load_model(checkpoint_path: str | Path, *, device: str | torch.device = "cpu",
               windowed: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (eval mode, on ``device``) and return it with its meta. A volume model
    trained on patches (meta ``patch_size``) comes inside :class:`medloop.trainers.windowed.SlidingWindow`, so it
    takes the whole ``volume_size`` grid (``windowed=False``: the patch model itself)."""
    from .windowed import windowed as window

    state, meta, _ = load_state(checkpoint_path)
    model = build_model(meta["model"])
    model.load_state_dict(state)
    if windowed:
        model = window(model, meta.get("patch_size"))
    return model.to(device).eval(), meta
