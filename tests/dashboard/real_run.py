"""Make a campaign with two real rounds of the orchestrator: tiny synthetic data, real ingest,
Ray training and scoring on 1 CPU worker, the oracle answering the queue, MLflow tracking."""

from __future__ import annotations

from pathlib import Path

import tomli_w

from medloop.config import load_campaign


def run_two_rounds(folder: Path) -> Path:
    from medloop.data.ingest import ingest
    from medloop.rounds import run_round

    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "campaign.toml"
    cfg.write_text(tomli_w.dumps({
        "name": "dashreal",
        "root": str(folder.resolve()),
        "data": {"n_samples": 48, "image_size": 32, "unlabeled_fraction": 0.7, "seed": 1},
        "model": {"name": "mtunet", "width": 4, "depth": 2},
        "uncertainty": {"mc_passes": 2},
        # gates wide open so that a 1-epoch model still makes pseudo-labels for the selection charts
        "selection": {"budget": 4, "tau_c": 0.3, "tau_u": 1.0, "max_ece": 1.0, "min_val_dice": 0.0,
                      "audit_fraction": 0.2, "mask_gate": 10.0, "pixel_tau_u": 10.0},
        "labeling": {"enabled": False, "oracle": True},
        "compute": {"num_workers": 1, "epochs": 1, "batch_size": 8, "score_batch_size": 16},
    }))
    campaign = load_campaign(cfg)
    ingest(campaign, "synthetic")
    outs = [run_round(campaign), run_round(campaign, force=True)]
    statuses = [(o.status, o.round_id) for o in outs]
    if statuses != [("done", 1), ("done", 2)]:
        raise RuntimeError(f"the two rounds ended as {statuses}")
    return cfg
