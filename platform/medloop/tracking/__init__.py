"""MLflow tracking: an experiment per campaign, a run per round with nested step runs, the
registered model and its ``champion`` alias."""

from .mlflow_tracking import RoundRecord, Tracker, manifest_hash, model_name, safe_params

__all__ = ["RoundRecord", "Tracker", "manifest_hash", "model_name", "safe_params"]
