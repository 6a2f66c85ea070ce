"""Tests for sp2dpo.train.losses: every registered preference loss against its formula.

Each loss's per-pair output is compared with its formula evaluated element by element in plain
Python (``math``) on fixed float64 inputs with distinct per-pair beta_i. The running statistics
(BCO's delta, beta-DPO, alpha-DPO) are followed by hand over two steps; the token-level losses
(SamPO, SGDPO) are checked on constructions whose sums count the sampled tokens. Also covered:
the special cases that reduce to DPO, analytic gradients, that beta_i reaches only its own pair,
shape/dtype/finiteness of every loss, numerical stability, and Prop. 1 of the SP2DPO paper (a
per-pair beta is not a per-pair loss weight).
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections.abc import Callable
from fractions import Fraction
from typing import Any, NamedTuple

import pytest
import torch

from sp2dpo.core.config import build_loss_args
from sp2dpo.core.config.losses import LOSS_SPECS
from sp2dpo.train import losses
from sp2dpo.train.losses import LossContext, LossOutput, PairBatch

F64 = torch.float64
BETAS = (0.05, 0.6, 0.2, 0.45, 0.1, 0.3)  # distinct per-pair beta_i
LENS_W = (7, 12, 3, 20, 9, 15)
LENS_L = (11, 5, 3, 14, 18, 6)
EMA = 0.9  # decay of every running statistic


def nls(z: float) -> float:
    """-log sigmoid(z) = softplus(-z), stable for any float."""
    return max(-z, 0.0) + math.log1p(math.exp(-abs(z)))


def sig(z: float) -> float:
    return math.exp(-nls(z))


def make_batch(
    seed: int = 2,
    lens_w: tuple[int, ...] = LENS_W,
    lens_l: tuple[int, ...] = LENS_L,
    beta: tuple[float, ...] = BETAS,
    unit: tuple[float, float] | None = None,
) -> PairBatch:
    """Float64 pairs with per-token log-probs (0 outside the mask) and their sums. ``unit = (a, b)``
    makes every chosen token's log-ratio exactly a and every rejected token's exactly b."""
    rng = random.Random(seed)
    width = max(*lens_w, *lens_l) + 2

    def tokens(lens: tuple[int, ...], ratio: float | None) -> tuple[torch.Tensor, torch.Tensor]:
        pol, ref = [], []
        for n in lens:
            r = [rng.uniform(-2.0, -0.1) for _ in range(n)]
            p = [x + (rng.gauss(0.0, 1.0) if ratio is None else ratio) for x in r]
            pol.append(p + [0.0] * (width - n))
            ref.append(r + [0.0] * (width - n))
        return torch.tensor(pol, dtype=F64), torch.tensor(ref, dtype=F64)

    cp, cr = tokens(lens_w, None if unit is None else unit[0])
    rp, rr = tokens(lens_l, None if unit is None else unit[1])
    b = len(lens_w)
    return PairBatch(
        beta=torch.tensor(beta[:b], dtype=F64),
        policy_chosen=cp.sum(1), policy_rejected=rp.sum(1), ref_chosen=cr.sum(1), ref_rejected=rr.sum(1),
        chosen_lengths=torch.tensor(lens_w), rejected_lengths=torch.tensor(lens_l),
        chosen_tokens=cp, rejected_tokens=rp, ref_chosen_tokens=cr, ref_rejected_tokens=rr,
        chosen_mask=torch.arange(width)[None] < torch.tensor(lens_w)[:, None],
        rejected_mask=torch.arange(width)[None] < torch.tensor(lens_l)[:, None],
        margin=torch.tensor([rng.uniform(0.2, 3.0) for _ in range(b)], dtype=F64),
        nll=torch.tensor(1.7, dtype=F64),
        weak_delta=torch.tensor([[-12.0, 3.0, 45.0, 1.5, -0.5, 30.0][i % 6] for i in range(b)], dtype=F64),
        weak_beta=torch.tensor([[0.1, 0.2, 0.3, 0.05, 0.25, 0.15][i % 6] for i in range(b)], dtype=F64),
    )


class P(NamedTuple):
    """One pair's inputs as Python floats."""

    b: float
    pc: float  # S_theta(y_w)
    pr: float  # S_theta(y_l)
    rc: float  # S_ref(y_w)
    rr: float  # S_ref(y_l)
    lw: float
    ll: float
    m: float
    wd: float
    wb: float

    @property
    def rw(self) -> float:
        return self.pc - self.rc

    @property
    def rl(self) -> float:
        return self.pr - self.rr

    @property
    def d(self) -> float:
        return self.rw - self.rl

    @property
    def avg_gap(self) -> float:  # A_theta(y_w) - A_theta(y_l)
        return self.pc / self.lw - self.pr / self.ll

    @property
    def u(self) -> float:  # averaged policy gap minus averaged reference gap
        return self.avg_gap - (self.rc / self.lw - self.rr / self.ll)


