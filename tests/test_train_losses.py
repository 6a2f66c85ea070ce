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
from sp2dpo.core.errors import ConfigError
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


def _bco_rewards(batch: PairBatch) -> list[float]:
    """Every reward of the batch, beta_i rho(y_w) then beta_i rho(y_l)."""
    ps = pairs(batch)
    return [p.b * p.rw for p in ps] + [p.b * p.rl for p in ps]


def _bco_want(batch: PairBatch, delta: float) -> list[float]:
    return [nls(p.b * p.rw - delta) + nls(-(p.b * p.rl - delta)) for p in pairs(batch)]


#: Two steps of different sizes (6 then 3 pairs): the mean of the two batch means differs from
#: the mean of all their rewards.
BCO_STEPS = (make_batch(5), make_batch(7, lens_w=LENS_W[:3], lens_l=LENS_L[:3]))


def test_bco_pair_default_delta_is_trls_running_mean() -> None:
    """The default `delta: running` is TRL <= 0.28's `bco_pair`: its RunningMoments is fed one
    value per step, the batch's mean reward, so the first shift is that mean (not 0.1 x it, as an
    EMA from 0 gives) and the second the plain mean of the two steps' means, whatever their sizes."""
    ctx = LossContext()
    m1, m2 = (statistics.fmean(_bco_rewards(b)) for b in BCO_STEPS)
    pooled = statistics.fmean(_bco_rewards(BCO_STEPS[0]) + _bco_rewards(BCO_STEPS[1]))
    assert abs(pooled - (m1 + m2) / 2) > 0.05, "the two batches must tell the two means apart"
    for batch, delta in zip(BCO_STEPS, (m1, (m1 + m2) / 2), strict=True):
        out = run("bco_pair", batch, ctx)
        check(out.per_pair, _bco_want(batch, delta), f"BCO running: delta = {delta}")
        check([out.metrics["bco/delta"]], [delta])
    state = ctx.moments.state_dict()
    assert state == pytest.approx({"bco_delta/count": 2.0, "bco_delta/mean": (m1 + m2) / 2})


def test_bco_pair_pooled_delta_weights_every_reward() -> None:
    """`delta: pooled`: the mean of every reward seen so far (TRL's BCOTrainer feeds its
    RunningMoments every reward): first the batch mean, then the mean of both batches' rewards."""
    ctx = LossContext()
    seen: list[float] = []
    for batch in BCO_STEPS:
        seen += _bco_rewards(batch)
        delta = statistics.fmean(seen)
        check(run("bco_pair", batch, ctx, delta="pooled").per_pair, _bco_want(batch, delta),
              f"BCO pooled: delta = {delta}")
    assert ctx.moments.state_dict()["bco_delta/count"] == len(seen)


def test_bco_pair_ema_delta_over_two_steps() -> None:
    """`delta: ema` (ours): an EMA from 0 of the batch's mean reward, decay `ema`."""
    ctx, delta = LossContext(), 0.0
    for batch in BCO_STEPS:
        delta = EMA * delta + (1 - EMA) * statistics.fmean(_bco_rewards(batch))
        check(run("bco_pair", batch, ctx, delta="ema").per_pair, _bco_want(batch, delta),
              f"BCO ema: delta = {delta}")


@pytest.mark.parametrize("mode", ["running", "pooled", "ema"])
def test_bco_pair_delta_reads_the_gathered_batch(mode: str) -> None:
    """The shift is computed over every process's rewards (here a second process whose rewards
    are this one's plus 1), the same on every process."""
    batch = BCO_STEPS[0]
    ctx = LossContext(gather=lambda t: torch.cat([t, t + 1.0]), num_processes=2)
    mean = statistics.fmean(_bco_rewards(batch)) + 0.5
    delta = (1 - EMA) * mean if mode == "ema" else mean
    check(run("bco_pair", batch, ctx, delta=mode).per_pair, _bco_want(batch, delta))


