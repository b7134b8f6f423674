"""Which checkpoint ``--model`` means: ``champion`` (the registry alias), a registered version number, or a
checkpoint folder.

The campaign's registered model is ``medloop-<campaign>`` (:func:`model_name`); each version carries the
tag ``medloop.round`` = the round that trained it, and that round's checkpoint folder is in the ledger
(``rounds.checkpoint_path``, written by the train step), else ``<campaign>/checkpoints/round-<n>/``.
Everything here only reads: the MLflow store and the ledger must exist already.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medloop.config import Campaign

from .mlflow_tracking import ROUND_TAG, model_name

CHAMPION = "champion"
CHECKPOINT_TAG = "medloop.checkpoint"  # a version's checkpoint folder, where the round logging records it


class ModelNotFound(LookupError):
    """``--model`` names no usable model; the message says what exists."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``--model``: the checkpoint, and the registered version / round when it came from the registry."""

    checkpoint: str
    spec: str  # what the user gave
    registered_model: str | None = None
    version: str | None = None
    round_id: int | None = None

    def describe(self) -> str:
        if self.version is None:
            return f"checkpoint {self.checkpoint}"
        alias = " (champion)" if self.spec == CHAMPION else ""
        return f"{self.registered_model} version {self.version}{alias}, round {self.round_id}, {self.checkpoint}"


def _is_checkpoint(path: Path) -> bool:
    from medloop.trainers.checkpoints import META_FILE, MODEL_FILE

    return (path / META_FILE).is_file() and (path / MODEL_FILE).is_file()


def _client(campaign: Campaign):
    from mlflow.tracking import MlflowClient

    uri = campaign.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ModelNotFound(
            f"no model registry for campaign {campaign.name!r} (no MLflow store at {uri.removeprefix('sqlite:///')}); "
            "run a round first, or pass --model <checkpoint folder>"
        )
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(client, name: str) -> list[str]:
    try:
        found = client.search_model_versions(f"name='{name}'")
    except Exception:  # noqa: BLE001 - no registered model
        return []
    return sorted((str(v.version) for v in found), key=int)


def round_checkpoint(campaign: Campaign, round_id: int) -> str:
    """The checkpoint of round ``round_id``: the ledger's ``rounds.checkpoint_path``, else the round's folder."""
    from sqlalchemy import select

    from medloop.ledger.readonly import LedgerMissing, open_readonly
    from medloop.ledger.schema import Round

    recorded: str | None = None
    try:
        engine = open_readonly(campaign.ledger)
    except LedgerMissing:
        engine = None
    if engine is not None:
        try:
            with engine.connect() as conn:
                recorded = conn.execute(select(Round.checkpoint_path).where(Round.id == round_id)).scalar()
        finally:
            engine.dispose()
    if recorded and ("://" in recorded or Path(recorded).exists()):
        return str(recorded)
    folder = campaign.checkpoints / f"round-{round_id}"
    if _is_checkpoint(folder):
        return str(folder)
    where = f"the ledger records {recorded}, which is missing" if recorded else "the ledger records no checkpoint"
    raise ModelNotFound(f"round {round_id}: no checkpoint ({where}; no checkpoint in {folder})")


def resolve_model(campaign: Campaign, spec: str) -> ModelSource:
    """``champion`` | a version number | a checkpoint folder (or URI) -> :class:`ModelSource`."""
    spec = spec.strip()
    if spec != CHAMPION and not spec.isdigit():
        if "://" in spec and not spec.startswith("file://"):
            return ModelSource(checkpoint=spec, spec=spec)
        path = Path(spec.removeprefix("file://"))
        if _is_checkpoint(path):
            return ModelSource(checkpoint=str(path), spec=spec)
        problem = "no such folder" if not path.exists() else "not a medloop checkpoint (no meta.json + model.pt)"
        raise ModelNotFound(f"--model {spec}: {problem}; expected 'champion', a registered version number "
                            "or a checkpoint folder")
    client = _client(campaign)
    name = model_name(campaign)
    existing = _versions(client, name)
    listed = ", ".join(existing) if existing else "none (no round has registered a model yet)"
    try:
        if spec == CHAMPION:
            mv = client.get_model_version_by_alias(name, CHAMPION)
        elif spec in existing:
            mv = client.get_model_version(name, spec)
        else:
            raise ModelNotFound(f"--model {spec}: model {name} has no version {spec}; versions: {listed}")
    except ModelNotFound:
        raise
    except Exception:  # noqa: BLE001 - MLflow raises its own exception for a missing alias / model
        raise ModelNotFound(f"--model champion: model {name} has no champion alias; versions: {listed}") from None
    tags = mv.tags or {}
    tagged = tags.get(CHECKPOINT_TAG)
    if ROUND_TAG not in tags:
        if tagged and _is_checkpoint(Path(tagged)):
            return ModelSource(checkpoint=tagged, spec=spec, registered_model=name, version=str(mv.version))
        raise ModelNotFound(f"{name} version {mv.version} has no {ROUND_TAG} tag: cannot find its checkpoint")
    round_id = int(tags[ROUND_TAG])
    return ModelSource(checkpoint=round_checkpoint(campaign, round_id), spec=spec, registered_model=name,
                       version=str(mv.version), round_id=round_id)