def pairs(batch: PairBatch) -> list[P]:
    cols = (batch.beta, batch.policy_chosen, batch.policy_rejected, batch.ref_chosen,
            batch.ref_rejected, batch.chosen_lengths, batch.rejected_lengths, batch.margin,
            batch.weak_delta, batch.weak_beta)
    return [P(*map(float, row)) for row in zip(*(c.tolist() for c in cols), strict=True)]


def run(name: str, batch: PairBatch, ctx: LossContext | None = None, **knobs: Any) -> LossOutput:
    args = build_loss_args(name, knobs, f"test.{name}")
    return losses.LOSSES[name](batch, args, ctx or LossContext())


def check(got: torch.Tensor | list[float], want: list[float], msg: str = "", tol: float = 1e-5) -> None:
    got_t = torch.as_tensor(got).detach().to(F64)
    torch.testing.assert_close(got_t, torch.tensor(want, dtype=F64), rtol=tol, atol=tol, msg=msg or None)


def dpo(batch: PairBatch, factor: float = 1.0) -> list[float]:
    return [factor * nls(p.b * p.d) for p in pairs(batch)]


# -- every stateless loss against its formula ---------------------------------------------------


def _dpo_pop_margin(p: P, max_margin: float | None) -> float:
    m = max(p.wb * p.wd, 0.0)
    return m if max_margin is None else min(m, max_margin)


def _focal(p: P, gamma: float) -> float:
    return sig(p.b * p.d) ** gamma * nls(p.b * p.d)


Formula = Callable[[P], float]
FORMULAS: list[tuple[str, dict[str, Any], Formula]] = [
    ("sigmoid", {}, lambda p: nls(p.b * p.d)),
    ("ipo", {}, lambda p: (p.rw / p.lw - p.rl / p.ll - 1 / (2 * p.b)) ** 2),
    ("hinge", {}, lambda p: max(0.0, 1 - p.b * p.d)),
    ("robust", {"epsilon": 0.2},
     lambda p: (0.8 * nls(p.b * p.d) - 0.2 * nls(-p.b * p.d)) / (1 - 0.4)),
    ("cdpo", {"epsilon": 0.2}, lambda p: 0.8 * nls(p.b * p.d) + 0.2 * nls(-p.b * p.d)),
    ("nca_pair", {},
     lambda p: nls(p.b * p.rw) + 0.5 * nls(-p.b * p.rw) + 0.5 * nls(-p.b * p.rl)),
    ("bco_pair", {"delta": "none"}, lambda p: nls(p.b * p.rw) + nls(-p.b * p.rl)),  # TRL
    ("simpo", {"gamma_beta_ratio": 0.4}, lambda p: nls(p.b * p.avg_gap - 0.4 * p.b)),
    ("cpo", {}, lambda p: nls(p.b * (p.pc - p.pr))),
    ("focalpo", {"gamma": 0.7}, lambda p: _focal(p, 0.7)),
    ("focalpo", {"gamma": 0.7, "detach_weight": True}, lambda p: _focal(p, 0.7)),
    ("dpo_margin", {}, lambda p: nls(p.b * p.d - p.m)),
    ("scaled_bt", {}, lambda p: p.m * nls(p.b * p.d)),
    ("pmo", {"alpha": 0.3},  # the paper's form: (alpha + beta) dS_theta - beta dS_ref
     lambda p: nls((0.3 + p.b) * (p.pc - p.pr) - p.b * (p.rc - p.rr))),
    ("dpo_pop", {"max_margin": 2.0}, lambda p: nls(p.b * p.d - _dpo_pop_margin(p, 2.0))),
    ("dpo_pop", {"max_margin": None}, lambda p: nls(p.b * p.d - _dpo_pop_margin(p, None))),
]


