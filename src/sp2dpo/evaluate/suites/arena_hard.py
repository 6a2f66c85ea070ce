"""Arena-Hard-Auto v0.1 in the eval stage: a seeded subset of the prompts, one answer each, two
games per prompt against the baseline's answer (:meth:`sp2dpo.evaluate.benchmarks.arenahard.ArenaHardPrompt.games`:
game 1 shows the baseline as A, game 2 swaps them) through
:class:`sp2dpo.evaluate.judges.graded.LabelGrader`, and the official scoring.

Files, per method: answers in the official ``model_answer`` layout
(``arena_hard_answers.jsonl``) and one judgment row per prompt with its two games
(``arena_hard_judgments.jsonl``; ``games[i].score`` the verdict label). The battles of every
evaluated model are pooled against the baseline and scored by
:func:`sp2dpo.evaluate.benchmarks.arenahard.score_battles` (Bradley-Terry win rate against the baseline,
seeded bootstrap interval), with the distribution of the five verdict labels.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sp2dpo.core.config import ArenaHardConfig, EvalConfig
from sp2dpo.core.sampling import seeded_items
from sp2dpo.evaluate.benchmarks import arenahard
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

#: Hash domain of the seeded prompt subset (see :mod:`sp2dpo.core.sampling`).
ARENA_HARD_DOMAIN = "arena-hard-subset"


def select_questions(cfg: ArenaHardConfig) -> list[arenahard.ArenaQuestion]:
    """The seeded subset of the prompts, in file order."""
    questions = list(arenahard.read_questions(cfg.questions).values())
    return seeded_items(questions, lambda q: str(q.question_id), cfg.limit, cfg.seed, ARENA_HARD_DOMAIN)


@dataclasses.dataclass(frozen=True)
class _Game:
    method: str
    question: arenahard.ArenaQuestion
    request: Question


class ArenaHardSuite:
    """Arena-Hard-Auto (see the module doc); params ``eval.arena_hard``."""

    name: ClassVar[str] = "arena_hard"

    def __init__(self, cfg: ArenaHardConfig, ecfg: EvalConfig, ctx: Context) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.questions = select_questions(cfg) if cfg.enabled else []
        self.grader: LabelGrader | None = None
        if self.questions:
            self.prompt = arenahard.ArenaHardPrompt.load(ctx.arena_hard_prompts)
            self.grader = label_grader(ctx, self.name, ecfg, cfg.judge_max_tokens, arenahard.VERDICT_LABELS,
                                       arenahard.parse_verdict, self.prompt.sha256)

    @classmethod
    def from_config(cls, ecfg: EvalConfig, ctx: Context) -> ArenaHardSuite:
        return cls(ecfg.arena_hard, ecfg, ctx)

    @property
    def enabled(self) -> bool:
        return bool(self.questions)

    def describe(self) -> str:
        return f"{len(self.questions)} Arena-Hard prompts"

    def conversations(self) -> Conversations:
        return Conversations([[q.prompt] for q in self.questions], self.cfg.max_new_tokens)

    def write_answers(self, method: str, answers: Sequence[Sequence[str]]) -> None:
        """Answers in the official ``model_answer`` layout (no answer ids or timestamps)."""
        write_jsonl(
            [{"question_id": q.question_id, "model_id": self.ctx.generator(method),
              "choices": [{"index": 0, "turns": [{"content": a[0]}]}]}
             for q, a in zip(self.questions, answers, strict=True)],
            self.ctx.outputs(method) / "arena_hard_answers.jsonl",
        )

    def _baseline(self) -> Mapping[Any, arenahard.ArenaAnswer]:
        baseline = arenahard.read_answers(self.cfg.baseline_answers)
        missing = [q.question_id for q in self.questions if q.question_id not in baseline]
        if missing:
            raise ValueError(f"{self.cfg.baseline_answers}: no baseline answer for question_id {missing[0]!r}")
        return baseline

    def _games(self, answers: Answers) -> list[_Game]:
        """Both games of every prompt, method by method."""
        baseline = self._baseline()
        games: list[_Game] = []
        for method, per_question in answers.items():
            for q, mine in zip(self.questions, per_question, strict=True):
                theirs = baseline[q.question_id].text
                for messages, outputs in zip(
                    self.prompt.games(q.prompt, theirs, mine[0]),
                    ((theirs, mine[0]), (mine[0], theirs)),
                    strict=True,
                ):
                    games.append(_Game(method, q, Question(messages=messages, instruction=q.prompt, outputs=outputs)))
        return games

    def judge_requests(self, answers: Answers) -> list[JudgeBatch]:
        assert self.grader is not None
        return [JudgeBatch(self.grader, [g.request for g in self._games(answers)])]

    def evaluate(self, answers: Answers, stop: threading.Event) -> Scored | None:
        """Judge (two games per prompt) and score every method's answers.

        Entries: ``{method: {"arena_hard": {"score", "ci", "n_battles", "wins", "ties", "losses",
        "verdicts", "n_failed", "rounds", "seed"}}}`` (``verdicts``: count per label over both
        games).
        """
        assert self.grader is not None
        asked = self._games(answers)
        records = self.grader.grade_all([g.request for g in asked], stop)
        if any(r is None for r in records):
            return None
        judge_model = self.ctx.engine.cfg.model
        games: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        for game, record in zip(asked, records, strict=True):
            assert record is not None
            games.setdefault((game.method, game.question.question_id), []).append({
                "user_prompt": game.request.messages[-1]["content"],
                "judgment": record.get("text"),
                "score": record.get("label"),
            })
        judgments: list[arenahard.Judgment] = []
        for method in answers:
            rows = []
            for q in self.questions:
                pair = games[(method, q.question_id)]
                rows.append({"question_id": q.question_id, "model": self.ctx.generator(method),
                             "judge": judge_model, "games": pair})
                judgments.append(arenahard.Judgment(
                    q.question_id, self.ctx.generator(method), judge_model,
                    tuple(arenahard.Game(g["score"]) for g in pair),
                ))
            write_jsonl(rows, self.ctx.outputs(method) / "arena_hard_judgments.jsonl")
        battles = arenahard.judgments_to_battles(judgments, baseline=self.cfg.baseline)
        rated = (
            arenahard.score_battles(battles, baseline=self.cfg.baseline, rounds=self.cfg.bootstrap_rounds,
                                    seed=self.cfg.bootstrap_seed)
            if battles else {}
        )
        scored = Scored({})
        for method in answers:
            labels = [g["score"] for q in self.questions for g in games[(method, q.question_id)]]
            row = rated.get(self.ctx.generator(method), {})
            scored.entries[method] = {self.name: {
                "score": row.get("score"),
                "ci": row.get("ci"),
                "n_battles": row.get("n_battles", 0),
                "wins": row.get("wins", 0),
                "ties": row.get("ties", 0),
                "losses": row.get("losses", 0),
                "verdicts": {label: Counter(labels)[label] for label in arenahard.VERDICT_LABELS},
                "n_failed": sum(label is None for label in labels),
                "rounds": self.cfg.bootstrap_rounds,
                "seed": self.cfg.bootstrap_seed,
            }}
        return scored

    def report_fields(self, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        return {}
