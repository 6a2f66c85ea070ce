"""Preference losses with a per-pair temperature: one pure function per loss, one interface.

Every loss is ``fn(batch: PairBatch, args, ctx: LossContext) -> LossOutput``:

- :class:`PairBatch` holds what the trainer computed for B pairs: the per-pair beta_i, the
  policy's summed log-probs S_theta, the reference's S_ref (``None`` for reference-free losses),
  completion lengths, per-token log-probs with their masks (token-level losses), a margin per
  pair (margin losses), the NLL of the chosen replies (CPO) and the Polyak target's gap of a
  weaker pair (DPO-PoP).
- ``args`` is the loss's knob dataclass (:mod:`sp2dpo.core.config.losses`).
- :class:`LossContext` gives a seeded generator (losses that sample tokens or pairs), running
  statistics that persist across steps and a ``gather`` over processes (identity on one).
- :class:`LossOutput` is the per-pair loss (B,), optional per-pair weights (the batch loss is the
  weighted mean; pairs with weight 0 are filtered out), an optional extra scalar term and metrics.

Losses compute in float32 with ``logsigmoid`` (never ``log(sigmoid(.))``). Notation: rho(y) =
S_theta(y) - S_ref(y), Delta = rho(y_w) - rho(y_l); formulas, sources and the settings the
sources leave open are in docs/losses.md. :data:`LOSSES` registers every loss under the names of
:data:`sp2dpo.core.config.losses.LOSS_SPECS`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class PairBatch:
    """The trainer's view of B preference pairs (every tensor float32 unless noted).

    Attributes:
        beta: beta_i, (B,).
        policy_chosen, policy_rejected: S_theta(y_w), S_theta(y_l), summed over completion tokens.
        ref_chosen, ref_rejected: S_ref(y_w), S_ref(y_l); ``None`` when the loss is reference-free.
        chosen_lengths, rejected_lengths: completion token counts.
        chosen_tokens, rejected_tokens: per-token policy log-probs (B, T), 0 outside the completion.
        ref_chosen_tokens, ref_rejected_tokens: the same under the reference.
        chosen_mask, rejected_mask: (B, T) bool, True on completion tokens.
        margin: m_i per pair (margin losses), (B,).
        nll: token-mean NLL of the chosen replies over the batch (scalar; CPO).
        weak_delta: DPO-PoP: Delta of each tuple's weaker pair under the Polyak target, detached.
        weak_beta: DPO-PoP: beta of the weaker pair.
    """

    beta: torch.Tensor
    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    chosen_lengths: torch.Tensor | None = None
    rejected_lengths: torch.Tensor | None = None
    chosen_tokens: torch.Tensor | None = None
    rejected_tokens: torch.Tensor | None = None
    ref_chosen_tokens: torch.Tensor | None = None
    ref_rejected_tokens: torch.Tensor | None = None
    chosen_mask: torch.Tensor | None = None
    rejected_mask: torch.Tensor | None = None
    margin: torch.Tensor | None = None
    nll: torch.Tensor | None = None
    weak_delta: torch.Tensor | None = None
    weak_beta: torch.Tensor | None = None

    @property
    def chosen_logratios(self) -> torch.Tensor:
        """rho(y_w) = S_theta(y_w) - S_ref(y_w) (S_theta alone without a reference)."""
        return _ratio(self.policy_chosen, self.ref_chosen)

    @property
    def rejected_logratios(self) -> torch.Tensor:
        return _ratio(self.policy_rejected, self.ref_rejected)

    @property
    def delta(self) -> torch.Tensor:
        """Delta = rho(y_w) - rho(y_l) from summed log-probs."""
        return self.chosen_logratios - self.rejected_logratios

    def averaged(self, *, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-averaged (chosen, rejected) scores: A_theta, minus A_ref when ``reference``."""
        lw, ll = _need(self.chosen_lengths, "chosen_lengths"), _need(self.rejected_lengths, "rejected_lengths")
        lw, ll = lw.float().clamp(min=1.0), ll.float().clamp(min=1.0)
        cw = self.chosen_logratios if reference else self.policy_chosen.float()
        rl = self.rejected_logratios if reference else self.policy_rejected.float()
        return cw / lw, rl / ll


