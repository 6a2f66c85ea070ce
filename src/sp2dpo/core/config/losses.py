"""The preference losses a method can name, with their knobs (``train.methods[].loss_args``).

One frozen dataclass of knobs per loss (defaults from the source papers; settings the sources do
not settle are marked [U] in the help and in docs/losses.md) and one :class:`LossSpec` of facts
the trainer and the config checks need: does the loss read a reference model, per-token
log-probs, a per-pair beta, a margin column? The loss functions themselves live in
``sp2dpo.train.losses``, registered under the same names (a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from sp2dpo.core.config.base import build, field
from sp2dpo.core.errors import ConfigError

#: Where a margin-reading loss takes m_i from: ``scores`` = score_chosen - score_rejected of the
#: pairs table (UltraFeedback's ground truth); ``semantic`` = the teachers' effective gap
#: S_eff in [0, 1] recovered from a beta artifact column, times ``semantic_scale`` (our
#: extension); ``auto`` = scores where every pair has them, else semantic; ``fixed`` (dpo_margin
#: only) = one constant m.
MarginSource = Literal["auto", "scores", "semantic", "fixed"]


def _check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and (
        value < hi if hi_open else value <= hi
    )
    if not ok:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ConfigError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value}")


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a positive number, got {value}")


@dataclasses.dataclass(frozen=True)
class NoArgs:
    """The loss has no knobs besides beta."""


@dataclasses.dataclass(frozen=True)
class EpsilonArgs:
    """Label-noise rate of robust DPO and conservative DPO."""

    epsilon: float = field(0.1, "Label-noise rate eps in [0, 0.5); 0 gives DPO.")

    def __post_init__(self) -> None:
        _check_range("epsilon", self.epsilon, 0.0, 0.5, hi_open=True)


#: BCO's EMA decay when ``delta: ema``; another value with another ``delta`` is refused.
_BCO_EMA = 0.9


@dataclasses.dataclass(frozen=True)
class BcoArgs:
    """Pairwise BCO: rewards shifted by a running statistic delta of the rewards."""

    delta: Literal["running", "pooled", "ema", "none"] = field(
        "running",
        "running: delta = mean over the steps so far of each step's mean reward (TRL <= 0.28's "
        "`bco_pair`); pooled: mean of every reward so far (TRL's BCOTrainer); ema: EMA from 0 of "
        "the batch's mean reward, decay `ema` (ours); none: delta = 0 (TRL >= 0.29's `bco_pair`).",
    )
    ema: float = field(_BCO_EMA, "delta ema only: decay of the moving average (weight of the old one).")

    def __post_init__(self) -> None:
        _check_range("ema", self.ema, 0.0, 1.0, hi_open=True)
        if self.delta != "ema" and self.ema != _BCO_EMA:
            raise ConfigError(f"ema applies to delta ema only; delta is {self.delta!r}")


@dataclasses.dataclass(frozen=True)
class SimpoArgs:
    """SimPO: reference-free, token-averaged, target margin gamma = beta * gamma_beta_ratio."""

    gamma_beta_ratio: float = field(0.25, "gamma / beta (SimPO's default; its configs use 0.1 to 0.8).")
    beta_mean: float | None = field(
        None,
        "With a beta_column: rescale beta_i so its mean over the training pairs is this value "
        "(SimPO's beta is 2 to 10, DPO's about 0.1); null: use beta_i as is.",
    )

    def __post_init__(self) -> None:
        _check_range("gamma_beta_ratio", self.gamma_beta_ratio, 0.0, math.inf, hi_open=True)
        if self.beta_mean is not None:
            _check_positive("beta_mean", self.beta_mean)


@dataclasses.dataclass(frozen=True)
class CpoArgs:
    """CPO: reference-free sigmoid on summed log-probs plus an NLL term on the chosen replies."""

    nll_weight: float = field(1.0, "Weight lambda of the token-mean NLL on the chosen replies (0: none).")

    def __post_init__(self) -> None:
        _check_range("nll_weight", self.nll_weight, 0.0, math.inf, hi_open=True)


@dataclasses.dataclass(frozen=True)
class SampoArgs:
    """SamPO: the longer reply is down-sampled to the shorter one's token count."""

    shared_draw: bool = field(
        True,
        "One index draw for the policy and the reference sums (ours); false: independent draws "
        "as the official code does.",
    )


