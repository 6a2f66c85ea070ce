"""MT-Bench in the eval stage: a seeded subset of the questions, two answer turns per question
(turn 2 answers the whole conversation), one 1-10 grading per (question, turn) with FastChat's
templates through :class:`sp2dpo.evaluate.judges.graded.LabelGrader`, and FastChat's scores.

Files, per method: answers in FastChat's ``model_answer`` layout (``mt_bench_answers.jsonl``)
and one judgment row per (question, turn) in its single-answer layout
(``mt_bench_judgments.jsonl``: ``question_id, model, judge: [judge, prompt name], user_prompt,
judgment, score, turn``; score -1 when no rating could be read), scored by
:func:`sp2dpo.evaluate.benchmarks.mtbench.scores` (turn 1, turn 2, overall).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from sp2dpo.core import artifacts
from sp2dpo.core.config import EvalConfig, MTBenchConfig
from sp2dpo.core.sampling import seeded_items
from sp2dpo.evaluate.benchmarks import mtbench
from sp2dpo.evaluate.judges.graded import LabelGrader, Question
from sp2dpo.evaluate.suites.base import (
    Answers,
    Context,
    Conversations,
    JudgeBatch,
    Scored,
    label_grader,
    write_jsonl,
)

#: Hash domain of the seeded question subset (see :mod:`sp2dpo.core.sampling`).
MT_BENCH_DOMAIN = "mt-bench-subset"

#: MT-Bench ratings the local judge chooses among.
RATING_LABELS = tuple(str(k) for k in range(1, 11))


def select_questions(cfg: MTBenchConfig) -> list[mtbench.MTQuestion]:
    """The seeded subset of the questions, in question-id order."""
    questions = sorted(mtbench.read_questions(cfg.questions).values(), key=lambda q: q.question_id)
    return seeded_items(questions, lambda q: str(q.question_id), cfg.limit, cfg.seed, MT_BENCH_DOMAIN)


def rating_label(text: str) -> str | None:
    """The rating a judge's text gives, as a label (None: no single ``[[N]]``)."""
    rating = mtbench.parse_rating(text)
    return None if rating == mtbench.FAILED_RATING else str(rating)


@dataclasses.dataclass(frozen=True)
class _Ask:
    method: str
    question: mtbench.MTQuestion
    turn: int
    user_prompt: str
    request: Question


class MTBenchSuite:
    """MT-Bench (see the module doc); params ``eval.mt_bench``."""

    name: ClassVar[str] = "mt_bench"

    def __init__(self, cfg: MTBenchConfig, ecfg: EvalConfig, ctx: Context) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.questions = select_questions(cfg) if cfg.enabled else []
        self.grader: LabelGrader | None = None
        if self.questions:
            self.prompts = mtbench.read_judge_prompts(cfg.judge_prompts)
            self.grader = label_grader(ctx, self.name, ecfg, cfg.judge_max_tokens, RATING_LABELS,
                                       rating_label, artifacts.sha256_file(Path(cfg.judge_prompts)))

    @classmethod
    def from_config(cls, ecfg: EvalConfig, ctx: Context) -> MTBenchSuite:
        return cls(ecfg.mt_bench, ecfg, ctx)

    @property
    def enabled(self) -> bool:
        return bool(self.questions)

    def describe(self) -> str:
        return f"{len(self.questions)} MT-Bench questions"

    def conversations(self) -> Conversations:
        return Conversations([list(q.turns[:2]) for q in self.questions], self.cfg.max_new_tokens)

    def write_answers(self, method: str, answers: Sequence[Sequence[str]]) -> None:
        """Answers in FastChat's ``model_answer`` layout (no answer ids or timestamps)."""
        write_jsonl(
            [{"question_id": q.question_id, "model_id": self.ctx.generator(method),
              "choices": [{"index": 0, "turns": list(pair[:2])}]}
             for q, pair in zip(self.questions, answers, strict=True)],
            self.ctx.outputs(method) / "mt_bench_answers.jsonl",
        )

    def _asks(self, answers: Answers) -> list[_Ask]:
        """Every grading request, method by method, question by question, turn 1 then 2."""
        references = mtbench.read_reference_answers(self.cfg.reference_answers)
        asks: list[_Ask] = []
        for method, per_question in answers.items():
            for q, turns in zip(self.questions, per_question, strict=True):
                pair = (turns[0], turns[1])
                reference = (
                    references.get(q.question_id)
                    if q.category in mtbench.NEED_REFERENCE_CATEGORIES else None
                )
                for turn in (1, 2):
                    system, user = mtbench.render_single(q, pair, turn, reference, self.prompts)
                    asks.append(_Ask(method, q, turn, user, Question(
                        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                        instruction=json.dumps(list(q.turns[:turn]), ensure_ascii=False),
                        outputs=tuple(pair[:turn]),
                        extra={"turn": turn, "prompt": mtbench.judge_prompt_name(q.category, turn),
                               "reference": list(reference[:turn]) if reference else None},
                    )))
        return asks

    def judge_requests(self, answers: Answers) -> list[JudgeBatch]:
        assert self.grader is not None
        return [JudgeBatch(self.grader, [a.request for a in self._asks(answers)])]

    def evaluate(self, answers: Answers, stop: threading.Event) -> Scored | None:
        """Grade and score every method's answers.

        Entries: ``{method: {"mt_bench": {"turn1", "turn2", "score", "n", "n_failed"}}}``.
        """
        assert self.grader is not None
        asks = self._asks(answers)
        records = self.grader.grade_all([a.request for a in asks], stop)
        if any(r is None for r in records):
            return None
        rows_by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in answers}
        for ask, record in zip(asks, records, strict=True):
            assert record is not None
            label = record.get("label")
            score = mtbench.parse_rating(f"[[{label}]]") if label is not None else mtbench.FAILED_RATING
            rows_by_method[ask.method].append({
                "question_id": ask.question.question_id,
                "model": self.ctx.generator(ask.method),
                "judge": [self.ctx.engine.cfg.model, mtbench.judge_prompt_name(ask.question.category, ask.turn)],
                "user_prompt": ask.user_prompt,
                "judgment": record.get("text"),
                "score": score,
                "turn": ask.turn,
            })
        scored = Scored({})
        for method, rows in rows_by_method.items():
            write_jsonl(rows, self.ctx.outputs(method) / "mt_bench_judgments.jsonl")
            judged = [
                mtbench.SingleJudgment(r["question_id"], r["model"], tuple(r["judge"]), float(r["score"]), r["turn"])
                for r in rows
            ]
            got = mtbench.scores(judged).get(self.ctx.generator(method), {})
            scored.entries[method] = {self.name: {
                "turn1": got.get("turn1"),
                "turn2": got.get("turn2"),
                "score": got.get("score"),
                "n": len(rows),
                "n_failed": sum(r["score"] == mtbench.FAILED_RATING for r in rows),
            }}
        return scored

    def report_fields(self, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        return {}
