"""Closed-form checks of the softmax / evidential heads (Ren, Zou et al., UML, MICCAI 2023, Eq. 1-2)."""

import math

import pytest
import torch

from medloop.trainers.heads import dirichlet_alpha, evidential_quantities, probs_from_logits, vacuity


def test_alpha_is_softplus_plus_one():
    logits = torch.tensor([[0.0, math.log(math.e - 1), -50.0]])
    alpha = dirichlet_alpha(logits)
    assert torch.allclose(alpha, torch.tensor([[1.0 + math.log(2.0), 2.0, 1.0]]), atol=1e-6)


def test_evidential_quantities_closed_form():
    alpha = torch.tensor([[3.0, 1.0, 2.0]])  # e = (2, 0, 1), S = 6
    q = evidential_quantities(alpha)
    assert torch.allclose(q.belief, torch.tensor([[2 / 6, 0.0, 1 / 6]]))
    assert torch.allclose(q.vacuity, torch.tensor([3 / 6]))
    assert torch.allclose(q.probs, torch.tensor([[0.5, 1 / 6, 1 / 3]]))
    assert torch.allclose(q.belief.sum(1) + q.vacuity, torch.ones(1))


def test_per_pixel_quantities():
    alpha = torch.ones(2, 2, 4, 5)  # no evidence anywhere: u = 1, b = 0
    alpha[0, 1, 0, 0] = 9.0  # S = 10 at that pixel
    q = evidential_quantities(alpha, dim=1)
    assert q.vacuity.shape == (2, 4, 5)
    assert q.vacuity[0, 0, 0] == pytest.approx(0.2)
    assert q.belief[0, 1, 0, 0] == pytest.approx(0.8)
    assert torch.all(q.vacuity[1] == 1.0)


def test_probs_from_logits_heads():
    logits = torch.randn(4, 3, 2, 2)
    assert torch.allclose(probs_from_logits(logits, "softmax"), torch.softmax(logits, 1))
    alpha = torch.nn.functional.softplus(logits) + 1
    assert torch.allclose(probs_from_logits(logits, "evidential"), alpha / alpha.sum(1, keepdim=True))
    assert torch.allclose(vacuity(alpha), 3 / alpha.sum(1))
    assert torch.allclose(vacuity(alpha.movedim(1, -1), dim=-1), 3 / alpha.sum(1))
    with pytest.raises(ValueError):
        probs_from_logits(logits, "sigmoid")
