"""Learning-rate schedule of a round: linear warm-up, then cosine decay to 2 % (closed form)."""

from __future__ import annotations

import math

import pytest

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