def test_bco_pair_ema_decay_needs_delta_ema() -> None:
    assert build_loss_args("bco_pair", {}, "m").delta == "running"
    assert build_loss_args("bco_pair", {"delta": "ema", "ema": 0.5}, "m").ema == 0.5
    with pytest.raises(ConfigError, match="ema"):
        build_loss_args("bco_pair", {"ema": 0.5}, "m")
    with pytest.raises(ConfigError, match="pooled"):
        build_loss_args("bco_pair", {"delta": "emma"}, "m")


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


def ramp_batch(lens_w: tuple[int, ...], lens_l: tuple[int, ...]) -> PairBatch:
    """make_batch's pairs with distinct per-token log-ratios within each row: token p of row i has
    0.02 (p + 1) + 0.003 i on the chosen reply and -(0.015 (p + 1) + 0.002 i) on the rejected one,
    so the sum over a sub-sequence depends on which tokens it took."""
    batch = make_batch(11, lens_w=lens_w, lens_l=lens_l)
    pos = torch.arange(batch.chosen_tokens.shape[1], dtype=F64)[None] + 1
    row = torch.arange(len(lens_w), dtype=F64)[:, None]
    cw = batch.ref_chosen_tokens + (0.02 * pos + 0.003 * row) * batch.chosen_mask
    rl = batch.ref_rejected_tokens - (0.015 * pos + 0.002 * row) * batch.rejected_mask
    return dataclasses.replace(batch, chosen_tokens=cw, rejected_tokens=rl,
                               policy_chosen=cw.sum(1), policy_rejected=rl.sum(1))


class Draw(NamedTuple):
    """One SGDPO call: its per-pair loss, the two sub-sequences and the per-token gradients."""

    per_pair: torch.Tensor
    sel_w: torch.Tensor  # (B, T) bool: the chosen reply's sub-sequence
    sel_l: torch.Tensor
    grad_w: torch.Tensor  # d sum(loss) / d chosen per-token policy log-probs
    grad_l: torch.Tensor


def sgdpo_draw(batch: PairBatch, ctx: LossContext | None = None, **knobs: Any) -> Draw:
    """Run SGDPO with gradients on the per-token policy log-probs. A chosen token's gradient gets the
    second pilot term's share only when the chosen sub-sequence took it (lower), a rejected token's
    the first term's share only when the rejected one took it (higher), so the gradient shows which
    tokens each sub-sequence took (with ``detach_pilot`` off and some token left out in every row)."""
    cw = batch.chosen_tokens.clone().requires_grad_(True)
    rl = batch.rejected_tokens.clone().requires_grad_(True)
    out = run("sgdpo", dataclasses.replace(batch, chosen_tokens=cw, rejected_tokens=rl), ctx, **knobs)
    out.per_pair.sum().backward()
    assert cw.grad is not None and rl.grad is not None
    mw, ml = batch.chosen_mask, batch.rejected_mask
    top_w = cw.grad.masked_fill(~mw, -math.inf).amax(1, keepdim=True)
    low_l = rl.grad.masked_fill(~ml, math.inf).amin(1, keepdim=True)
    return Draw(out.per_pair.detach(), mw & (cw.grad < top_w - 1e-6), ml & (rl.grad > low_l + 1e-6),
                cw.grad, rl.grad)


def _ratios(batch: PairBatch) -> tuple[list[list[float]], list[list[float]]]:
    """Per-token log-ratios of each row's chosen and rejected completion tokens."""
    def side(pol: torch.Tensor, ref: torch.Tensor, lens: torch.Tensor) -> list[list[float]]:
        return [(pol[i, :n] - ref[i, :n]).tolist() for i, n in enumerate(lens.tolist())]
    return (side(batch.chosen_tokens, batch.ref_chosen_tokens, batch.chosen_lengths),
            side(batch.rejected_tokens, batch.ref_rejected_tokens, batch.rejected_lengths))


def _positions(sel: torch.Tensor) -> list[list[int]]:
    return [torch.nonzero(row).flatten().tolist() for row in sel]


def _pilot_loss(batch: PairBatch, sel_w: torch.Tensor, sel_l: torch.Tensor) -> list[float]:
    """The pilot loss summed in Python over the given sub-sequences."""
    out = []
    for p, tw, tl, sw, sl in zip(pairs(batch), *_ratios(batch), _positions(sel_w), _positions(sel_l),
                                 strict=True):
        sub_w, sub_l = sum(tw[t] for t in sw), sum(tl[t] for t in sl)
        out.append(nls(p.b * (sum(tw) - sub_l)) + nls(p.b * (sub_w - sum(tl))))
    return out


