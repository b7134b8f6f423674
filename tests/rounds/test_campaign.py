"""A whole 2-round campaign on tiny synthetic data with real Ray training and scoring; the MLflow
contents are checked through MlflowClient."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from support import ingest_synthetic, tiny_campaign

from medloop.ledger import AnnotationTask, Label, Ledger, Round, RoundStep
from medloop.rounds.orchestrator import run_round


def real_campaign(root: Path):
    return tiny_campaign(
        root,
        model={"name": "mtunet", "width": 4, "depth": 2},
        uncertainty={"mc_passes": 2},
        compute={"num_workers": 1, "epochs": 1, "batch_size": 8, "score_batch_size": 16},
        selection={"max_ece": 1.0, "tau_c": 0.0, "tau_u": 10.0, "mask_gate": 10.0, "pixel_tau_u": 10.0},
    )


@pytest.mark.slow  # real Ray training + MC scoring, 2 rounds: ~4-5 min on 2 shared CPU cores
def test_two_round_campaign_with_mlflow(tmp_path: Path) -> None:
    c = real_campaign(tmp_path / "camp")
    ingest_synthetic(c)
    outs = [run_round(c), run_round(c, force=True)]
    assert [o.status for o in outs] == ["done", "done"] and [o.round_id for o in outs] == [1, 2]

    led = Ledger.open(c.ledger)
    with led.reading() as s:
        rounds = s.query(Round).order_by(Round.id).all()
        assert all(r.status == "done" and r.mlflow_run_id and r.checkpoint_path for r in rounds)
        for key in ("accuracy", "ece", "adaptive_ece", "brier", "nll", "calibration", "risk_coverage"):
            assert key in rounds[1].metrics, key
        assert s.query(RoundStep).filter(RoundStep.state != "done").count() == 0
        assert s.query(AnnotationTask).filter(AnnotationTask.state == "completed").count() > 0
        assert s.query(Label).filter(Label.author == "oracle").count() > 0
        run_ids = [r.mlflow_run_id for r in rounds]
    led.close()

    client = MlflowClient(tracking_uri=c.tracking_uri, registry_uri=c.tracking_uri)
    exp = client.get_experiment_by_name(c.experiment_name)
    assert exp is not None
    for n, rid in enumerate(run_ids, start=1):
        parent = client.get_run(rid)
        assert parent.info.run_name == f"round-{n}" and parent.data.tags["medloop.round"] == str(n)
        assert parent.data.params["model.name"] == "mtunet" and "data_manifest_hash" in parent.data.params
        assert "threshold.tau_c" in parent.data.params
        for m in ("val_accuracy", "val_ece", "val_brier", "val_nll", "queue_size"):
            assert m in parent.data.metrics, m
        arts = {a.path for a in client.list_artifacts(rid)}
        assert {"reliability.png", "confusion_matrix.png"} <= arts
        children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{rid}'")
        by_name = {r.info.run_name: r for r in children}
        assert set(by_name) == {"train", "score", "select"}
        hist = client.get_metric_history(by_name["train"].info.run_id, "loss") or \
            client.get_metric_history(by_name["train"].info.run_id, "train_loss")
        assert hist, by_name["train"].data.metrics
        sel_arts = {a.path for a in client.list_artifacts(by_name["select"].info.run_id)}
        assert {"selection.csv", "uncertainty_hist.png"} <= sel_arts
    name = f"medloop-{c.name}"
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 2
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version in {v.version for v in versions}
