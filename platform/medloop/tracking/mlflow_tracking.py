"""MLflow tracking of a round (contracts: ``docs/contracts.md`` -> MLflow).

An experiment per campaign; a parent run ``round-<n>`` (tag ``medloop.round``) with nested runs
``train`` (per-epoch metrics), ``score`` and ``select``; params = flattened config (no secrets) +
thresholds + model name + data-manifest hash; artifacts; the model logged with ``mlflow.pytorch``
and registered as ``medloop-<campaign>``; alias ``champion`` moves only when validation improves.

Logging a round is idempotent: runs of the same round left by an interrupted attempt are deleted
and logged again, and a model version already registered for the round is reused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medloop.config import Campaign, flatten

ROUND_TAG = "medloop.round"
STEP_TAG = "medloop.step"
SCORE_TAG = "medloop.val_score"
PARENT_TAG = "mlflow.parentRunId"
SECRET_KEYS = re.compile(r"(token|secret|password|api_key)", re.I)
_URL_PASSWORD = re.compile(r"(://[^:/@]+):[^@/]+@")


def model_name(campaign: Campaign) -> str:
    return f"medloop-{campaign.name}"


def safe_params(campaign: Campaign) -> dict[str, str]:
    """Flattened config with no secret values: passwords in URLs are masked, secret-looking keys
    keep only the *name* of where the secret lives (never a value)."""
    out: dict[str, str] = {}
    for key, value in flatten(campaign).items():
        text = "" if value is None else str(value)
        text = _URL_PASSWORD.sub(r"\1:***@", text)
        leaf = key.rsplit(".", 1)[-1]
        if SECRET_KEYS.search(leaf) and leaf not in ("token_env", "token_file"):
            text = "***"
        out[key] = text[:500]
    return out


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


class Tracker:
    """MLflow client bound to one campaign."""

    def __init__(self, campaign: Campaign) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.campaign = campaign
        self.uri = campaign.tracking_uri
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self.experiment_id = self._experiment()

    def _experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.campaign.experiment_name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        location = None
        if self.campaign.tracking.uri is None:
            self.campaign.artifact_root.mkdir(parents=True, exist_ok=True)
            location = self.campaign.artifact_root.as_uri()
        return self.client.create_experiment(self.campaign.experiment_name, artifact_location=location)

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
        """Log + register the round's model (reusing a version already registered for it)."""
        import mlflow

        from medloop.trainers.checkpoints import load_model

        if rec.checkpoint_path is None:
            raise ValueError(f"round {rec.round_id}: no checkpoint to log")
        name = model_name(self.campaign)
        existing = self._version_for_round(name, rec.round_id)
        if existing is None:
            model, _meta = load_model(rec.checkpoint_path)
            model.eval()
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pytorch.log_model(model, name="model", registered_model_name=name,
                                                pip_requirements=["torch"], serialization_format="pickle")
            existing = self._version_for_run(name, run_id) or str(getattr(info, "registered_model_version", ""))
            self.client.set_model_version_tag(name, existing, ROUND_TAG, str(rec.round_id))
            if rec.val_score is not None:
                self.client.set_model_version_tag(name, existing, SCORE_TAG, repr(float(rec.val_score)))
        self._maybe_promote(name, existing, rec.val_score)
        return existing

    def _version_for_round(self, name: str, round_id: int) -> str | None:
        try:
            versions = self.client.search_model_versions(f"name='{name}'")
        except Exception:  # noqa: BLE001 - no registered model yet
            return None
        for v in versions:
            if (v.tags or {}).get(ROUND_TAG) == str(round_id):
                return str(v.version)
        return None

    def _version_for_run(self, name: str, run_id: str) -> str | None:
        for v in self.client.search_model_versions(f"name='{name}'"):
            if v.run_id == run_id:
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
