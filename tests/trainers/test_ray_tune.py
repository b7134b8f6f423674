"""Ray Tune smoke test: two tiny ASHA trials; write-back into the campaign file."""

from __future__ import annotations

import tomllib

import pytest
import ray
from ray import tune

from medloop.config import load_campaign
from medloop.ledger.store import Ledger
from medloop.trainers.plain import LoopSettings
from medloop.trainers.toydata import populate, toy_campaign
from medloop.trainers.tune import apply_config, default_space, tune_campaign, write_back


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_two_tiny_trials_and_write_back(tmp_path):
    campaign = toy_campaign(tmp_path)
    ledger = Ledger.open(campaign.ledger)
    populate(campaign, ledger, n_train=12, n_val=6)
    space = {"compute.lr": tune.grid_search([1e-2, 1e-4]), "model.width": 4, "model.dropout": 0.1,
             "model.options.loss_options.seg_weight": tune.uniform(0.5, 2.0)}
    best = tune_campaign(campaign, ledger, num_samples=1, max_epochs=2, space=space)
    assert best["trials"] == 2 and best["errors"] == 0
    assert best["config"]["compute.lr"] in (1e-2, 1e-4)
    assert 0.0 <= best["metrics"]["val_score"] <= 1.0 and best["metrics"]["epoch"] >= 1

    path = tmp_path / "campaign.toml"
    path.write_text('name = "toy"\n[compute]\nepochs = 3\n')
    write_back(path, best)
    data = tomllib.loads(path.read_text())
    assert data["compute"]["epochs"] == 3 and data["compute"]["lr"] == pytest.approx(best["config"]["compute.lr"])
    assert data["model"]["width"] == 4
    c = load_campaign(path)
    settings = LoopSettings.from_campaign(c)
    assert settings.loss_options["seg_weight"] == pytest.approx(best["config"]["model.options.loss_options.seg_weight"],
                                                               rel=1e-5)
    assert "loss_options" not in settings.model["options"]


def test_space_and_apply(tmp_path):
    campaign = toy_campaign(tmp_path)
    space = default_space(campaign)
    assert {"compute.lr", "model.dropout", "model.width", "model.options.loss_options.seg_weight",
            "model.options.loss_options.cls_weight"} <= set(space)
    s = apply_config(LoopSettings.from_campaign(campaign), {"compute.lr": 0.5, "model.width": 8, "model.dropout": 0.3})
    assert s.lr == 0.5 and s.model["options"]["width"] == 8 and s.model["options"]["dropout"] == 0.3
    with pytest.raises(ValueError, match="unknown search key"):
        apply_config(s, {"bogus": 1})