def _span_start(positions: list[int]) -> int:
    assert positions == list(range(positions[0], positions[0] + len(positions))), positions
    return positions[0]


def _same_fraction(sw: int, mw: int, sl: int, ml: int) -> bool:
    """Some u in [0, 1) has floor(u (mw + 1)) = sw and floor(u (ml + 1)) = sl (exact arithmetic)."""
    lo = max(Fraction(sw, mw + 1), Fraction(sl, ml + 1))
    return lo < min(Fraction(sw + 1, mw + 1), Fraction(sl + 1, ml + 1))


def _nested(sw: list[int], sl: list[int], n: int) -> bool:
    """On the positions both replies have (< n), one sub-sequence holds the other."""
    a, b = {t for t in sw if t < n}, {t for t in sl if t < n}
    return a <= b or b <= a


@pytest.mark.parametrize("contiguous", [False, True], ids=["scattered", "contiguous"])
def test_sgdpo_pilot_s_takes_the_same_relative_positions(contiguous: bool) -> None:
    """Pilot_s draws the two replies' sub-sequences at the same relative positions, Pilot_d
    independently. Replies of equal lengths with r1 = r2: pilot s takes the same tokens of both,
    every step; distinct per-token log-ratios and the per-token gradient show which (equal
    log-ratios, as in the size test above, only count them)."""
    lens = (7, 12, 5, 20, 9, 15)
    batch = ramp_batch(lens, lens)
    ctx_s, ctx_d = LossContext(), LossContext()
    for step in range(3):
        s = sgdpo_draw(batch, ctx_s, r1=0.6, r2=0.6, pilot="s", contiguous=contiguous)
        d = sgdpo_draw(batch, ctx_d, r1=0.6, r2=0.6, pilot="d", contiguous=contiguous)
        for draw in (s, d):
            for sel in (draw.sel_w, draw.sel_l):
                assert sel.sum(1).tolist() == [_subseq(0.6, n) for n in lens]
                if contiguous:
                    [_span_start(pos) for pos in _positions(sel)]
            check(draw.per_pair, _pilot_loss(batch, draw.sel_w, draw.sel_l),
                  "the loss sums the log-ratios of exactly the tokens the gradient shows")
        assert _positions(s.sel_w) == _positions(s.sel_l), f"pilot s, step {step}: same tokens"
        assert _positions(d.sel_w) != _positions(d.sel_l), f"pilot d, step {step}: independent draws"


@pytest.mark.parametrize("contiguous", [False, True], ids=["scattered", "contiguous"])
def test_sgdpo_pilot_s_with_unequal_lengths(contiguous: bool) -> None:
    """Replies of different lengths: scattered pilot s ranks the positions by one set of keys, so on
    the positions both replies have one sub-sequence holds the other; contiguous pilot s starts
    both spans at the same fraction u of each reply's free range, start = floor(u (|y| - k + 1)).
    Pilot d breaks both in some row."""
    batch = ramp_batch(LENS_W, LENS_L)
    r1, r2 = 0.6, 0.65  # every row leaves a token out, so the gradient shows the sub-sequences
    for pilot in ("s", "d"):
        ctx, held = LossContext(), []
        for _ in range(3):
            draw = sgdpo_draw(batch, ctx, r1=r1, r2=r2, pilot=pilot, contiguous=contiguous)
            for nw, nl, sw, sl in zip(LENS_W, LENS_L, _positions(draw.sel_w), _positions(draw.sel_l),
                                      strict=True):
                assert (len(sw), len(sl)) == (_subseq(r1, nw), _subseq(r2, nl))
                if contiguous:
                    start_w, start_l = _span_start(sw), _span_start(sl)
                    held.append(_same_fraction(start_w, nw - len(sw), start_l, nl - len(sl)))
                else:
                    held.append(_nested(sw, sl, min(nw, nl)))
            check(draw.per_pair, _pilot_loss(batch, draw.sel_w, draw.sel_l))
        if pilot == "s":
            assert all(held), f"pilot s must keep the relative positions: {held}"
        else:
            assert not all(held), "pilot d draws the two replies independently"


