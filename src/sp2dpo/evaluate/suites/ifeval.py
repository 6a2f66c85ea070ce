"""IFEval in the eval stage: a seeded subset of the prompts, one answer each, scored by the
rule-based checkers (strict and loose, :mod:`sp2dpo.evaluate.benchmarks.ifeval`); no judge. Per method:
``ifeval.jsonl`` (one record per prompt with each instruction's verdicts)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sp2dpo.core.config import EvalConfig, IFEvalConfig
from sp2dpo.evaluate.benchmarks import ifeval
from sp2dpo.evaluate.suites.base import Answers, Context, Conversations, JudgeBatch, Scored


class IFEvalSuite:
    """IFEval (see the module doc); params ``eval.ifeval``."""

    name: ClassVar[str] = "ifeval"

    def __init__(self, cfg: IFEvalConfig, ctx: Context) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.prompts = ifeval.load_prompts(cfg.input, cfg.limit, cfg.seed) if cfg.enabled else []

    @classmethod
    def from_config(cls, ecfg: EvalConfig, ctx: Context) -> IFEvalSuite:
        return cls(ecfg.ifeval, ctx)

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)

    def describe(self) -> str:
        return f"{len(self.prompts)} IFEval prompts"

    def conversations(self) -> Conversations:
        return Conversations([[p.prompt] for p in self.prompts], self.cfg.max_new_tokens)

    def write_answers(self, method: str, answers: Sequence[Sequence[str]]) -> None:
        """Nothing: the answers are part of ``ifeval.jsonl``, written when scored."""

    def judge_requests(self, answers: Answers) -> list[JudgeBatch]:
        return []

    def evaluate(self, answers: Answers, stop: threading.Event) -> Scored:
        scored = Scored({})
        for method, per in answers.items():
            result = ifeval.score(self.prompts, {p.key: a[0] for p, a in zip(self.prompts, per, strict=True)})
            ifeval.write_results(result, self.ctx.outputs(method) / "ifeval.jsonl")
            scored.entries[method] = {self.name: ifeval.summary(result)}
        return scored

    def report_fields(self, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        return {"n_ifeval_prompts": len(self.prompts)}