@dataclasses.dataclass(frozen=True)
class BetaDpoArgs:
    """beta-DPO: one batch-level beta from running statistics of the gaps, with data filtering."""

    a: float = field(0.6, "Scale of the beta adjustment beta = beta0 * (1 + a * (mean kept gap - mu)).")
    rho: float = field(0.2, "Fraction of pairs filtered out per batch (`mode_weight`; 0 keeps all).")
    ema: float = field(0.9, "Decay of the running mean and std of the gaps.")

    def __post_init__(self) -> None:
        _check_range("rho", self.rho, 0.0, 1.0, hi_open=True)
        _check_range("ema", self.ema, 0.0, 1.0, hi_open=True)


@dataclasses.dataclass(frozen=True)
class AlphaDpoArgs:
    """alpha-DPO: token-averaged, adaptive margin from running statistics of the reference gap."""

    alpha: float = field(0.2, "Weight alpha of the standardised gap in the margin (0 gives SimPO).")
    gamma_beta_ratio: float = field(0.6, "gamma / beta of the constant part of the margin.")
    ema: float = field(0.9, "Decay of the running mean and std of the gaps.")
    beta_mean: float | None = field(
        None,
        "With a beta_column: rescale beta_i so its mean over the training pairs is this value "
        "(alpha-DPO's beta is 2.5 to 10); null: use beta_i as is.",
    )

    def __post_init__(self) -> None:
        _check_range("ema", self.ema, 0.0, 1.0, hi_open=True)
        if self.beta_mean is not None:
            _check_positive("beta_mean", self.beta_mean)


@dataclasses.dataclass(frozen=True)
class FocalpoArgs:
    """FocalPO: DPO loss scaled by p^gamma, p = sigmoid(beta * Delta)."""

    gamma: float = field(0.05, "Focusing exponent gamma (0 gives DPO) [U: the paper's value is not public].")
    detach_weight: bool = field(False, "Stop the gradient through p^gamma [U].")

    def __post_init__(self) -> None:
        _check_range("gamma", self.gamma, 0.0, math.inf, hi_open=True)


@dataclasses.dataclass(frozen=True)
class MarginArgs:
    """Where a pair's margin m_i comes from (DPO-margin, scaled BT)."""

    margin_source: MarginSource = field(
        "auto",
        "scores: score_chosen - score_rejected; semantic: the teachers' gap from `margin_column`, "
        "times `semantic_scale`; auto: scores when every pair has them, else semantic; fixed: "
        "`margin` for every pair (dpo_margin only).",
    )
    margin: float = field(1.0, "The constant margin of margin_source fixed (DPO-margin-1).")
    scale: float = field(1.0, "kappa: multiplies every margin (1 reproduces the paper's raw scores).")
    margin_column: str = field(
        "beta_annotators_mean_ens",
        "Beta artifact column whose beta_i gives the semantic gap (beta_i - beta_min) / "
        "(beta_max - beta_min).",
    )
    semantic_scale: float = field(
        10.0, "Puts the semantic gap in [0, 1] on UltraFeedback's score-difference scale (0 to 10)."
    )
    normalize: bool = field(
        False, "scaled_bt: divide the weights by their mean over the training pairs [U: ours, not the paper's]."
    )

    def __post_init__(self) -> None:
        _check_range("scale", self.scale, 0.0, math.inf, hi_open=True)
        _check_positive("semantic_scale", self.semantic_scale)
        if not math.isfinite(self.margin):
            raise ConfigError(f"margin must be finite, got {self.margin}")


