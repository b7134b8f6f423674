"""Learning-rate schedule of a round: linear warm-up, then cosine decay to 2 % (closed form)."""

from __future__ import annotations

import math

import pytest
import torch

from medloop.trainers.plain import LoopSettings, epoch_lr


def settings(**kw) -> LoopSettings:
    return LoopSettings(model={"name": "mtunet", "options": {}}, classes=["a", "b"], **kw)


def test_cosine_after_warmup_closed_form():
    s = settings(lr=1e-3, epochs=11, warmup_epochs=1, lr_schedule="cosine")
    assert epoch_lr(s, 0) == pytest.approx(0.5e-3)  # warm-up: (0 + 1) / (1 + 1)
    assert epoch_lr(s, 1) == pytest.approx(1e-3)  # cosine starts at the full rate
    # epoch 6 is halfway through the 9-epoch span 1..10: 2e-5 + (1e-3 - 2e-5) * 0.5 * (1 + cos(pi * 5/9))
    assert epoch_lr(s, 6) == pytest.approx(2e-5 + 0.98e-3 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))
    assert epoch_lr(s, 10) == pytest.approx(2e-5)  # last epoch: 2 % of lr
    rates = [epoch_lr(s, e) for e in range(1, 11)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_constant_schedule():
    s = settings(lr=3e-3, epochs=5, lr_schedule="constant")
    assert {epoch_lr(s, e) for e in range(5)} == {3e-3}


def test_early_stop_off_by_default_and_patience_counts():
    from medloop.trainers.plain import EarlyStop

    never = EarlyStop(None)
    for epoch, score in enumerate([0.5, 0.4, 0.3, 0.2, 0.1]):
        never.update(score, epoch + 1)
    assert not never.stop and never.best_epoch == 1
    two = EarlyStop(2)
    for epoch, score in enumerate([0.5, 0.4, 0.3]):
        two.update(score, epoch + 1)
    assert two.stop


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("keep", ["last", "best"])
def test_keep_last_or_best_epoch(tmp_path, keep):
    from medloop.ledger.store import Ledger
    from medloop.trainers.dataset import load_arrays
    from medloop.trainers.plain import train_plain
    from medloop.trainers.toydata import populate, toy_campaign

    campaign = toy_campaign(tmp_path, compute={"keep": keep, "patience": None, "epochs": 3})
    ledger = Ledger.open(campaign.ledger)
    populate(campaign, ledger, n_train=9, n_val=6)
    s = LoopSettings.from_campaign(campaign)
    assert s.keep == keep and s.patience is None
    res = train_plain(s, load_arrays(campaign, ledger, "train"), load_arrays(campaign, ledger, "val"))
    assert len(res.history) == 3  # no early stop
    if keep == "last":
        assert res.best_metrics["epoch"] == 3
        final = res.model.state_dict()
        assert all(torch.equal(final[k].cpu(), v) for k, v in res.best_state.items())
    else:
        best = max(res.history, key=lambda r: r["val_score"])
        assert res.best_metrics["epoch"] == best["epoch"]
