"""Ray Train: 2 CPU workers (DDP, gloo) learn the toy data; checkpoints, resume, warm start, pseudo-labels."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch

from medloop.data.imagestore import ImageStore
from medloop.ledger.store import Ledger, add_pseudo_label
from medloop.trainers.checkpoints import load_model, load_state
from medloop.trainers.dataset import IGNORE, load_arrays
from medloop.trainers.toydata import populate, toy_campaign, toy_sample
from medloop.trainers.train import initial_state, train_round


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def campaign_ledger(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    campaign = toy_campaign(folder)
    ledger = Ledger.open(campaign.ledger)
    populate(campaign, ledger, n_train=48, n_val=24)
    return campaign, ledger


@pytest.fixture(scope="module")
def first_run(campaign_ledger):
    """Round 1 stopped after 2 epochs, then continued to 5 (resume from the latest checkpoint)."""
    campaign, ledger = campaign_ledger
    part = train_round(campaign, ledger, round_id=1, epochs=2, resume=False)
    full = train_round(campaign, ledger, round_id=1, epochs=5)
    return part, full


def test_two_workers_learn(first_run):
    _, full = first_run
    best = full.best_metrics
    assert best["val_accuracy"] > 0.6, full.history  # 3 balanced classes: chance = 0.33
    assert best["val_dice"] > 0.5, full.history
    for key in ("val_iou", "val_f1", "val_auc", "val_ece", "val_brier", "val_nll"):
        assert key in best and np.isfinite(best[key])
    assert full.model_version == "round-1"
    model, meta = load_model(full.checkpoint_path)
    assert meta["epoch"] == best["epoch"] and meta["classes"] == ["normal", "benign", "malignant"]
    assert model(torch.zeros(2, 1, 32, 32)).cls_logits.shape == (2, 3)


def test_resume_continues_epochs_and_steps(first_run):
    part, full = first_run
    assert [h["epoch"] for h in part.history] == [1, 2]
    assert [h["epoch"] for h in full.history] == [1, 2, 3, 4, 5]
    # the first two epochs are the stopped run's, not trained again
    assert full.history[:2] == part.history
    steps = [h["global_step"] for h in full.history]
    per_epoch = steps[0]
    assert per_epoch > 0 and steps == [per_epoch * (i + 1) for i in range(5)]
    assert full.global_step == part.global_step + 3 * per_epoch


def test_warm_start_carries_weights_and_step(campaign_ledger, first_run):
    campaign, ledger = campaign_ledger
    _, full = first_run
    state, meta, _ = load_state(full.checkpoint_path)
    start = initial_state({"warm_start": full.checkpoint_path}, None)
    assert start["source"] == "warm_start" and start["global_step"] == meta["global_step"]
    assert all(torch.equal(start["weights"][k], v) for k, v in state.items())
    r2 = train_round(campaign, ledger, round_id=2, warm_start=full.checkpoint_path, epochs=1, resume=False)
    expected_fp = float(sum(v.double().abs().sum() for v in state.values() if v.is_floating_point()))
    assert r2.extra["init_source"] == "warm_start"
    assert r2.extra["init_fingerprint"] == pytest.approx(expected_fp, rel=1e-9)
    assert r2.extra["start_global_step"] == meta["global_step"]
    assert r2.global_step > meta["global_step"]
    # warm-started: already good after one epoch
    assert r2.history[0]["val_dice"] > 0.5


def test_pseudo_labels_with_ignore_masks_enter_training(tmp_path):
    campaign = toy_campaign(tmp_path)
    ledger = Ledger.open(campaign.ledger)
    ids = populate(campaign, ledger, n_train=3, n_val=3, n_pool=3)
    store = ImageStore(campaign.store)
    _, mask = toy_sample(np.random.default_rng(1), 1, 32)
    ignore = np.zeros((32, 32), bool)
    ignore[:8] = True
    with ledger.transaction() as s:
        pool = ids["pool"]
        m = store.put_mask("pseudo/a", mask)
        ig = store.put_array("ignore/a", ignore)
        add_pseudo_label(s, pool[0], class_name="benign", mask_path=m, ignore_path=ig, round_id=1,
                         selector="ups", thresholds={"tau_c": 0.9})
        add_pseudo_label(s, pool[1], class_name="malignant", mask_path=None, ignore_path=None, round_id=1,
                         selector="ups", thresholds={})
    train = load_arrays(campaign, ledger, "train")
    assert len(train) == 5 and train.kinds.count("pseudo") == 2
    i = list(train.sample_ids).index(pool[0])
    assert (train.masks[i][:8] == IGNORE).all()
    assert np.array_equal(train.masks[i][8:], mask[8:])
    assert train.labels[i] == 1
    j = list(train.sample_ids).index(pool[1])
    assert (train.masks[j] == IGNORE).all() and train.labels[j] == 2
    assert pool[2] not in train.sample_ids  # no label: not trained on
    val = load_arrays(campaign, ledger, "val")
    assert len(val) == 3 and set(val.kinds) == {"human"}


def test_cpus_per_worker_shares_the_cluster_between_workers():
    from medloop.trainers.train import cpus_per_worker

    assert cpus_per_worker(None, 2.0, 1) == 2  # one worker on this 2-core machine gets both cores
    assert cpus_per_worker(None, 2.0, 2) == 1
    assert cpus_per_worker(None, 16.0, 3) == 5
    assert cpus_per_worker(None, 1.0, 4) == 1  # never below one CPU
    assert cpus_per_worker(3, 16.0, 2) == 3  # compute.cpus_per_worker wins
