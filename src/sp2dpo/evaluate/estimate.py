"""``sp2dpo eval STUDENT --estimate``: what an eval run would still generate and pay the judge for.

The run's own request builders, with nothing called: every registered suite that is enabled
(:mod:`sp2dpo.evaluate.suites`) says what the student answers; the answers come from the eval
call store (:meth:`sp2dpo.evaluate.answers.Answerer.answer` in look-up mode), a missing one
replaced by a placeholder of the full token cap; the suite builds its judge requests from them
exactly as the run does, and the ones with a final record in the store are dropped
(:meth:`sp2dpo.evaluate.judges.engine.JudgeEngine.pending`). What is left is priced at the
judge's prices: estimated prompt tokens, the output-token cap and the maximum cost. A judge call
whose answer is stored is keyed exactly (cached or not); one whose answer is missing is a call to
make, its prompt sized with an answer of the full cap (an upper bound: the maximum cost).

Reads the store and loads no model; creates nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.config import EvalConfig, TrainConfig
from sp2dpo.evaluate import suites
from sp2dpo.evaluate.answers import Answerer, StudentKey
from sp2dpo.evaluate.answers.generate import BASE_METHOD as BASE
from sp2dpo.evaluate.answers.generate import generator_name
from sp2dpo.evaluate.calls import EvalCalls
from sp2dpo.evaluate.judges.engine import JudgeEngine
from sp2dpo.llm.costs import CHARS_PER_TOKEN


def estimate(
    ecfg: EvalConfig,
    train: TrainConfig,
    student_name: str,
    methods: Sequence[str],
    adapters: Path,
    calls_path: Path | None,
    *,
    judge_prompts: Path,
    arena_hard_prompts: Path,
) -> dict[str, Any]:
    """The estimate (see the module doc): ``{"answers_to_generate", "suites": {suite: {...}},
    "total": {...}}`` (``suites``: the enabled suites that have a judge)."""
    student = train.student(student_name)
    calls = EvalCalls(calls_path)
    engine = JudgeEngine(ecfg.judge, calls)
    ctx = suites.Context(
        engine=engine, judge_prompts=judge_prompts, arena_hard_prompts=arena_hard_prompts,
        generator=lambda method: generator_name(student.name, method),
        outputs=lambda method: adapters / method,  # never written: the estimate writes nothing
    )
    enabled = [suite for suite in suites.build(ecfg, ctx) if suite.enabled]
    gen = ecfg.generation
    answered: dict[str, dict[str, list[list[str]]]] = {suite.name: {} for suite in enabled}
    to_generate = 0
    for method in methods:
        adapter = None if method == BASE else adapters / method
        answerer = Answerer(None, calls, StudentKey.of(student, adapter), generator_name(student.name, method))
        for suite in enabled:
            asked = suite.conversations()
            cap = gen.max_new_tokens if asked.max_new_tokens is None else asked.max_new_tokens
            answered[suite.name][method] = answerer.answer(
                asked.turns, gen, asked.max_new_tokens, placeholder="x" * int(cap * CHARS_PER_TOKEN)
            )
        to_generate += answerer.missing
    per_suite: dict[str, dict[str, Any]] = {}
    for suite in enabled:
        batches = suite.judge_requests(answered[suite.name])
        if not batches:
            continue
        costs = [
            engine.cost_estimate(batch.max_tokens,
                                 [batch.mode.messages(r) for r in engine.pending(batch.mode, batch.requests)])
            for batch in batches
        ]
        per_suite[suite.name] = {key: sum(c[key] for c in costs) for key in costs[0]}
    zero = engine.cost_estimate(0, [])
    total = {key: sum(v[key] for v in per_suite.values()) for key in zero}
    return {
        "student": student.name,
        "methods": list(methods),
        "judge": ecfg.judge.id,
        "answers_to_generate": to_generate,
        "suites": per_suite,
        "total": total,
    }
