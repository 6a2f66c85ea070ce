"""Tests for sp2dpo.train.losses: every registered loss, the per-pair beta, and Prop. 1 of the paper."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from sp2dpo.core import config
from sp2dpo.train import losses

CFG = types.SimpleNamespace(label_smoothing=0.1, margin=0.5)


def _inputs(n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randn(n, generator=g, dtype=torch.float64) * 10
    rejected = torch.randn(n, generator=g, dtype=torch.float64) * 10
    beta = torch.rand(n, generator=g, dtype=torch.float64) * 0.27 + 0.03
    lengths = torch.randint(1, 50, (2, n), generator=g).float()
    return chosen, rejected, beta, lengths


def test_registry_matches_config_literal():
    assert tuple(losses.LOSSES) == config.LOSS_TYPES
    with pytest.raises(ValueError, match="choose one of"):
        losses.get("nope")


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_every_loss_is_per_pair_fp32_and_finite(name):
    chosen, rejected, beta, (lw, ll) = _inputs()
    fn = losses.get(name)
    out = fn(chosen, rejected, beta, CFG, chosen_lengths=lw, rejected_lengths=ll)
    assert out.shape == (5,) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_per_pair_beta_reaches_only_its_pair(name):
    """Perturbing beta_i changes pair i's loss term and no other."""
    chosen, rejected, beta, (lw, ll) = _inputs()
    fn = losses.get(name)
    base = fn(chosen, rejected, beta, CFG, chosen_lengths=lw, rejected_lengths=ll)
    bumped = beta.clone()
    bumped[2] += 0.05
    out = fn(chosen, rejected, bumped, CFG, chosen_lengths=lw, rejected_lengths=ll)
    changed = (out - base).abs() > 1e-7
    assert changed.tolist() == [False, False, True, False, False]


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_constant_beta_tensor_equals_scalar_broadcast(name):
    chosen, rejected, _, (lw, ll) = _inputs()
    fn = losses.get(name)
    a = fn(chosen, rejected, torch.full((5,), 0.1), CFG, chosen_lengths=lw, rejected_lengths=ll)
    b = fn(chosen, rejected, torch.tensor(0.1), CFG, chosen_lengths=lw, rejected_lengths=ll)
    torch.testing.assert_close(a, b)


def test_sigmoid_closed_form_and_analytic_gradient():
    """loss = -log sigmoid(beta_i Delta_i); d loss / d Delta_i = -beta_i sigmoid(-beta_i Delta_i) (eq. 8)."""
    chosen, rejected, beta, _ = _inputs()
    chosen = chosen.float().requires_grad_(True)
    out = losses.sigmoid(chosen, rejected.float(), beta.float(), None)
    delta = (chosen - rejected.float()).detach()
    expected = torch.log1p(torch.exp(-beta.float() * delta))
    torch.testing.assert_close(out.detach(), expected, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    torch.testing.assert_close(chosen.grad, -beta.float() * torch.sigmoid(-beta.float() * delta))
    # At Delta = 0 the gradient magnitude is beta_i / 2.
    zero = torch.zeros(3, requires_grad=True)
    losses.sigmoid(zero, torch.zeros(3), torch.tensor([0.03, 0.1, 0.3]), None).sum().backward()
    torch.testing.assert_close(zero.grad, -torch.tensor([0.015, 0.05, 0.15]))


def test_sigmoid_is_stable_for_large_logits():
    out = losses.sigmoid(torch.tensor([-5000.0, 5000.0]), torch.zeros(2), torch.tensor([0.3, 0.3]), None)
    assert torch.isfinite(out).all() and math.isclose(out[0].item(), 1500.0, rel_tol=1e-6)
    assert out[1].item() == 0.0


@pytest.mark.parametrize(
    ("name", "cfg"),
    [
        ("robust", types.SimpleNamespace(label_smoothing=0.0, margin=0.0)),
        ("cdpo", types.SimpleNamespace(label_smoothing=0.0, margin=0.0)),
        ("dpo_margin", types.SimpleNamespace(label_smoothing=0.0, margin=0.0)),
    ],
)
def test_special_cases_reduce_to_dpo(name, cfg):
    chosen, rejected, beta, _ = _inputs()
    torch.testing.assert_close(losses.get(name)(chosen, rejected, beta, cfg), losses.sigmoid(chosen, rejected, beta, cfg))


def test_robust_and_ipo_match_trl_formulas():
    chosen, rejected, beta, (lw, ll) = _inputs()
    c, r, b = chosen.float(), rejected.float(), beta.float()
    z = b * (c - r)
    eps = CFG.label_smoothing
    trl_robust = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    torch.testing.assert_close(losses.robust(chosen, rejected, beta, CFG), trl_robust)
    trl_ipo = (c / lw - r / ll - 1 / (2 * b)) ** 2
    torch.testing.assert_close(losses.ipo(chosen, rejected, beta, CFG, chosen_lengths=lw, rejected_lengths=ll), trl_ipo)
    with pytest.raises(ValueError, match="lengths"):
        losses.ipo(chosen, rejected, beta, CFG)


def _best_fixed_weight_residual(beta: torch.Tensor, deltas: torch.Tensor) -> float:
    """Smallest relative error of w_i * d/dDelta[-log sigmoid(bbar Delta)] against the per-pair
    gradient -beta_i sigmoid(-beta_i Delta), over fixed weights w_i (least squares per pair) and a
    global bbar (grid), across the training states ``deltas`` (S, B)."""
    target = -beta * torch.sigmoid(-beta * deltas)  # (S, B)
    best = math.inf
    for bbar in torch.linspace(0.01, 0.5, 491, dtype=torch.float64):
        basis = -bbar * torch.sigmoid(-bbar * deltas)  # (S, B)
        w = (basis * target).sum(0) / (basis * basis).sum(0)  # best fixed weight per pair
        err = torch.linalg.vector_norm(w * basis - target) / torch.linalg.vector_norm(target)
        best = min(best, err.item())
    return best


def test_per_pair_beta_is_not_loss_weighting():
    """Paper Prop. 1: with distinct beta_i, no fixed weights w_i with one global beta reproduce the
    SP2DPO gradients over training (Delta moves); with equal beta_i, w_i = 1 and bbar = c do."""
    # Gradients of the real loss at several training states of the same batch (Delta_i per state).
    deltas = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 4.0, 1.0], [8.0, 3.0, 12.0, 5.0], [20.0, 10.0, 30.0, 15.0]],
        dtype=torch.float64,
    )
    distinct = torch.tensor([0.03, 0.1, 0.2, 0.3], dtype=torch.float64)
    # The per-pair gradient really is the one of losses.sigmoid (autograd through the registry).
    d = deltas.clone().requires_grad_(True)
    losses.sigmoid(d, torch.zeros_like(d), distinct.expand_as(d), None).sum().backward()
    torch.testing.assert_close(d.grad.double(), -distinct * torch.sigmoid(-distinct * deltas), rtol=1e-5, atol=1e-7)

    assert _best_fixed_weight_residual(distinct, deltas) > 0.05
    equal = torch.full((4,), 0.1, dtype=torch.float64)
    assert _best_fixed_weight_residual(equal, deltas) < 1e-3
