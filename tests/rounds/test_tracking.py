"""MLflow contents of rounds (through MlflowClient): runs, nested runs, params without secrets,
per-epoch metrics, artifacts, the registered model and the champion alias.

Scoring is the deterministic stand-in of support.py; the checkpoint is a real (tiny) model, so the
export, the pyfunc logging and the registration are real (the model itself: test_mlflow_model.py).
Both rounds score the validation split identically, so round 2 does not improve validation and the
champion alias must stay on round 1.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient
from support import checkpoint_train_round, tiny_campaign, tiny_score_samples

from medloop.rounds.orchestrator import run_round
from medloop.tracking import safe_params


def test_rounds_in_mlflow_and_champion_alias(campaign, monkeypatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "tok-should-never-appear")

    extras = {"train_round": checkpoint_train_round([0.9, 0.1]), "score_samples": tiny_score_samples}
    outs = [run_round(campaign, extras=extras), run_round(campaign, extras=extras, force=True)]
    assert [o.status for o in outs] == ["done", "done"]
    client = MlflowClient(tracking_uri=campaign.tracking_uri, registry_uri=campaign.tracking_uri)
    exp = client.get_experiment_by_name(campaign.experiment_name)
    parents = client.search_runs([exp.experiment_id], "tags.`medloop.round` != ''")
    roots = sorted((r for r in parents if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in roots] == ["round-1", "round-2"]
    for root in roots:
        params = root.data.params
        assert params["model.name"] == campaign.model.name and len(params["data_manifest_hash"]) == 16
        assert all("tok-should-never-appear" not in v for v in params.values())
        for m in ("val_accuracy", "val_ece", "val_brier", "val_nll", "queue_size", "pseudo_precision_truth",
                  "val_seg_ece"):
            assert m in root.data.metrics, m
        assert {"reliability.png", "reliability_seg.png", "confusion_matrix.png"} <= {
            a.path for a in client.list_artifacts(root.info.run_id)}
        kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{root.info.run_id}'")
        by = {k.info.run_name: k for k in kids}
        assert set(by) == {"train", "score", "select"}
        hist = client.get_metric_history(by["train"].info.run_id, "val_accuracy")
        assert [m.step for m in hist] == [1, 2]
        artifacts = {a.path for a in client.list_artifacts(by["select"].info.run_id)}
        assert {"selection.csv", "uncertainty_hist.png"} <= artifacts
    name = f"medloop-{campaign.name}"
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    assert len(versions) == 2
    assert client.get_model_version_by_alias(name, "champion").tags["medloop.round"] == "1"  # round 2 did not improve
    from medloop.ledger import Ledger

    led = Ledger.open(campaign.ledger)
    campaign_id = led.get_meta("campaign_id")
    led.close()
    assert exp.tags["medloop.campaign_id"] == campaign_id
    assert client.get_registered_model(name).tags["medloop.campaign_id"] == campaign_id
    assert [v.tags["medloop.run_id"] for v in versions] == [r.info.run_id for r in roots]


def test_safe_params_mask_url_passwords(tmp_path) -> None:
    c = tiny_campaign(tmp_path, ledger_url="postgresql://medloop:hunter2@db/medloop")
    params = safe_params(c)
    assert "hunter2" not in params["ledger_url"] and "***" in params["ledger_url"]
    assert params["labeling.token_env"] == "LABEL_STUDIO_API_KEY"


def test_round_metrics_hold_pixel_calibration(campaign) -> None:
    """The report step's segmentation reliability bins count every non-ignored validation pixel; pseudo-masks
    are scored against the hidden truth."""
    from medloop.ledger import Ledger, Round
    from medloop.trainers.dataset import load_arrays

    extras = {"train_round": checkpoint_train_round([0.9, 0.1]), "score_samples": tiny_score_samples}
    assert run_round(campaign, extras=extras).status == "done"
    led = Ledger.open(campaign.ledger)
    with led.reading() as s:
        metrics = s.get(Round, 1).metrics
    val = load_arrays(campaign, led, "val")
    led.close()
    labelled = int((val.masks != 255).sum())
    bins = metrics["calibration"]["seg"]["bins"]
    assert len(bins) == 15 and sum(b["count"] for b in bins) == metrics["seg_pixels"] == min(labelled, 1_000_000)
    assert 0.0 <= metrics["seg_ece"] <= 1.0
    # the stand-in scorer predicts the hidden truth masks exactly: accepted pseudo-masks score Dice 1
    assert metrics["pseudo_mask_truth_n"] > 0 and metrics["pseudo_mask_dice_truth"] == 1.0