@pytest.mark.parametrize(
    ("name", "knobs", "formula"), FORMULAS,
    ids=[n + "".join(f"-{k}={v}" for k, v in kn.items()) for n, kn, _ in FORMULAS],
)
def test_per_pair_loss_matches_formula(name: str, knobs: dict[str, Any], formula: Formula) -> None:
    batch = make_batch()
    want = [formula(p) for p in pairs(batch)]
    check(run(name, batch, **knobs).per_pair, want, f"{name} {knobs} differs from its formula")


def test_fixture_covers_every_regime() -> None:
    """The formula tests are only sensitive if the inputs hit both sides of every kink."""
    ps = pairs(make_batch())
    assert any(p.d > 0 for p in ps) and any(p.d < 0 for p in ps)
    assert any(p.b * p.d > 1 for p in ps) and any(p.b * p.d < 1 for p in ps)  # hinge
    raw = [p.wb * p.wd for p in ps]
    assert min(raw) < 0 and max(raw) > 2.0 and any(0 < r < 2.0 for r in raw)  # dpo_pop clip


def test_simpo_is_reference_free() -> None:
    batch = make_batch()
    want = [nls(p.b * p.avg_gap - 0.25 * p.b) for p in pairs(batch)]
    free = dataclasses.replace(batch, ref_chosen=None, ref_rejected=None, ref_chosen_tokens=None,
                               ref_rejected_tokens=None)
    check(run("simpo", free).per_pair, want, "SimPO must not read the reference")


def test_cpo_adds_weighted_nll_to_the_batch_loss() -> None:
    batch = make_batch()
    want = [nls(p.b * (p.pc - p.pr)) for p in pairs(batch)]
    ctx = LossContext()
    out = run("cpo", batch, ctx, nll_weight=0.5)
    check(losses.reduce(out, ctx), statistics.fmean(want) + 0.5 * 1.7, "CPO: mean + lambda * NLL")
    # lambda = 0: reference-free sigmoid on the summed policy log-probs, nothing added.
    out = run("cpo", batch, ctx, nll_weight=0.0)
    free = dataclasses.replace(batch, ref_chosen=None, ref_rejected=None)
    check(out.per_pair, want)
    check(losses.reduce(out, ctx), statistics.fmean(want))
    check(out.per_pair, run("sigmoid", free).per_pair.tolist())


def test_dpo_pop_margin_is_detached() -> None:
    batch = make_batch()
    pc = batch.policy_chosen.clone().requires_grad_(True)
    wd = batch.weak_delta.clone().requires_grad_(True)
    out = run("dpo_pop", dataclasses.replace(batch, policy_chosen=pc, weak_delta=wd))
    out.per_pair.sum().backward()
    assert wd.grad is None or not wd.grad.any(), "no gradient may flow into the weak pair's gap"
    want = [-p.b * sig(-(p.b * p.d - _dpo_pop_margin(p, 10.0))) for p in pairs(batch)]
    check(pc.grad, want)


# -- running statistics (EMA from 0, decay 0.9, updated before use) ------------------------------


