"""MLflow tracking of a round (contracts: ``docs/contracts.md`` -> MLflow).

An experiment per campaign; a parent run ``round-<n>`` (tag ``medloop.round``) with nested runs
``train`` (per-epoch metrics), ``score`` and ``select``; params = flattened config (no secrets) +
thresholds + model name + data-manifest hash; artifacts; the model logged as an MLflow pyfunc "model
from code" over ``torch.export`` programs (:mod:`medloop.tracking.export`, no pickled medloop class)
and registered as ``medloop-<campaign>``; alias ``champion`` moves only when validation improves.

Logging a round is idempotent: runs of the same round left by an interrupted attempt are deleted
and logged again, and a model version already registered for the round is reused (versions are
created with their tags in one call, so a kill -9 cannot leave an untagged one; untagged versions of
older medloop releases are found through their run and adopted). The experiment, the registered
model and its versions carry the campaign id of the ledger (:mod:`medloop.tracking.identity`); a
store that belongs to another ledger stops the round with :class:`CampaignMismatch`. An SQLite
store left half-migrated by MLflow is repaired when opened (:mod:`medloop.tracking.store_repair`).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medloop.config import Campaign, flatten, mask_url_password
from medloop.ledger.store import Ledger, sqlite_file

from .identity import CAMPAIGN_TAG, CampaignMismatch, ledger_campaign_id, mismatch_message
from .store_repair import repair_sqlite_store

ROUND_TAG = "medloop.round"
STEP_TAG = "medloop.step"
SCORE_TAG = "medloop.val_score"
RUN_TAG = "medloop.run_id"  # on a model version: the round's current parent run
CHECKPOINT_TAG = "medloop.checkpoint"
PARENT_TAG = "mlflow.parentRunId"
CRASH_ENV = "MEDLOOP_TEST_CRASH_AT"  # test hook, as in medloop.rounds.orchestrator
SECRET_KEYS = re.compile(r"(token|secret|password|api_key)", re.I)

__all__ = ["CampaignMismatch", "RoundRecord", "Tracker", "check_campaign", "manifest_hash", "model_name",
           "safe_params"]


def model_name(campaign: Campaign) -> str:
    return f"medloop-{campaign.name}"


def safe_params(campaign: Campaign) -> dict[str, str]:
    """Flattened config with no secret values: passwords in URLs are masked, secret-looking keys
    keep only the *name* of where the secret lives (never a value)."""
    out: dict[str, str] = {}
    for key, value in flatten(campaign).items():
        text = "" if value is None else str(value)
        text = mask_url_password(text)
        leaf = key.rsplit(".", 1)[-1]
        if SECRET_KEYS.search(leaf) and leaf not in ("token_env", "token_file"):
            text = "***"
        out[key] = text[:500]
    return out


def requirements() -> list[str]:
    """What the served model needs: torch (the exact release that wrote the programs), numpy, mlflow."""
    import mlflow
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}",
            f"mlflow=={mlflow.__version__}"]


@dataclass
class RoundRecord:
    """Everything the report step hands to MLflow for one round."""

    round_id: int
    params: dict[str, Any]
    metrics: dict[str, float]  # final round metrics (val_*, pseudo_*, queue_size, ...)
    history: list[dict[str, Any]] = field(default_factory=list)  # per-epoch train metrics
    score_metrics: dict[str, float] = field(default_factory=dict)
    select_metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, list[Path]] = field(default_factory=dict)  # run ("round", "select", ...) -> files
    checkpoint_path: str | None = None
    val_score: float | None = None


def _ledger_rounds(ledger: Ledger) -> set[int]:
    from sqlalchemy import select

    from medloop.ledger.schema import Round

    with ledger.reading() as s:
        return set(s.scalars(select(Round.id)))


class Tracker:
    """MLflow client bound to one campaign.

    With ``ledger``, the experiment and registered model are checked against (or stamped with) the
    ledger's campaign id, and the model versions are tagged with it."""

    def __init__(self, campaign: Campaign, ledger: Ledger | None = None) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.campaign = campaign
        self.uri = campaign.tracking_uri
        db = sqlite_file(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
            repair_sqlite_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.campaign_id = None if ledger is None else ledger_campaign_id(ledger)
        self._known_rounds = None if ledger is None else _ledger_rounds(ledger)
        self.experiment_id = self._experiment()
        if self.campaign_id is not None:
            self._check_registered_model(model_name(campaign))

    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.campaign.experiment_name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            if self.campaign_id is not None:
                rounds = {int(r.data.tags[ROUND_TAG]) for r in self._parent_runs(exp.experiment_id)}
                self._check_owner(f"experiment {exp.name!r}", exp.tags or {}, rounds,
                                  lambda v: self.client.set_experiment_tag(exp.experiment_id, CAMPAIGN_TAG, v))
            return exp.experiment_id
        location = None
        if self.campaign.tracking.uri is None:
            self.campaign.artifact_root.mkdir(parents=True, exist_ok=True)
            location = self.campaign.artifact_root.as_uri()
        tags = {} if self.campaign_id is None else {CAMPAIGN_TAG: self.campaign_id}
        return self.client.create_experiment(self.campaign.experiment_name, artifact_location=location, tags=tags)

    def _parent_runs(self, experiment_id: str) -> list[Any]:
        runs = self.client.search_runs([experiment_id], f"tags.`{ROUND_TAG}` != ''", max_results=5000)
        return [r for r in runs if PARENT_TAG not in r.data.tags and r.data.tags.get(ROUND_TAG, "").isdigit()]

    # ---- campaign identity ------------------------------------------------------------------
    def _check_owner(self, what: str, tags: Mapping[str, str], rounds: set[int], stamp: Any) -> None:
        """Stop when ``what`` carries another campaign id, or (made before ids) holds rounds the ledger
        does not know; otherwise stamp it with the ledger's id."""
        assert self.campaign_id is not None and self._known_rounds is not None
        theirs = tags.get(CAMPAIGN_TAG)
        if theirs == self.campaign_id:
            return
        if theirs is not None:
            raise CampaignMismatch(mismatch_message(self.campaign, what, theirs, self.campaign_id))
        unknown = rounds - self._known_rounds
        if unknown:
            raise CampaignMismatch(mismatch_message(self.campaign, what, None, self.campaign_id, unknown))
        stamp(self.campaign_id)

    def _check_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            registered = self.client.get_registered_model(name)
        except MlflowException:
            return  # not registered yet: created with the id by the first version
        rounds = {int(t) for v in self._versions(name) if (t := (v.tags or {}).get(ROUND_TAG, "")).isdigit()}
        self._check_owner(f"registered model {name!r}", registered.tags or {}, rounds,
                          lambda v: self.client.set_registered_model_tag(name, CAMPAIGN_TAG, v))

    # ---- idempotency ----------------------------------------------------------------------
    def round_runs(self, round_id: int) -> list[Any]:
        return self.client.search_runs([self.experiment_id], f"tags.`{ROUND_TAG}` = '{round_id}'", max_results=100)

    def _clear_round(self, round_id: int) -> None:
        for run in self.round_runs(round_id):
            self.client.delete_run(run.info.run_id)

    # ---- logging ------------------------------------------------------------------------------
    def log_round(self, rec: RoundRecord, *, log_model: bool = True) -> str:
        """Log one round (parent + nested runs, model); returns the parent run id."""
        from mlflow.entities import Metric, Param

        self._clear_round(rec.round_id)
        c = self.client
        tags = {ROUND_TAG: str(rec.round_id), "mlflow.runName": f"round-{rec.round_id}"}
        if self.campaign_id is not None:
            tags[CAMPAIGN_TAG] = self.campaign_id
        parent = c.create_run(self.experiment_id, run_name=f"round-{rec.round_id}", tags=tags)
        pid = parent.info.run_id
        params = [Param(k, str(v)[:500]) for k, v in rec.params.items()]
        for i in range(0, len(params), 100):
            c.log_batch(pid, params=params[i : i + 100])
        c.log_batch(pid, metrics=_metrics(rec.metrics))
        for name in ("train", "score", "select"):
            child = c.create_run(self.experiment_id, run_name=name, tags={
                ROUND_TAG: str(rec.round_id), STEP_TAG: name, PARENT_TAG: pid, "mlflow.runName": name})
            cid = child.info.run_id
            if name == "train":
                hist: list[Metric] = []
                for i, epoch in enumerate(rec.history):
                    step = int(epoch.get("epoch", i))
                    hist += _metrics(epoch, step=step, skip=("epoch",))
                for j in range(0, len(hist), 500):
                    c.log_batch(cid, metrics=hist[j : j + 500])
            elif name == "score":
                c.log_batch(cid, metrics=_metrics(rec.score_metrics))
            else:
                c.log_batch(cid, metrics=_metrics(rec.select_metrics))
            for f in rec.artifacts.get(name, []):
                c.log_artifact(cid, str(f))
            c.set_terminated(cid, "FINISHED")
        for f in rec.artifacts.get("round", []):
            c.log_artifact(pid, str(f))
        if log_model and rec.checkpoint_path and self.campaign.tracking.register_model:
            version = self._log_model(pid, rec)
            c.set_tag(pid, "medloop.model_version", str(version))
        c.set_terminated(pid, "FINISHED")
        return pid

    def _log_model(self, run_id: str, rec: RoundRecord) -> str:
        """Register the round's model (reusing a version already registered for the round) and move
        the champion alias when it improves validation; returns the version."""
        if rec.checkpoint_path is None:
            raise ValueError(f"round {rec.round_id}: no checkpoint to log")
        name = model_name(self.campaign)
        existing = self._version_for_round(name, rec.round_id)
        if existing is None:
            existing = self._register(name, run_id, rec)
        else:
            for key, value in self._version_tags(run_id, rec).items():
                self.client.set_model_version_tag(name, existing, key, value)
        self._maybe_promote(name, existing, rec.val_score)
        return existing

    def _version_tags(self, run_id: str, rec: RoundRecord) -> dict[str, str]:
        tags = {ROUND_TAG: str(rec.round_id), RUN_TAG: run_id, CHECKPOINT_TAG: str(rec.checkpoint_path)[:5000]}
        if rec.val_score is not None:
            tags[SCORE_TAG] = repr(float(rec.val_score))
        if self.campaign_id is not None:
            tags[CAMPAIGN_TAG] = self.campaign_id
        return tags

    def _register(self, name: str, run_id: str, rec: RoundRecord) -> str:
        """Export the checkpoint, log the pyfunc model on the round's run and create its version, tags
        included, in one registry call."""
        import shutil

        import mlflow
        from mlflow.exceptions import MlflowException

        from medloop.trainers.checkpoints import META_FILE, MODEL_FILE

        from .export import PYFUNC_MODEL_FILE, export_checkpoint, input_example, signature

        assert rec.checkpoint_path is not None
        with tempfile.TemporaryDirectory(prefix="medloop-export-") as tmp:
            served = export_checkpoint(self.campaign, rec.checkpoint_path, Path(tmp) / "programs")
            artifacts = dict(served.artifacts)
            source = Path(rec.checkpoint_path)
            if source.is_dir():  # medloop's own checkpoint beside the programs, to restore it from the registry
                ckpt = Path(tmp) / "checkpoint"
                ckpt.mkdir()
                for fname in (MODEL_FILE, META_FILE):
                    shutil.copy2(source / fname, ckpt / fname)
                artifacts["checkpoint"] = str(ckpt)
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(PYFUNC_MODEL_FILE), artifacts=artifacts,
                    model_config=served.config, signature=signature(served.config),
                    input_example=input_example(served.config), pip_requirements=requirements())
        try:
            self.client.create_registered_model(
                name, tags={} if self.campaign_id is None else {CAMPAIGN_TAG: self.campaign_id},
                description=f"medloop campaign {self.campaign.name}: one version per round")
        except MlflowException as err:
            if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        mv = self.client.create_model_version(name, source=info.model_uri, run_id=run_id,
                                              tags=self._version_tags(run_id, rec), model_id=info.model_id)
        if os.environ.get(CRASH_ENV) == "report:after-register":  # test hook: kill -9 right after registering
            os.kill(os.getpid(), signal.SIGKILL)
        return str(mv.version)

    def _versions(self, name: str) -> list[Any]:
        try:
            return list(self.client.search_model_versions(f"name='{name}'"))
        except Exception:  # noqa: BLE001 - no registered model yet
            return []

    def _version_for_round(self, name: str, round_id: int) -> str | None:
        """The version registered for ``round_id`` of this campaign, if any (the newest when several)."""
        versions = self._versions(name)
        mine = [v for v in versions if (v.tags or {}).get(ROUND_TAG) == str(round_id)
                and (self.campaign_id is None or (v.tags or {}).get(CAMPAIGN_TAG) in (None, self.campaign_id))]
        if mine:
            return str(max(int(v.version) for v in mine))
        for v in sorted(versions, key=lambda v: -int(v.version)):  # untagged: an older medloop killed mid-way
            if ROUND_TAG in (v.tags or {}) or not v.run_id:
                continue
            try:
                run = self.client.get_run(v.run_id)
            except Exception:  # noqa: BLE001 - run purged
                continue
            if run.info.experiment_id == self.experiment_id and run.data.tags.get(ROUND_TAG) == str(round_id):
                return str(v.version)
        return None

    def champion(self) -> Any | None:
        try:
            return self.client.get_model_version_by_alias(model_name(self.campaign), "champion")
        except Exception:  # noqa: BLE001 - no alias yet
            return None

    def _maybe_promote(self, name: str, version: str, score: float | None) -> bool:
        """Move ``champion`` to ``version`` when its validation score beats the champion's."""
        current = self.champion()
        if current is not None and str(current.version) == str(version):
            return True
        if current is not None:
            tags = self.client.get_model_version(name, str(current.version)).tags or {}
            best = tags.get(SCORE_TAG)
            if score is None or (best is not None and score <= float(best) + 1e-12):
                return False
        self.client.set_registered_model_alias(name, "champion", version)
        return True


def check_campaign(campaign: Campaign, ledger: Ledger) -> None:
    """Stop with :class:`CampaignMismatch` before a round changes anything when the campaign's MLflow
    experiment or registered model belongs to another ledger (a campaign with no MLflow store yet passes)."""
    db = sqlite_file(campaign.tracking_uri)
    if db is not None and not db.is_file():
        ledger_campaign_id(ledger)
        return
    Tracker(campaign, ledger=ledger)


def _metrics(values: Mapping[str, Any], *, step: int = 0, skip: tuple[str, ...] = ()) -> list[Any]:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    out = []
    for k, v in values.items():
        if k in skip or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if v != v or v in (float("inf"), float("-inf")):
            continue
        out.append(Metric(_metric_key(k), float(v), now, step))
    return out


def _metric_key(k: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", k)


def manifest_hash(rows: list[tuple[str, str, str]]) -> str:
    """sha256 over sorted (uid, split, content hash) rows: the data the round saw."""
    h = hashlib.sha256()
    for row in sorted(rows):
        h.update("|".join(row).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]
