"""Sections ``aggregate`` and ``beta``: the aggregation operators and the temperature envelope."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Literal

from sp2dpo.core.config.base import field
from sp2dpo.core.errors import ConfigError
from sp2dpo.core.schemas import ANNOTATOR_PATTERN, CATEGORIES, VARIANT_PATTERN


@dataclasses.dataclass(frozen=True)
class BetaConfig:
    """The temperature envelope of Eq. (30) (paper App. A.6) and the `beta_random` control."""

    min: float = field(0.03, "beta_min: the temperature of an effective gap of 0 (paper: 0.03).")
    max: float = field(0.3, "beta_max: the temperature of an effective gap of 1 (paper: 0.3).")
    seed: int = field(
        42,
        "Seed of `beta_random` ~ U[min, max], drawn per pair from sha256(f'{seed}:{prompt_id}').",
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min) and math.isfinite(self.max) and 0.0 < self.min < self.max):
            raise ConfigError(
                f"beta: need finite 0 < min < max, got min={self.min}, max={self.max}"
            )


@dataclasses.dataclass(frozen=True)
class EnvelopeConfig:
    """A per-category envelope (``aggregate.category_envelopes.<Category>``)."""

    min: float = field(0.03, "beta for an effective gap of 0 in this category.")
    max: float = field(0.3, "beta for an effective gap of 1 in this category.")

    def __post_init__(self) -> None:
        if not 0.0 < self.min <= self.max:
            raise ConfigError(f"need 0 < min <= max, got min={self.min}, max={self.max}")


@dataclasses.dataclass(frozen=True)
class AggregateConfig:
    """Operators of the ``aggregate`` stage (paper App. C); the defaults are the paper's."""

    prompt_operator: Literal["median", "weighted_mean"] = field(
        "median",
        "Prompt-level operator giving effective_gap_<A>_ens: `median` over variants (Eq. 31) or "
        "`weighted_mean` with `prompt_weights` (Eq. 41).",
    )
    prompt_weights: dict[str, float] = field(
        {},
        "gamma_k per variant (`v1: 2.0`), >= 0; unlisted variants weigh 1. Used by "
        "weighted_mean and `pooled`.",
    )
    teacher_operators: list[Literal["median", "trimmed_mean", "huber", "weighted_mean"]] = field(
        [],
        "Teacher-level operators computed besides the paper's mean (Eq. 34); each adds columns "
        "beta_annotators_<op>_v<k> and beta_annotators_<op>_ens (C.5.3, Eq. 42).",
    )
    teacher_weights: dict[str, float] = field(
        {},
        "alpha_j per annotator id, >= 0; unlisted annotators weigh 1. Used by weighted_mean "
        "and `pooled`.",
    )
    trim_fraction: float = field(
        0.2, "trimmed_mean: drop floor(trim_fraction * J) teachers at each end, in [0, 0.5)."
    )
    huber_delta: float = field(
        0.05, "huber: threshold delta of the Huber M-estimate, in beta units (> 0)."
    )
    pooled: bool = field(
        False, "Add effective_gap_pooled / beta_pooled: weighted mean of all J x K gaps (Eq. 43)."
    )
    bias_decomposition: bool = field(
        False,
        "Add effective_gap_debiased / beta_debiased from g_ijk = g_i + b_j + d_k (Eq. 44); the "
        "offsets go to reports/aggregate.json.",
    )
    bias_ridge: float = field(
        1.0, "Ridge penalty on the offsets b_j, d_k of bias_decomposition (>= 0)."
    )
    damping: Literal["none", "exp", "inverse"] = field(
        "none",
        "Damp effective_gap_<A>_ens by h(u), u = prompt MAD (Eqs. 39-40): `exp` exp(-lambda u), "
        "`inverse` 1/(1 + lambda u), `none` off (paper).",
    )
    damping_lambda: float = field(1.0, "lambda of the damping (>= 0).")
    category_envelopes: dict[str, EnvelopeConfig] = field(
        {},
        "Per-category envelopes (`Style: {min: 0.03, max: 0.1}`), inside [beta.min, beta.max]; "
        "unlisted categories use beta.min/max (paper: none).",
    )
    strict: bool = field(
        False,
        "Stop with an error on the first bad or missing call instead of excluding its pair "
        "(failed calls are always excluded).",
    )

    def __post_init__(self) -> None:
        for key, value in (*self.prompt_weights.items(), *self.teacher_weights.items()):
            if not value >= 0.0 or value == float("inf"):
                raise ConfigError(
                    f"aggregate: weight {key!r} must be a finite number >= 0, got {value}"
                )
        if self.prompt_weights or self.teacher_weights or self.category_envelopes:
            for key in self.prompt_weights:
                if not re.match(VARIANT_PATTERN, key):
                    raise ConfigError(
                        f"aggregate.prompt_weights: {key!r} is not a variant name (v1, v2, ...)"
                    )
            for key in self.teacher_weights:
                if not re.match(ANNOTATOR_PATTERN, key):
                    raise ConfigError(f"aggregate.teacher_weights: {key!r} is not an annotator id")
            unknown = sorted(set(self.category_envelopes) - set(CATEGORIES))
            if unknown:
                raise ConfigError(
                    f"aggregate.category_envelopes: unknown categor(ies) {', '.join(unknown)}; "
                    f"allowed: {', '.join(CATEGORIES)}"
                )
        if len(set(self.teacher_operators)) != len(self.teacher_operators):
            raise ConfigError(
                f"aggregate.teacher_operators: duplicates in {self.teacher_operators}"
            )
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(
                f"aggregate.trim_fraction must be in [0, 0.5), got {self.trim_fraction}"
            )
        if not self.huber_delta > 0.0:
            raise ConfigError(f"aggregate.huber_delta must be > 0, got {self.huber_delta}")
        if not self.bias_ridge >= 0.0:
            raise ConfigError(f"aggregate.bias_ridge must be >= 0, got {self.bias_ridge}")
        if not self.damping_lambda >= 0.0:
            raise ConfigError(f"aggregate.damping_lambda must be >= 0, got {self.damping_lambda}")