def test_bco_pair_running_delta_over_two_steps() -> None:
    ctx, delta = LossContext(), 0.0
    for seed in (1, 2):
        batch = make_batch(seed)
        ps = pairs(batch)
        rewards = [p.b * p.rw for p in ps] + [p.b * p.rl for p in ps]
        delta = EMA * delta + (1 - EMA) * statistics.fmean(rewards)
        want = [nls(p.b * p.rw - delta) + nls(-(p.b * p.rl - delta)) for p in ps]
        check(run("bco_pair", batch, ctx).per_pair, want, f"BCO step {seed}: delta = {delta}")


def test_alpha_dpo_running_margin_over_two_steps() -> None:
    ctx, mu, s = LossContext(), 0.0, 0.0
    for seed in (1, 2):
        batch = make_batch(seed)
        ps = pairs(batch)
        u = [p.u for p in ps]
        mu = EMA * mu + (1 - EMA) * statistics.fmean(u)
        s = EMA * s + (1 - EMA) * statistics.stdev(u)
        want = [nls(p.b * (p.avg_gap - (0.3 * (p.u - mu) / s + 0.6))) for p in ps]
        out = run("alpha_dpo", batch, ctx, alpha=0.3, gamma_beta_ratio=0.6)
        check(out.per_pair, want, f"alpha-DPO step {seed}")


def test_beta_dpo_without_filtering_over_two_steps() -> None:
    """rho = 0 keeps every pair; step 2's large negative gaps drive beta to its 1e-3 floor."""
    ctx, mu, s, beta0 = LossContext(), 0.0, 0.0, 0.1
    for seed, unit in ((1, None), (2, (-3.0, 3.0))):
        batch = make_batch(seed, beta=(beta0,) * 6, unit=unit)
        gaps = [p.d for p in pairs(batch)]
        mu = EMA * mu + (1 - EMA) * statistics.fmean(gaps)
        s = EMA * s + (1 - EMA) * statistics.stdev(gaps)
        beta = max(beta0 * (1 + 0.6 * (statistics.fmean(gaps) - mu)), 1e-3)
        out = run("beta_dpo", batch, ctx, a=0.6, rho=0.0)
        check(out.per_pair, [nls(beta * g) for g in gaps], f"beta-DPO step {seed}: beta={beta}")
        check([out.metrics["beta_dpo/gap_mean"], out.metrics["beta_dpo/gap_std"]], [mu, s])
        assert out.weight is None or bool((out.weight == 1).all())
        check(losses.reduce(out, ctx), statistics.fmean(nls(beta * g) for g in gaps))


@pytest.mark.parametrize(("n", "rho"), [(10, 0.2), (7, 0.5), (10, 0.8)])
def test_beta_dpo_keeps_floor_b_times_one_minus_rho_pairs(n: int, rho: float) -> None:
    lens = tuple(range(3, 3 + n))
    batch = make_batch(5, lens_w=lens, lens_l=lens[::-1], beta=(0.1,) * n)
    ctx = LossContext()
    out = run("beta_dpo", batch, ctx, rho=rho)
    n_keep = math.floor(n * (1 - Fraction(str(rho))))
    w = out.weight.tolist()
    assert sorted(w) == [0.0] * (n - n_keep) + [1.0] * n_keep, (
        f"beta-DPO must keep exactly floor({n} * (1 - {rho})) = {n_keep} pairs (exact "
        f"arithmetic), kept {sum(w):g}"
    )
    gaps = [p.d for p in pairs(batch)]
    mu = (1 - EMA) * statistics.fmean(gaps)
    kept = [g for g, k in zip(gaps, w, strict=True) if k]
    beta = max(0.1 * (1 + 0.6 * (statistics.fmean(kept) - mu)), 1e-3)
    check(out.per_pair, [nls(beta * g) for g in gaps], "beta from the kept pairs' mean gap")
    check(losses.reduce(out, ctx), statistics.fmean(nls(beta * g) for g in kept),
          "the batch loss averages over kept pairs only")


