"""``model.weights``: a round trained from scratch starts from the campaign's weights file (round 1,
``--cold-start``); a warm start wins over it; a missing or mismatched file is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medloop.ledger.store import Ledger
from medloop.trainers.checkpoints import build_model, load_state
from medloop.trainers.models.weights import WeightsMismatchError
from medloop.trainers.plain import LoopSettings
from medloop.trainers.toydata import populate, toy_campaign
from medloop.trainers.train import TrainError, initial_state, train_round

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def weights_file(path: Path, spec: dict, value: float = 0.01) -> dict[str, torch.Tensor]:
    model = build_model(spec)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.fill_(value * (1 + i % 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def campaign(tmp_path: Path):
    c = toy_campaign(tmp_path / "camp", model={"weights": str(tmp_path / "start.pt")},
                     compute={"num_workers": 0, "epochs": 1, "lr": 1e-12, "weight_decay": 0.0})
    ledger = Ledger.open(c.ledger)
    populate(c, ledger, n_train=8, n_val=4)
    return c, ledger


def test_a_round_from_scratch_starts_from_the_weights_file(campaign, tmp_path: Path) -> None:
    c, ledger = campaign
    settings = LoopSettings.from_campaign(c)
    expected = weights_file(tmp_path / "start.pt", settings.model)
    start = initial_state({"settings": settings}, None)
    assert start["source"] == "weights_file"
    assert all(torch.equal(start["weights"][k], v) for k, v in expected.items())
    res = train_round(c, ledger, round_id=1, resume=False)  # lr 1e-12: the trained weights stay the file's
    state, _, _ = load_state(res.checkpoint_path)
    params = dict(build_model(settings.model).named_parameters())
    assert all(torch.allclose(state[k], expected[k], atol=1e-6) for k in params)
    # a warm start (the previous round's checkpoint) wins over the file
    warm = initial_state({"settings": settings, "warm_start": res.checkpoint_path}, None)
    assert warm["source"] == "warm_start"


def test_missing_or_mismatched_weights_file_is_named(campaign, tmp_path: Path) -> None:
    c, ledger = campaign
    with pytest.raises(TrainError, match=r"model\.weights .*start\.pt: no such file"):
        train_round(c, ledger, round_id=1, resume=False)
    settings = LoopSettings.from_campaign(c)
    wider = {**settings.model, "options": {**settings.model["options"], "width": 8}}
    weights_file(tmp_path / "start.pt", wider)
    with pytest.raises(WeightsMismatchError, match="shape mismatches"):
        initial_state({"settings": settings}, None)