def test_sample_tokens_contiguous_spans_follow_shared_keys() -> None:
    """Two masks drawn with the same keys put their spans at the same place (the issue: one call
    took positions 10..14, the other 14..18); without keys every call draws its own start."""
    mask, counts = torch.ones(8, 20, dtype=torch.bool), torch.full((8,), 5)
    gen = torch.Generator().manual_seed(0)
    keys = torch.rand(8, 20, generator=gen)
    first = losses.sample_tokens(mask, counts, gen, contiguous=True, keys=keys)
    assert torch.equal(first, losses.sample_tokens(mask, counts, gen, contiguous=True, keys=keys))
    assert not torch.equal(losses.sample_tokens(mask, counts, gen, contiguous=True),
                           losses.sample_tokens(mask, counts, gen, contiguous=True))


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


@pytest.mark.parametrize("alpha", [0.3, 0.9])
def test_pmo_gradient_matches_the_papers_objective(alpha: float) -> None:
    """PMO's objective (its eq. 5) is -log s(z) with z = (a + b) log(pi(y_w) / pi_ref(y_w)^(b/(a+b)))
    - (a + b) log(pi(y_l) / pi_ref(y_l)^(b/(a+b))) = (a + b)(S_w - S_l) - b (R_w - R_l). The paper
    states no gradient; by hand: dL/dS_w = -(a + b) s(-z) = -dL/dS_l, dL/dR_w = b s(-z) = -dL/dR_l
    (the reference's exponent b / (a + b)) and dL/db_i = -s(-z) Delta. Autograd of the `pmo` loss
    must give these, and the paper's relation to DPO must hold: PMO(a, b) is DPO with beta a + b on
    the reference log-probs scaled by b / (a + b), in value and in gradient (that DPO written out
    here with torch ops, not taken from the `sigmoid` loss, whose -log s the `pmo` loss shares)."""
    batch = make_batch(8)  # summed log-probs scaled by 0.1: logits away from saturation
    batch = dataclasses.replace(batch, **{f: getattr(batch, f) * 0.1 for f in (
        "policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")})
    leaves = {f: getattr(batch, f).clone().requires_grad_(True)
              for f in ("beta", "policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")}
    out = run("pmo", dataclasses.replace(batch, **leaves), alpha=alpha)
    out.per_pair.sum().backward()
    ps = pairs(batch)
    z = [(alpha + p.b) * (p.pc - p.pr) - p.b * (p.rc - p.rr) for p in ps]
    s_neg = [sig(-zi) for zi in z]
    check(out.per_pair, [nls(zi) for zi in z])
    g = {f: leaf.grad for f, leaf in leaves.items()}
    check(g["policy_chosen"], [-(alpha + p.b) * s for p, s in zip(ps, s_neg, strict=True)], "dL/dS_w")
    check(g["policy_rejected"], [(alpha + p.b) * s for p, s in zip(ps, s_neg, strict=True)], "dL/dS_l")
    check(g["ref_chosen"], [p.b * s for p, s in zip(ps, s_neg, strict=True)], "dL/dR_w")
    check(g["ref_rejected"], [-p.b * s for p, s in zip(ps, s_neg, strict=True)], "dL/dR_l")
    check(g["beta"], [-s * p.d for p, s in zip(ps, s_neg, strict=True)], "dL/dbeta_i")
    assert min(s_neg) > 0.01 and any(zi < 0 for zi in z) and any(zi > 0 for zi in z)

    total = alpha + batch.beta
    scale = batch.beta / total
    pc = batch.policy_chosen.clone().requires_grad_(True)
    pr = batch.policy_rejected.clone().requires_grad_(True)
    dpo_logit = total * ((pc - scale * batch.ref_chosen) - (pr - scale * batch.ref_rejected))
    dpo_loss = torch.log1p(torch.exp(-dpo_logit))  # -log s(x) = log(1 + e^-x); |x| < 5 here
    dpo_loss.sum().backward()
    check(out.per_pair, dpo_loss.tolist(), "PMO = DPO(a + b) on pi_ref^(b/(a+b))")
    check(g["policy_chosen"], pc.grad.tolist(), "dL/dS_w as DPO's")
    check(g["policy_rejected"], pr.grad.tolist(), "dL/dS_l as DPO's")