def test_beta_dpo_draws_pairs_near_the_running_mean() -> None:
    """Keep probability ~ exp(-z^2 / 2): a far outlier (z ~ 20) is never kept."""
    gaps = torch.tensor([0.0, 0.1, -0.1, 100.0], dtype=F64)
    batch = PairBatch(torch.full((4,), 0.1, dtype=F64), gaps, torch.zeros(4, dtype=F64),
                      torch.zeros(4, dtype=F64), torch.zeros(4, dtype=F64))
    kept = torch.zeros(4)
    for seed in range(30):
        ctx = LossContext(generator=torch.Generator().manual_seed(seed))
        kept += run("beta_dpo", batch, ctx, rho=0.5).weight.float()
    assert kept[3] == 0 and bool((kept[:3] > 0).all()) and kept.sum() == 60


# -- token-level losses ----------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["chosen", "rejected"])
def test_sampo_uses_min_length_tokens_of_each_reply(side: str) -> None:
    """Unit log-ratios on one side only: the loss's gap is +/- the number of tokens used."""
    unit, sign = ((1.0, 0.0), 1) if side == "chosen" else ((0.0, 1.0), -1)
    batch = make_batch(3, unit=unit)
    want = [nls(sign * p.b * min(p.lw, p.ll)) for p in pairs(batch)]
    check(run("sampo", batch, shared_draw=True).per_pair, want,
          "SamPO must sum exactly min(|y_w|, |y_l|) tokens of each reply (one draw for both models)")
    separate = run("sampo", batch, shared_draw=False).per_pair.double()
    assert not torch.allclose(separate, torch.tensor(want, dtype=F64), rtol=1e-5, atol=1e-5), (
        "shared_draw false draws the reference's tokens separately"
    )


def test_sampo_draws_fresh_tokens_every_step() -> None:
    batch, ctx = make_batch(3), LossContext()
    first, second = run("sampo", batch, ctx).per_pair, run("sampo", batch, ctx).per_pair
    assert not torch.equal(first, second)


def _subseq(r: float, n: float) -> int:
    return math.ceil(Fraction(str(r)) * int(n))  # exact: ceil(0.6 * 25) = 15


SGDPO_SIZES = [
    pytest.param(1.0, 0.8, False, "d", LENS_W, LENS_L, id="r1.0-0.8"),
    pytest.param(0.7, 0.6, True, "d", LENS_W, LENS_L, id="contiguous"),
    pytest.param(0.9, 0.7, False, "s", LENS_W, LENS_L, id="pilot_s"),
    pytest.param(0.6, 0.6, False, "d", (25, 10, 5), (5, 25, 10), id="r0.6-integer-product"),
]


@pytest.mark.parametrize(("r1", "r2", "contiguous", "pilot", "lw", "ll"), SGDPO_SIZES)
def test_sgdpo_subsequence_sizes(r1: float, r2: float, contiguous: bool, pilot: str,
                                 lw: tuple[int, ...], ll: tuple[int, ...]) -> None:
    """Unit log-ratios: rho = |y| and rho^ = ceil(r |y|) tokens."""
    batch = make_batch(4, lens_w=lw, lens_l=ll, unit=(1.0, 1.0))
    want = [nls(p.b * (p.lw - _subseq(r2, p.ll))) + nls(p.b * (_subseq(r1, p.lw) - p.ll))
            for p in pairs(batch)]
    out = run("sgdpo", batch, r1=r1, r2=r2, contiguous=contiguous, pilot=pilot)
    check(out.per_pair, want, f"SGDPO sub-sequences must have ceil(r * |y|) tokens, in exact "
          f"arithmetic (r1={r1}, r2={r2}, |y_w|={lw}, |y_l|={ll})")


