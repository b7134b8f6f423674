"""MLflow tracking: an experiment per campaign, a run per round with nested step runs, the
registered model and its ``champion`` alias."""

from .identity import CampaignMismatch
from .mlflow_tracking import RoundRecord, Tracker, check_campaign, manifest_hash, model_name, safe_params

__all__ = ["CampaignMismatch", "RoundRecord", "Tracker", "check_campaign", "manifest_hash", "model_name",
           "safe_params"]