SGDPO_MODES = [
    pytest.param(pilot, contiguous, id=f"pilot_{pilot}-{'contiguous' if contiguous else 'scattered'}")
    for pilot in ("d", "s") for contiguous in (False, True)
]


@pytest.mark.parametrize("detach", [False, True], ids=["", "detach_pilot"])
@pytest.mark.parametrize(("pilot", "contiguous"), SGDPO_MODES)
def test_sgdpo_gradient_matches_theorem_1(pilot: str, contiguous: bool, detach: bool) -> None:
    """SGDPO's Theorem 1 gives the partial derivatives of its loss w.r.t. the likelihood ratios of
    the chosen and rejected replies; the formulas did not survive in the text we have, so they are
    derived here for our reconstruction. With x1, x2 the ratios pi_theta / pi_ref of the whole
    replies and u1, u2 those of their sub-sequences (x = exp(sum of its tokens' log-ratios)):

        L = log(1 + (u2 / x1)^b) + log(1 + (x2 / u1)^b)
        dL/dx1 = -b u2^b / (x1 (x1^b + u2^b))     dL/du1 = -b x2^b / (u1 (u1^b + x2^b))
        dL/dx2 = b x2^(b-1) / (u1^b + x2^b)        dL/du2 = b u2^(b-1) / (x1^b + u2^b)

    By the chain rule a chosen token's gradient is x1 dL/dx1, plus u1 dL/du1 when the chosen
    sub-sequence took it; a rejected token's x2 dL/dx2, plus u2 dL/du2 when the rejected one took
    it; `detach_pilot` drops the u terms. Compared with autograd of the `sgdpo` loss on random
    distinct per-token log-ratios, computed here in Python from the ratios themselves."""
    batch = make_batch(12)
    knobs: dict[str, Any] = {"r1": 0.6, "r2": 0.65, "pilot": pilot, "contiguous": contiguous}
    sel = sgdpo_draw(batch, **knobs)  # a fresh context draws the same sub-sequences every call
    draw = sgdpo_draw(batch, detach_pilot=detach, **knobs)
    for s, lens, r in ((sel.sel_w, LENS_W, 0.6), (sel.sel_l, LENS_L, 0.65)):
        assert s.sum(1).tolist() == [_subseq(r, n) for n in lens]
    want_w, want_l = torch.zeros_like(draw.grad_w), torch.zeros_like(draw.grad_l)
    for i, (p, tw, tl, sw, sl) in enumerate(zip(pairs(batch), *_ratios(batch), _positions(sel.sel_w),
                                                _positions(sel.sel_l), strict=True)):
        b = p.b
        x1, x2 = math.exp(sum(tw)), math.exp(sum(tl))
        u1, u2 = math.exp(sum(tw[t] for t in sw)), math.exp(sum(tl[t] for t in sl))
        d_x1 = -b * u2**b / (x1 * (x1**b + u2**b))
        d_u1 = -b * x2**b / (u1 * (u1**b + x2**b))
        d_x2 = b * x2 ** (b - 1) / (u1**b + x2**b)
        d_u2 = b * u2 ** (b - 1) / (x1**b + u2**b)
        want_w[i, :len(tw)], want_l[i, :len(tl)] = x1 * d_x1, x2 * d_x2
        if not detach:
            want_w[i, sw] += u1 * d_u1
            want_l[i, sl] += u2 * d_u2
    check(draw.per_pair, _pilot_loss(batch, sel.sel_w, sel.sel_l))
    torch.testing.assert_close(draw.grad_w, want_w, rtol=1e-5, atol=1e-6, msg="d L / d chosen tokens")
    torch.testing.assert_close(draw.grad_l, want_l, rtol=1e-5, atol=1e-6, msg="d L / d rejected tokens")


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