def test_sgdpo_add_is_dpo_plus_weighted_pilot() -> None:
    batch = make_batch(4, unit=(1.0, 1.0))
    want = [nls(p.b * (p.lw - p.ll)) + 0.5 * (nls(p.b * (p.lw - _subseq(0.7, p.ll)))
                                              + nls(p.b * (_subseq(0.8, p.lw) - p.ll)))
            for p in pairs(batch)]
    out = run("sgdpo", batch, r1=0.8, r2=0.7, combine="add", pilot_weight=0.5)
    check(out.per_pair, want)


# -- special cases that reduce to DPO --------------------------------------------------------------


def _const(batch: PairBatch, c: float = 0.25) -> PairBatch:
    return dataclasses.replace(batch, beta=torch.full_like(batch.beta, c))


REDUCTIONS: list[Any] = [
    pytest.param("sigmoid", {}, _const, 1, id="sigmoid-constant-beta"),
    pytest.param("pmo", {"alpha": 0.0}, None, 1, id="pmo-alpha0"),
    pytest.param("dpo_pop", {}, lambda b: dataclasses.replace(b, weak_delta=b.weak_delta * 0), 1,
                 id="dpo_pop-zero-target"),
    pytest.param("dpo_pop", {}, lambda b: dataclasses.replace(b, weak_delta=-b.weak_delta.abs() - 1),
                 1, id="dpo_pop-negative-target-clips-to-0"),
    pytest.param("focalpo", {"gamma": 0.0}, None, 1, id="focalpo-gamma0"),
    pytest.param("cdpo", {"epsilon": 0.0}, None, 1, id="cdpo-eps0"),
    pytest.param("robust", {"epsilon": 0.0}, None, 1, id="robust-eps0"),
    pytest.param("dpo_margin", {"margin_source": "fixed", "margin": 0.0},
                 lambda b: dataclasses.replace(b, margin=b.margin * 0), 1, id="dpo_margin-m0"),
    pytest.param("scaled_bt", {}, lambda b: dataclasses.replace(b, margin=b.margin * 0 + 1), 1,
                 id="scaled_bt-m1"),
    pytest.param("sgdpo", {"r1": 1.0, "r2": 1.0}, None, 2, id="sgdpo-r1-is-2x"),
    pytest.param("sampo", {}, lambda b: make_batch(6, lens_l=LENS_W), 1, id="sampo-equal-lengths"),
    pytest.param("beta_dpo", {"a": 0.0, "rho": 0.0}, lambda b: _const(b, 0.1), 1, id="beta_dpo-a0"),
]


@pytest.mark.parametrize(("name", "knobs", "tweak", "factor"), REDUCTIONS)
def test_special_case_equals_dpo(name: str, knobs: dict[str, Any],
                                 tweak: Callable[[PairBatch], PairBatch] | None, factor: float) -> None:
    batch = make_batch(6)
    batch = tweak(batch) if tweak else batch
    check(run(name, batch, **knobs).per_pair, dpo(batch, factor), f"{name} {knobs} must be DPO")


def test_alpha_dpo_with_alpha_zero_is_simpo() -> None:
    batch = make_batch(7)
    want = [nls(p.b * p.avg_gap - 0.4 * p.b) for p in pairs(batch)]
    check(run("alpha_dpo", batch, alpha=0.0, gamma_beta_ratio=0.4).per_pair, want)
    check(run("simpo", batch, gamma_beta_ratio=0.4).per_pair, want)


# -- gradients ---------------------------------------------------------------------------------------