@dataclasses.dataclass(frozen=True)
class PmoArgs:
    """PMO: entropy weight alpha on top of DPO's KL weight beta."""

    alpha: float = field(
        0.05,
        "Entropy weight alpha >= 0 (0 gives DPO); the paper's benchmark setting is (alpha, beta) "
        "= (0.05, 0.05), its synthetic-task advice alpha in [0.9, 1].",
    )

    def __post_init__(self) -> None:
        _check_range("alpha", self.alpha, 0.0, math.inf, hi_open=True)


@dataclasses.dataclass(frozen=True)
class SgdpoArgs:
    """SGDPO: a pilot term on sub-sequences of the replies [U: a reconstruction]."""

    r1: float = field(1.0, "Fraction of the chosen reply's tokens in its sub-sequence (grid 0.6 to 1.0) [U].")
    r2: float = field(0.8, "Fraction of the rejected reply's tokens in its sub-sequence (grid 0.6 to 1.0) [U].")
    pilot: Literal["d", "s"] = field(
        "d", "d: independent index draws for the two replies (adopted); s: the same relative positions."
    )
    contiguous: bool = field(False, "Sub-sequences are contiguous spans instead of scattered subsets [U].")
    combine: Literal["replace", "add"] = field(
        "replace", "replace: the pilot loss alone; add: DPO + pilot_weight * pilot [U]."
    )
    pilot_weight: float = field(1.0, "lambda of combine add.")
    detach_pilot: bool = field(False, "Stop the gradient through the sub-sequence ratios [U].")

    def __post_init__(self) -> None:
        _check_range("r1", self.r1, 0.0, 1.0, lo_open=True)
        _check_range("r2", self.r2, 0.0, 1.0, lo_open=True)
        _check_range("pilot_weight", self.pilot_weight, 0.0, math.inf, hi_open=True)