def _ratio(policy: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
    return policy.float() if ref is None else policy.float() - ref.float()


def _need(value: Any, name: str) -> Any:
    if value is None:
        raise ValueError(f"this loss needs `{name}` in its PairBatch")
    return value


class RunningMoments:
    """Running statistics kept across steps (``<name>/mean``, ``<name>/std``, ``<name>/count``).

    ``update(name, values, decay)`` folds the batch's mean and std of ``values`` into exponential
    moving averages initialised at 0, as the source codes do, and returns the new ``(mean, std)``;
    ``update_mean`` does the same for the mean alone; ``update_average`` keeps a plain running
    mean over all steps (TRL's ``RunningMoments``). ``state_dict``/``load_state_dict`` carry them
    through checkpoints.
    """

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def update(self, name: str, values: torch.Tensor, decay: float) -> tuple[float, float]:
        v = values.detach().float()
        mean = float(v.mean())
        std = float(v.std(unbiased=True)) if v.numel() > 1 else float("nan")
        if not math.isfinite(std):
            raise ValueError(
                f"running statistic {name!r} needs at least 2 pairs per step (per-device batch x "
                "processes); got 1"
            )
        m = decay * self.values.get(f"{name}/mean", 0.0) + (1 - decay) * mean
        s = decay * self.values.get(f"{name}/std", 0.0) + (1 - decay) * std
        self.values[f"{name}/mean"], self.values[f"{name}/std"] = m, s
        return m, s

    def update_mean(self, name: str, values: torch.Tensor, decay: float) -> float:
        m = decay * self.values.get(f"{name}/mean", 0.0) + (1 - decay) * float(values.detach().float().mean())
        self.values[f"{name}/mean"] = m
        return m

    def update_average(self, name: str, values: torch.Tensor, *, pooled: bool) -> float:
        """Fold ``values`` into a running mean over every step so far (count 0 at first, so the
        first step's value is the batch mean) and return it. ``pooled`` counts every value: the
        mean of all values seen; otherwise each step's mean counts once: the mean of the steps'
        means, which is what TRL's ``bco_pair`` gets by feeding its ``RunningMoments`` the batch's
        mean reward."""
        v = values.detach().double()
        n = float(v.numel()) if pooled else 1.0
        count = self.values.get(f"{name}/count", 0.0) + n
        mean = self.values.get(f"{name}/mean", 0.0)
        mean += (float(v.mean()) - mean) * n / count
        self.values[f"{name}/mean"], self.values[f"{name}/count"] = mean, count
        return mean

    def state_dict(self) -> dict[str, float]:
        return dict(sorted(self.values.items()))

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.values = {str(k): float(v) for k, v in state.items()}


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@dataclasses.dataclass
class LossContext:
    """What a loss may need beyond the batch.

    Attributes:
        generator: seeded CPU generator for sampling (tokens, kept pairs).
        moments: running statistics owned by the trainer (persist across steps).
        gather: concatenates a (B,) tensor over processes (identity on one process).
        shared_generator: seeded identically on every process (draws over the gathered batch).
        process_index, num_processes: this process's slice of a gathered tensor.
    """

    generator: torch.Generator = dataclasses.field(default_factory=lambda: torch.Generator().manual_seed(0))
    moments: RunningMoments = dataclasses.field(default_factory=RunningMoments)
    gather: Callable[[torch.Tensor], torch.Tensor] = _identity
    shared_generator: torch.Generator | None = None
    process_index: int = 0
    num_processes: int = 1

    def local(self, gathered: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor gathered with :attr:`gather` (equal batch sizes)."""
        size = gathered.shape[0] // self.num_processes
        return gathered[self.process_index * size:(self.process_index + 1) * size]


@dataclasses.dataclass
class LossOutput:
    """Per-pair losses (B,), optional weights (B,), an extra scalar term and metrics to log."""

    per_pair: torch.Tensor
    weight: torch.Tensor | None = None
    extra: torch.Tensor | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


def _nll_sig(z: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(z), stable for large |z|."""
    return -F.logsigmoid(z)


# -- the DPO family ----------------------------------------------------------------------------


def sigmoid(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """DPO / SP2DPO: ``-log sigmoid(beta_i Delta_i)`` (SP2DPO eq. 5; TRL ``sigmoid``).

    Example:
        >>> import torch
        >>> b = PairBatch(torch.tensor([0.1]), torch.tensor([-3.0]), torch.tensor([-3.0]),
        ...               torch.tensor([-3.0]), torch.tensor([-3.0]))
        >>> round(sigmoid(b, None, LossContext()).per_pair.item(), 6)  # log 2
        0.693147
    """
    return LossOutput(_nll_sig(batch.beta.float() * batch.delta))


def ipo(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """IPO (TRL ``ipo``): ``(Delta_avg - 1 / (2 beta_i))^2`` with token-averaged log-ratios."""
    cw, rl = batch.averaged(reference=True)
    return LossOutput((cw - rl - 1 / (2 * batch.beta.float())) ** 2)


def hinge(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """SLiC hinge (TRL ``hinge``): ``relu(1 - beta_i Delta_i)``."""
    return LossOutput(torch.relu(1 - batch.beta.float() * batch.delta))


def robust(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """Robust DPO (TRL ``robust``): ``[-(1-e) log s(z) + e log s(-z)] / (1 - 2e)``, z = beta_i Delta."""
    eps = float(args.epsilon)
    z = batch.beta.float() * batch.delta
    return LossOutput((-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps))


def cdpo(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """Conservative DPO: ``-(1-e) log s(z) - e log s(-z)``, z = beta_i Delta."""
    eps = float(args.epsilon)
    z = batch.beta.float() * batch.delta
    return LossOutput(-(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z))


def nca_pair(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """Pairwise NCA (TRL ``nca_pair``): r = beta_i rho;
    ``-log s(r_w) - 1/2 log s(-r_w) - 1/2 log s(-r_l)``."""
    b = batch.beta.float()
    rw, rl = b * batch.chosen_logratios, b * batch.rejected_logratios
    return LossOutput(-F.logsigmoid(rw) - 0.5 * F.logsigmoid(-rw) - 0.5 * F.logsigmoid(-rl))


def bco_pair(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """Pairwise BCO: ``-log s(r_w - delta) - log s(-(r_l - delta))``, r = beta_i rho.

    delta is a running statistic of the rewards of the gathered batch, updated before use and
    detached: ``running`` the mean over steps of each step's mean reward (TRL <= 0.28's
    ``bco_pair``), ``pooled`` the mean of every reward so far (TRL's ``BCOTrainer``), ``ema`` an
    EMA from 0 (decay ``args.ema``) of the batch's mean reward (ours); ``none`` is delta = 0, TRL
    >= 0.29's ``bco_pair``.
    """
    b = batch.beta.float()
    rw, rl = b * batch.chosen_logratios, b * batch.rejected_logratios
    delta = 0.0
    if args.delta != "none":
        rewards = torch.cat([ctx.gather(rw.detach()), ctx.gather(rl.detach())])
        if args.delta == "ema":
            delta = ctx.moments.update_mean("bco_delta", rewards, args.ema)
        else:
            delta = ctx.moments.update_average("bco_delta", rewards, pooled=args.delta == "pooled")
    return LossOutput(-F.logsigmoid(rw - delta) - F.logsigmoid(-(rl - delta)), metrics={"bco/delta": delta})


def simpo(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """SimPO (reference-free): ``-log s(beta_i (A_w - A_l) - gamma_i)``, gamma_i = beta_i * ratio."""
    aw, al = batch.averaged(reference=False)
    b = batch.beta.float()
    return LossOutput(_nll_sig(b * (aw - al) - b * float(args.gamma_beta_ratio)))


def cpo(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """CPO (reference-free): ``-log s(beta_i (S_w - S_l))`` + lambda x token-mean NLL(chosen)."""
    b = batch.beta.float()
    per_pair = _nll_sig(b * (batch.policy_chosen.float() - batch.policy_rejected.float()))
    extra = None
    if args.nll_weight:
        extra = float(args.nll_weight) * _need(batch.nll, "nll").float()
    return LossOutput(per_pair, extra=extra)


def focalpo(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """FocalPO: ``-p^gamma log p`` with p = sigmoid(beta_i Delta) (misranked pairs down-weighted)."""
    z = batch.beta.float() * batch.delta
    log_p = F.logsigmoid(z)
    weight = torch.exp(float(args.gamma) * log_p)  # p^gamma, stable
    if args.detach_weight:
        weight = weight.detach()
    return LossOutput(-weight * log_p)


def dpo_margin(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """DPO-margin: ``-log s(beta_i Delta - m_i)``, m_i in reward units (a column or a constant)."""
    m = _need(batch.margin, "margin").float()
    return LossOutput(_nll_sig(batch.beta.float() * batch.delta - m))


def scaled_bt(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """Scaled Bradley-Terry: ``m_i * (-log s(beta_i Delta))`` (the margin as a pair weight)."""
    m = _need(batch.margin, "margin").float()
    return LossOutput(m * _nll_sig(batch.beta.float() * batch.delta))


def pmo(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """PMO: ``-log s((alpha + beta_i)(S_w - S_l) - beta_i (R_w - R_l))``
    = ``-log s(beta_i Delta + alpha (S_w - S_l))``; alpha = 0 gives DPO."""
    b = batch.beta.float()
    policy_gap = batch.policy_chosen.float() - batch.policy_rejected.float()
    return LossOutput(_nll_sig(b * batch.delta + float(args.alpha) * policy_gap))


def dpo_pop(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """DPO-PoP (eq. 7): ``-log s(beta_s Delta(s) - clip(sg(beta_w Delta_target(w)), 0, M_max))``.

    The batch's pairs are the tuples' stronger pairs; ``weak_delta`` is the weaker pair's gap
    under the Polyak target (computed without gradient by the trainer).
    """
    weak = _need(batch.weak_delta, "weak_delta").detach().float() * _need(batch.weak_beta, "weak_beta").float()
    margin = weak.clamp(min=0.0) if args.max_margin is None else weak.clamp(0.0, float(args.max_margin))
    per_pair = _nll_sig(batch.beta.float() * batch.delta - margin)
    return LossOutput(per_pair, metrics={"pop/margin_mean": float(margin.mean())})


# -- losses with running statistics --------------------------------------------------------------


def beta_dpo(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """beta-DPO: one batch-level beta from running statistics of the gaps M = Delta, with filtering.

    1. mu, s <- EMA of the gathered batch's mean and std of M (updated before use);
    2. keep floor(B_global (1 - rho)) pairs drawn without replacement with probability
       proportional to exp(-((M - mu) / s)^2 / 2) (one draw over the gathered batch);
    3. beta_batch = beta0 (1 + a (mean kept M - mu)), at least 1e-3, detached;
    4. loss = mean over the kept pairs of -log s(beta_batch Delta).
    """
    delta = batch.delta
    m_all = ctx.gather(delta.detach())
    mu, s = ctx.moments.update("beta_dpo_gap", m_all, args.ema)
    # floor(B (1 - rho)) exactly (B * 0.2 is 1.9999... in floats); at least one pair is kept
    n_keep = max(1, math.floor(round(m_all.numel() * (1 - float(args.rho)), 9)))
    if n_keep >= m_all.numel():
        keep_all = torch.ones_like(m_all)
    else:
        w = torch.exp(-0.5 * ((m_all - mu) / max(s, 1e-8)) ** 2).cpu().double()
        if not torch.isfinite(w).all() or w.sum() <= 0:
            w = torch.ones_like(w)
        gen = ctx.shared_generator or ctx.generator
        idx = torch.multinomial(w, n_keep, replacement=False, generator=gen)
        keep_all = torch.zeros_like(m_all)
        keep_all[idx.to(m_all.device)] = 1.0
    beta0 = batch.beta.float()[0]
    kept_mean = float((m_all * keep_all).sum() / keep_all.sum())
    beta_batch = (beta0 * (1 + float(args.a) * (kept_mean - mu))).clamp(min=1e-3).detach()
    keep = ctx.local(keep_all)
    return LossOutput(
        _nll_sig(beta_batch * delta), weight=keep,
        metrics={"beta_dpo/beta": float(beta_batch), "beta_dpo/gap_mean": mu, "beta_dpo/gap_std": s},
    )


def alpha_dpo(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """alpha-DPO: ``-log s(beta_i [A_w - A_l - M_i])`` on token averages, with the margin
    ``M_i = sg(alpha (u_i - mu) / s + gamma / beta)``, u = averaged policy/reference gap, and
    mu, s the EMA of the gathered batch's mean and std of u (updated before use)."""
    aw, al = batch.averaged(reference=False)
    rw, rl = batch.averaged(reference=True)
    u = (rw - rl).detach()
    mu, s = ctx.moments.update("alpha_dpo_gap", ctx.gather(u), args.ema)
    margin = (float(args.alpha) * (u - mu) / max(s, 1e-8) + float(args.gamma_beta_ratio)).detach()
    per_pair = _nll_sig(batch.beta.float() * (aw - al - margin))
    return LossOutput(per_pair, metrics={"alpha_dpo/gap_mean": mu, "alpha_dpo/gap_std": s})


# -- token-level losses --------------------------------------------------------------------------


def sample_tokens(
    mask: torch.Tensor, counts: torch.Tensor, generator: torch.Generator, *, contiguous: bool = False,
    keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """A (B, T) bool mask choosing ``counts[b]`` of row b's completion tokens without replacement.

    Scattered subsets take the tokens with the smallest random keys (uniform over subsets);
    ``contiguous`` takes a span starting at floor(u (n - count + 1)), u uniform in [0, 1) (a
    uniform start). ``keys`` (B, T), if given, are shared draws: scattered subsets index them by
    position within the completion and contiguous spans take u from each row's first key, so two
    masks drawn with the same keys pick the same relative positions (the same span when lengths
    and counts agree, else the same fraction of each reply's free range).
    """
    mask = mask.bool()
    n = mask.sum(dim=1)
    counts = torch.minimum(counts.to(n.device).long(), n)
    pos = (mask.cumsum(dim=1) - 1).clamp(min=0)  # position within the completion
    if contiguous:
        u = torch.rand(mask.shape[0], generator=generator) if keys is None else keys[:, 0]
        free = n - counts
        start = torch.floor(u.to(mask.device).double() * (free + 1).double()).long()
        start = torch.minimum(start, free)  # u just under 1 must not round past the last start
        return mask & (pos >= start[:, None]) & (pos < (start + counts)[:, None])
    if keys is None:
        keys = torch.rand(mask.shape, generator=generator)
    keys = keys.to(mask.device)
    width = keys.shape[1]
    if width < mask.shape[1]:
        pad = torch.rand((mask.shape[0], mask.shape[1] - width), generator=generator).to(mask.device)
        keys = torch.cat([keys, pad], dim=1)
    k = torch.gather(keys, 1, pos.clamp(max=keys.shape[1] - 1)).masked_fill(~mask, float("inf"))
    rank = k.argsort(dim=1).argsort(dim=1)
    return mask & (rank < counts[:, None])


def _token_ratios(batch: PairBatch) -> tuple[torch.Tensor, ...]:
    cw_p = _need(batch.chosen_tokens, "chosen_tokens").float()
    rl_p = _need(batch.rejected_tokens, "rejected_tokens").float()
    cw_r = _need(batch.ref_chosen_tokens, "ref_chosen_tokens").float()
    rl_r = _need(batch.ref_rejected_tokens, "ref_rejected_tokens").float()
    return cw_p, rl_p, cw_r, rl_r, _need(batch.chosen_mask, "chosen_mask").bool(), _need(
        batch.rejected_mask, "rejected_mask"
    ).bool()


def sampo(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """SamPO: both replies reduced to T_m = min(|y_w|, |y_l|) tokens drawn uniformly without
    replacement (the shorter keeps all), then ``-log s(beta_i [rho~_w - rho~_l])``.

    ``shared_draw`` (default) sums policy and reference over the same tokens; false draws the
    reference's tokens separately, as the official code does.
    """
    cw_p, rl_p, cw_r, rl_r, mw, ml = _token_ratios(batch)
    t_m = torch.minimum(mw.sum(1), ml.sum(1))
    sel_w, sel_l = sample_tokens(mw, t_m, ctx.generator), sample_tokens(ml, t_m, ctx.generator)
    if args.shared_draw:
        ref_w, ref_l = sel_w, sel_l
    else:
        ref_w, ref_l = sample_tokens(mw, t_m, ctx.generator), sample_tokens(ml, t_m, ctx.generator)
    rho_w = (cw_p * sel_w).sum(1) - (cw_r * ref_w).sum(1)
    rho_l = (rl_p * sel_l).sum(1) - (rl_r * ref_l).sum(1)
    return LossOutput(_nll_sig(batch.beta.float() * (rho_w - rho_l)))


def sgdpo(batch: PairBatch, args: Any, ctx: LossContext) -> LossOutput:
    """SGDPO pilot loss [U: a reconstruction]:
    ``-log s(beta_i [rho(y_w) - rho^(y^_l)]) - log s(beta_i [rho^(y^_w) - rho(y_l)])``,
    rho^ summed over ceil(r |y|) tokens sampled per step (scattered or contiguous; Pilot_d:
    independent draws, Pilot_s: one set of keys for both replies, so the same relative positions,
    see :func:`sample_tokens`). ``combine: add`` gives DPO + lambda x pilot. r1 = r2 = 1 gives
    2 x DPO.
    """
    cw_p, rl_p, cw_r, rl_r, mw, ml = _token_ratios(batch)
    nw, nl = mw.sum(1), ml.sum(1)
    # ceil(r |y|) exactly (0.6 * 25 is 15.000001 in float32)
    cnt_w = torch.ceil((float(args.r1) * nw.double()).round(decimals=9)).long()
    cnt_l = torch.ceil((float(args.r2) * nl.double()).round(decimals=9)).long()
    keys = None
    if args.pilot == "s":
        keys = torch.rand((mw.shape[0], max(mw.shape[1], ml.shape[1])), generator=ctx.generator)
    sel_w = sample_tokens(mw, cnt_w, ctx.generator, contiguous=args.contiguous, keys=keys)
    sel_l = sample_tokens(ml, cnt_l, ctx.generator, contiguous=args.contiguous, keys=keys)
    ratio_w, ratio_l = (cw_p - cw_r) * mw, (rl_p - rl_r) * ml
    rho_w, rho_l = ratio_w.sum(1), ratio_l.sum(1)
    sub_w, sub_l = (ratio_w * sel_w).sum(1), (ratio_l * sel_l).sum(1)
    if args.detach_pilot:
        sub_w, sub_l = sub_w.detach(), sub_l.detach()
    b = batch.beta.float()
    pilot = _nll_sig(b * (rho_w - sub_l)) + _nll_sig(b * (sub_w - rho_l))
    if args.combine == "add":
        return LossOutput(_nll_sig(b * (rho_w - rho_l)) + float(args.pilot_weight) * pilot)
    return LossOutput(pilot)


#: Every loss by its registry name (``train.methods[].loss``).
LOSSES: dict[str, Callable[[PairBatch, Any, LossContext], LossOutput]] = {
    "sigmoid": sigmoid,
    "ipo": ipo,
    "hinge": hinge,
    "robust": robust,
    "cdpo": cdpo,
    "nca_pair": nca_pair,
    "bco_pair": bco_pair,
    "simpo": simpo,
    "cpo": cpo,
    "sampo": sampo,
    "beta_dpo": beta_dpo,
    "alpha_dpo": alpha_dpo,
    "focalpo": focalpo,
    "dpo_margin": dpo_margin,
    "scaled_bt": scaled_bt,
    "pmo": pmo,
    "sgdpo": sgdpo,
    "dpo_pop": dpo_pop,
}


def get(name: str) -> Callable[[PairBatch, Any, LossContext], LossOutput]:
    """The loss registered as ``name``; the error lists the registered names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}") from None


def reduce(out: LossOutput, ctx: LossContext) -> torch.Tensor:
    """The batch loss: the mean of ``per_pair`` (weighted when weights are given) plus ``extra``.

    With weights, the normaliser is the weight sum over *all* processes times their number, so
    that DDP's average of the per-process gradients is the gradient of the global weighted mean.
    """
    if out.weight is None:
        loss = out.per_pair.mean()
    else:
        w = out.weight.to(out.per_pair)
        total = ctx.gather(w.detach()).sum().clamp(min=1e-12)
        loss = (out.per_pair * w).sum() * ctx.num_processes / total
    if out.extra is not None:
        loss = loss + out.extra
    return loss