def _grads(name: str, batch: PairBatch, **knobs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    pc = batch.policy_chosen.clone().requires_grad_(True)
    pr = batch.policy_rejected.clone().requires_grad_(True)
    run(name, dataclasses.replace(batch, policy_chosen=pc, policy_rejected=pr), **knobs).per_pair.sum().backward()
    return pc.grad, pr.grad


def test_sigmoid_gradient_is_minus_beta_sigmoid_minus_beta_delta() -> None:
    batch = make_batch(8)
    g = [-p.b * sig(-p.b * p.d) for p in pairs(batch)]
    gw, gl = _grads("sigmoid", batch)
    check(gw, g, "d loss / d Delta = -beta_i sigmoid(-beta_i Delta_i)")
    check(gl, [-x for x in g])


def test_pmo_gradient_wrt_policy_log_probs() -> None:
    batch = make_batch(8)
    z = [(0.3 + p.b) * (p.pc - p.pr) - p.b * (p.rc - p.rr) for p in pairs(batch)]
    g = [-(0.3 + p.b) * sig(-zi) for p, zi in zip(pairs(batch), z, strict=True)]
    gw, gl = _grads("pmo", batch, alpha=0.3)
    check(gw, g, "d PMO / d S_theta(y_w) = -(alpha + beta_i) sigmoid(-z)")
    check(gl, [-x for x in g])


def test_running_statistics_are_detached() -> None:
    """alpha-DPO's margin and beta-DPO's beta carry no gradient (first step: EMA = 0.1 x batch)."""
    batch = make_batch(8)
    ps = pairs(batch)
    u = [p.u for p in ps]
    mu, s = (1 - EMA) * statistics.fmean(u), (1 - EMA) * statistics.stdev(u)
    z = [p.b * (p.avg_gap - (0.2 * (p.u - mu) / s + 0.6)) for p in ps]
    want = [-p.b * sig(-zi) / p.lw for p, zi in zip(ps, z, strict=True)]
    check(_grads("alpha_dpo", batch)[0], want, "alpha-DPO: d loss / d S_theta(y_w)")
    batch = _const(batch, 0.1)
    gaps = [p.d for p in pairs(batch)]
    beta = max(0.1 * (1 + 0.6 * EMA * statistics.fmean(gaps)), 1e-3)  # mean - mu = 0.9 mean
    check(_grads("beta_dpo", batch, rho=0.0)[0], [-beta * sig(-beta * g) for g in gaps],
          "beta-DPO: d loss / d Delta = -beta sigmoid(-beta Delta) with beta detached")


@pytest.mark.parametrize("detach", [False, True])
def test_focalpo_gradient(detach: bool) -> None:
    batch, gamma = make_batch(8), 0.7
    want = []
    for p in pairs(batch):
        q = sig(p.b * p.d)
        dz = -(q**gamma) * (1 - q) * (1 if detach else 1 + gamma * math.log(q))
        want.append(p.b * dz)
    check(_grads("focalpo", batch, gamma=gamma, detach_weight=detach)[0], want)


# -- per-pair beta, registry, dtype, stability ------------------------------------------------------

# beta-DPO is left out: it uses one batch-level beta (beta_0), not beta_i. BCO's running delta
# averages the beta_i-scaled rewards, so there a beta_i reaches every pair (tested below).
LOCAL = [(n, {}) for n in sorted(losses.LOSSES) if n not in ("beta_dpo", "bco_pair")]


@pytest.mark.parametrize(("name", "knobs"), [*LOCAL, ("bco_pair", {"delta": "none"})],
                         ids=[*(n for n, _ in LOCAL), "bco_pair-delta-none"])
def test_per_pair_beta_reaches_only_its_pair(name: str, knobs: dict[str, Any]) -> None:
    batch = make_batch(9)
    bumped = dataclasses.replace(batch, beta=batch.beta + torch.tensor([0, 0, 0.07, 0, 0, 0], dtype=F64))
    base, out = run(name, batch, **knobs).per_pair, run(name, bumped, **knobs).per_pair
    changed = ((out - base).abs() > 1e-6).tolist()
    assert changed == [False, False, True, False, False, False], f"{name}: {changed}"


def test_running_bco_delta_couples_pairs() -> None:
    batch = make_batch(9)
    bumped = dataclasses.replace(batch, beta=batch.beta + torch.tensor([0, 0, 0.07, 0, 0, 0], dtype=F64))
    assert bool(((run("bco_pair", bumped).per_pair - run("bco_pair", batch).per_pair).abs() > 1e-7).all())


def test_registry_matches_loss_specs() -> None:
    assert set(losses.LOSSES) == set(LOSS_SPECS)
    assert losses.get("sigmoid") is losses.sigmoid
    with pytest.raises(ValueError, match="choose one of"):
        losses.get("nope")


@pytest.mark.parametrize("scale", [1.0, 1e3])
@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_every_loss_is_per_pair_float32_and_finite(name: str, scale: float) -> None:
    batch = make_batch(10)
    fields = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected", "chosen_tokens",
              "rejected_tokens", "ref_chosen_tokens", "ref_rejected_tokens")
    batch = dataclasses.replace(batch, **{f: getattr(batch, f) * scale for f in fields})
    ctx = LossContext()
    out = run(name, batch, ctx)
    assert out.per_pair.shape == (6,) and out.per_pair.dtype == torch.float32
    assert bool(torch.isfinite(out.per_pair).all()) and bool(torch.isfinite(losses.reduce(out, ctx)))