@dataclasses.dataclass(frozen=True)
class DpoPopArgs:
    """DPO-PoP: tuples (stronger pair, weaker pair); the weaker one's clipped target gap is the margin."""

    k: int = field(2, "Tuples per preference pair: |tuples| = k x |pairs| (the paper: 2).")
    sampler: Literal["iter", "random"] = field(
        "iter", "iter: every pair is the stronger member of k tuples; random: random pairs of pairs."
    )
    min_margin_diff: float = field(1.0, "Keep tuples whose margins differ by at least this (the paper: 1).")
    max_margin: float | None = field(10.0, "M_max: clip of the margin in reward units (null: no clip, eq. 6).")
    polyak_tau: float = field(
        0.99, "Target <- tau * target + (1 - tau) * policy after every optimizer step [U: not in the paper]."
    )
    label_noise: float = field(0.0, "Probability of flipping a tuple's order (the paper's App. F ablation).")
    margin_source: Literal["auto", "scores", "semantic"] = field(
        "auto", "Margins that order the pairs: as `margin_source` of dpo_margin (fixed not allowed)."
    )
    margin_column: str = field("beta_annotators_mean_ens", "Beta artifact column of the semantic gap.")
    semantic_scale: float = field(10.0, "Puts the semantic gap on the score-difference scale.")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        _check_range("min_margin_diff", self.min_margin_diff, 0.0, math.inf, hi_open=True)
        if self.max_margin is not None:
            _check_positive("max_margin", self.max_margin)
        _check_range("polyak_tau", self.polyak_tau, 0.0, 1.0)
        _check_range("label_noise", self.label_noise, 0.0, 0.5)
        _check_positive("semantic_scale", self.semantic_scale)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What the trainer and the config checks need to know about a loss.

    Attributes:
        args: the dataclass of its knobs.
        reference: it reads the reference model (False: the reference pass is skipped).
        token_level: it reads per-token log-probs of the reference too (no precomputed sums).
        per_pair_beta: a per-pair beta_i can replace its beta (False: a `beta_column` is refused).
        margins: it reads a margin per pair (DPO-margin, scaled BT, DPO-PoP's ordering).
        averaged: its log-probs are token averages (else sums over the completion).
        trl: TRL 1.16 ``DPOTrainer`` ``loss_type`` computing the same loss with a constant beta.
        summary: one line for the docs.
    """

    args: type
    summary: str
    reference: bool = True
    token_level: bool = False
    per_pair_beta: bool = True
    margins: bool = False
    averaged: bool = False
    trl: str | None = None


#: Every loss by its registry name (``train.methods[].loss``).
LOSS_SPECS: dict[str, LossSpec] = {
    "sigmoid": LossSpec(NoArgs, "DPO / SP2DPO: -log sigmoid(beta_i Delta)", trl="sigmoid"),
    "ipo": LossSpec(NoArgs, "IPO: (Delta_avg - 1/(2 beta_i))^2", averaged=True, trl="ipo"),
    "hinge": LossSpec(NoArgs, "SLiC hinge: relu(1 - beta_i Delta)", trl="hinge"),
    "robust": LossSpec(EpsilonArgs, "robust DPO: unbiased under label noise eps", trl="robust"),
    "cdpo": LossSpec(EpsilonArgs, "conservative DPO: labels smoothed by eps"),
    "nca_pair": LossSpec(NoArgs, "NCA, pairwise", trl="nca_pair"),
    "bco_pair": LossSpec(BcoArgs, "BCO, pairwise, rewards shifted by a running mean delta", trl="bco_pair"),
    "simpo": LossSpec(SimpoArgs, "SimPO: reference-free, averaged, margin gamma", reference=False, averaged=True),
    "cpo": LossSpec(CpoArgs, "CPO: reference-free sigmoid + NLL on the chosen replies", reference=False),
    "sampo": LossSpec(SampoArgs, "SamPO: DPO on down-sampled tokens", token_level=True),
    "beta_dpo": LossSpec(BetaDpoArgs, "beta-DPO: batch-level dynamic beta, filtered pairs", per_pair_beta=False),
    "alpha_dpo": LossSpec(AlphaDpoArgs, "alpha-DPO: averaged, adaptive reward margin", averaged=True),
    "focalpo": LossSpec(FocalpoArgs, "FocalPO: DPO loss times p^gamma"),
    "dpo_margin": LossSpec(MarginArgs, "DPO-margin: -log sigmoid(beta_i Delta - m_i)", margins=True),
    "scaled_bt": LossSpec(MarginArgs, "scaled Bradley-Terry: m_i * (-log sigmoid(beta_i Delta))", margins=True),
    "pmo": LossSpec(PmoArgs, "PMO: -log sigmoid(beta_i Delta + alpha (S_w - S_l))"),
    "sgdpo": LossSpec(SgdpoArgs, "SGDPO: pilot term on sub-sequences [U]", token_level=True),
    "dpo_pop": LossSpec(DpoPopArgs, "DPO-PoP: margin = clipped target gap of a weaker pair", margins=True),
}


def loss_spec(name: str, where: str = "loss") -> LossSpec:
    """The spec of loss ``name``; the error lists the registered names."""
    try:
        return LOSS_SPECS[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown loss {name!r}; choose one of {', '.join(LOSS_SPECS)}") from None


def build_loss_args(name: str, data: Mapping[str, Any] | None, where: str) -> Any:
    """The knobs of loss ``name`` from a ``loss_args`` mapping (unknown keys and bad values name
    ``where`` and list the allowed keys)."""
    args = build(loss_spec(name, where).args, data or {}, where)
    if name == "scaled_bt" and args.margin_source == "fixed":
        raise ConfigError(f"{where}.margin_source: scaled_bt needs per-pair margins (scores, semantic or auto)")
    return args
