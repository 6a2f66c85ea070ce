"""The eval stage's benchmark suites, one module each, behind :class:`.base.Suite`.

:data:`REGISTRY` holds them in the paper's reporting order (AlpacaEval 2.0, MT-Bench, IFEval,
Arena-Hard-Auto); the stage, ``--estimate`` and the MLflow metrics loop over it.
"""

from __future__ import annotations

from collections.abc import Sequence

from sp2dpo.core.config import EvalConfig
from sp2dpo.evaluate.suites.alpaca_eval import AlpacaEvalSuite
from sp2dpo.evaluate.suites.arena_hard import ArenaHardSuite
from sp2dpo.evaluate.suites.base import (
    Answers,
    Context,
    Conversations,
    JudgeBatch,
    Scored,
    Suite,
)
from sp2dpo.evaluate.suites.ifeval import IFEvalSuite
from sp2dpo.evaluate.suites.mt_bench import MTBenchSuite

__all__ = [
    "REGISTRY",
    "Answers",
    "Context",
    "Conversations",
    "JudgeBatch",
    "Scored",
    "Suite",
    "build",
    "names",
]

#: The suites in the paper's reporting order.
REGISTRY: list[type[Suite]] = [AlpacaEvalSuite, MTBenchSuite, IFEvalSuite, ArenaHardSuite]


def names() -> tuple[str, ...]:
    """The registered suites' report sections, in order."""
    return tuple(suite.name for suite in REGISTRY)


def build(ecfg: EvalConfig, ctx: Context, registry: Sequence[type[Suite]] | None = None) -> list[Suite]:
    """Every registered suite built from ``ecfg`` (disabled ones included: they still give their
    report fields)."""
    return [suite.from_config(ecfg, ctx) for suite in (REGISTRY if registry is None else registry)]