def test_sigmoid_is_stable_for_huge_logits() -> None:
    """beta Delta = -1e4 and +1e4: losses 1e4 and 0, gradients -beta and 0, all finite."""
    pc = torch.tensor([-1e5, 1e5], dtype=F64, requires_grad=True)
    zero = torch.zeros(2, dtype=F64)
    out = losses.sigmoid(PairBatch(torch.tensor([0.1, 0.1], dtype=F64), pc, zero, zero, zero),
                         None, LossContext())
    out.per_pair.sum().backward()
    assert bool(torch.isfinite(out.per_pair).all()) and bool(torch.isfinite(pc.grad).all())
    check(out.per_pair, [1e4, 0.0], tol=1e-6)
    check(pc.grad, [-0.1, 0.0], tol=1e-6)


# -- Prop. 1 of the SP2DPO paper ---------------------------------------------------------------------


def _best_fixed_weight_residual(beta: torch.Tensor, deltas: torch.Tensor) -> float:
    """Smallest relative error of w_i * d/dDelta[-log sigmoid(bbar Delta)] against the per-pair
    gradient -beta_i sigmoid(-beta_i Delta), over fixed weights w_i (least squares per pair) and a
    global bbar (grid), across the training states ``deltas`` (S, B)."""
    target = -beta * torch.sigmoid(-beta * deltas)
    best = math.inf
    for bbar in torch.linspace(0.01, 0.5, 491, dtype=F64):
        basis = -bbar * torch.sigmoid(-bbar * deltas)
        w = (basis * target).sum(0) / (basis * basis).sum(0)
        best = min(best, (torch.linalg.vector_norm(w * basis - target)
                          / torch.linalg.vector_norm(target)).item())
    return best


def test_per_pair_beta_is_not_loss_weighting() -> None:
    """With distinct beta_i no fixed weights w_i with one global beta reproduce the gradients of
    the per-pair loss over training (Delta moves); with equal beta_i, w_i = 1 and bbar = c do."""
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 4.0, 1.0], [8.0, 3.0, 12.0, 5.0],
                           [20.0, 10.0, 30.0, 15.0]], dtype=F64)
    distinct = torch.tensor([0.03, 0.1, 0.2, 0.3], dtype=F64)
    d = deltas.clone().requires_grad_(True)
    zero = torch.zeros_like(deltas)
    batch = PairBatch(distinct.expand_as(d), d, zero, zero, zero)
    losses.sigmoid(batch, None, LossContext()).per_pair.sum().backward()
    assert d.grad is not None
    check(d.grad.flatten(), [-b * sig(-b * x) for row in deltas.tolist()
                             for b, x in zip(distinct.tolist(), row, strict=True)])
    assert _best_fixed_weight_residual(distinct, deltas) > 0.05
    assert _best_fixed_weight_residual(torch.full((4,), 0.1, dtype=F64), deltas) < 1e-3
