"""Ways out of a damaged campaign: put a round's checkpoint back from the MLflow registry, and tell a
round that was killed (``interrupted``) from one that is running (:func:`round_in_progress`).

``medloop round --restore-checkpoint`` uses :func:`restore_checkpoint`: the last finished round's
checkpoint folder (the next round warm-starts from it) is rebuilt from that round's registered
model version (tag ``medloop.round``): its ``model.pt`` and ``meta.json`` are read from the version's
``checkpoint`` artifact (a model logged by an older medloop with ``mlflow.pytorch`` gives its weights;
``meta.json`` then comes from the damaged folder). The new folder is written beside the old one,
checked by loading it, and swapped in; the damaged folder is kept as ``<name>.damaged-<time>``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from medloop.config import Campaign
from medloop.ledger.schema import Round, utcnow
from medloop.ledger.store import Ledger

ROUND_TAG = "medloop.round"


class RestoreError(RuntimeError):
    """The checkpoint cannot be restored from the registry; the message says why and what else to do."""


@dataclass
class Restored:
    round_id: int
    checkpoint: Path
    model: str
    version: str
    kept: Path | None  # where the damaged folder was moved

    def summary(self) -> str:
        kept = f"; the damaged folder is kept as {self.kept}" if self.kept is not None else ""
        return (f"restored round {self.round_id}'s checkpoint {self.checkpoint} from MLflow model "
                f"{self.model!r} version {self.version}{kept}")


def _last_done_round(ledger: Ledger) -> tuple[int, str]:
    with ledger.reading() as s:
        rnd = s.scalars(select(Round).where(Round.status == "done").order_by(Round.id.desc())).first()
        if rnd is None:
            raise RestoreError("no finished round yet: there is no checkpoint to restore")
        if not rnd.checkpoint_path:
            raise RestoreError(f"round {rnd.id} recorded no checkpoint")
        return rnd.id, rnd.checkpoint_path


def _registered_version(campaign: Campaign, round_id: int) -> tuple[Any, str, str]:
    """(MlflowClient, model name, version) of the version registered for ``round_id``."""
    from mlflow.tracking import MlflowClient

    from medloop.tracking.mlflow_tracking import model_name

    name = model_name(campaign)
    uri = campaign.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():  # never create one
        raise RestoreError(f"no MLflow store at {uri.removeprefix('sqlite:///')}, so no registered model to "
                           "restore from; use `medloop round --cold-start`")
    client = MlflowClient(tracking_uri=campaign.tracking_uri, registry_uri=campaign.tracking_uri)
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception as err:  # noqa: BLE001 - no store / no model: explained below
        raise RestoreError(f"the MLflow registry at {campaign.tracking_uri} cannot be read ({err}); "
                           "use `medloop round --cold-start`") from None
    mine = [v for v in versions if (v.tags or {}).get(ROUND_TAG) == str(round_id)]
    if not mine:
        raise RestoreError(
            f"MLflow model {name!r} has no version for round {round_id} (tracking.register_model off, or the "
            f"round's report never registered it); use `medloop round --cold-start` instead")
    return client, name, str(max(int(v.version) for v in mine))


def _checkpoint_files(model_dir: Path, damaged: Path, staging: Path) -> None:
    """``model.pt`` + ``meta.json`` from a downloaded model version into ``staging``."""
    from medloop.trainers.checkpoints import META_FILE, MODEL_FILE

    found = [p.parent for p in model_dir.rglob(MODEL_FILE) if (p.parent / META_FILE).is_file()]
    if found:
        for fname in (MODEL_FILE, META_FILE):
            shutil.copy2(found[0] / fname, staging / fname)
        return
    if (model_dir / "MLmodel").is_file() and "pytorch:" in (model_dir / "MLmodel").read_text():
        import mlflow.pytorch
        import torch

        if not (damaged / META_FILE).is_file():
            raise RestoreError(f"{damaged / META_FILE} is missing and the registered model has no checkpoint "
                               "metadata; use `medloop round --cold-start`")
        model = mlflow.pytorch.load_model(str(model_dir), map_location="cpu")
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, staging / MODEL_FILE)
        shutil.copy2(damaged / META_FILE, staging / META_FILE)
        return
    raise RestoreError(f"the registered model in {model_dir.name} holds no medloop checkpoint; "
                       "use `medloop round --cold-start`")


def restore_checkpoint(campaign: Campaign, ledger: Ledger) -> Restored:
    """Rebuild the last finished round's checkpoint folder from its registered MLflow model version."""
    import mlflow.artifacts

    from medloop.trainers.checkpoints import CheckpointError, load_state

    round_id, checkpoint = _last_done_round(ledger)
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        raise RestoreError(f"round {round_id}'s checkpoint {checkpoint} is remote; restore it there, "
                           "or use `medloop round --cold-start`")
    folder = Path(checkpoint.removeprefix("file://"))
    client, name, version = _registered_version(campaign, round_id)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.restoring-", dir=folder.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="medloop-restore-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                             dst_path=tmp, tracking_uri=client.tracking_uri))
            _checkpoint_files(local, folder, staging)
        try:
            load_state(staging)
        except CheckpointError as err:
            raise RestoreError(f"MLflow model {name!r} version {version} holds an unreadable checkpoint "
                               f"({err}); use `medloop round --cold-start`") from None
        kept = None
        if folder.exists():
            kept = folder.with_name(f"{folder.name}.damaged-{utcnow():%Y%m%dT%H%M%S}")
            folder.rename(kept)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Restored(round_id, folder, name, version, kept)


# ---- running or interrupted ---------------------------------------------------------------------


def round_in_progress(campaign: Campaign) -> bool:
    """Whether a live process holds the campaign's round lock now (a round, or a sync, is running).

    Asks the OS lock itself (``flock``, which dies with its process, also under kill -9) through a
    shared, non-blocking request on a read-only handle: nothing is created or written, so a command
    that only reads can ask. No lock file: no round ever ran, none runs."""
    import errno
    import fcntl
    import os

    try:
        fd = os.open(campaign.lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def shown_state(state: str, in_progress: bool) -> str:
    """What ``medloop status`` shows for a round or step state: ``running`` with no live holder of the
    round lock is ``interrupted`` (killed, machine lost, or its failure could not be recorded);
    ``medloop round`` resumes it."""
    return "interrupted" if state == "running" and not in_progress else state
