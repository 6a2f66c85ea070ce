"""MT-Bench and Arena-Hard-Auto in the eval stage: answers, judge calls, official scoring.

Both run per student over the evaluated methods, on a seeded subset of their questions
(``eval.mt_bench.limit``, ``eval.arena_hard.limit``; null: all), with the judge of
``eval.judge`` through :class:`sp2dpo.evaluate.judges.graded.LabelGrader` (every call in the eval
call store), and write the official file formats, so the official scripts and our ``sp2dpo
mtbench`` / ``sp2dpo arenahard`` read them:

- MT-Bench: answers in FastChat's ``model_answer`` layout (two turns; turn 2 answers the whole
  conversation), one judgment row per (question, turn) in FastChat's single-answer layout
  (``question_id, model, judge: [judge, prompt name], user_prompt, judgment, score, turn``;
  score -1 when no rating could be read), scored by :func:`sp2dpo.evaluate.mtbench.scores`
  (turn 1, turn 2, overall);
- Arena-Hard-Auto v0.1: one judgment row per question with its two games (game 1 shows the
  baseline's answer as A, game 2 swaps them; ``games[i].score`` the verdict label), the battles
  of every evaluated model pooled against the baseline and scored by
  :func:`sp2dpo.evaluate.arenahard.score_battles` (Bradley-Terry win rate against the baseline,
  seeded bootstrap interval), plus the distribution of the five verdict labels.

Nothing here loads a model: the stage passes a function that answers conversations for a method
(:data:`AnswerFn`) and the grader.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core import artifacts
from sp2dpo.core.config import ArenaHardConfig, DecodingConfig, MTBenchConfig
from sp2dpo.core.sampling import seeded_subset
from sp2dpo.evaluate import arenahard, mtbench
from sp2dpo.evaluate.judges.engine import JudgeEngine
from sp2dpo.evaluate.judges.graded import LabelGrader, Question

#: ``answer(user turns per conversation, max_new_tokens) -> answers per turn`` of one evaluated
#: method (:meth:`sp2dpo.evaluate.answers.Answerer.answer` with the generation settings bound).
AnswerFn = Callable[[list[list[str]], int], list[list[str]]]

#: Hash domains of the seeded question subsets (see :mod:`sp2dpo.core.sampling`).
MT_BENCH_DOMAIN = "mt-bench-subset"
ARENA_HARD_DOMAIN = "arena-hard-subset"

#: MT-Bench ratings the local judge chooses among.
RATING_LABELS = tuple(str(k) for k in range(1, 11))


def write_jsonl(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """JSON lines, keys in the given order (the official files' layout), atomically."""
    artifacts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), path)


# ------------------------------------------------------------------------------ MT-Bench


def mt_bench_questions(cfg: MTBenchConfig) -> list[mtbench.MTQuestion]:
    """The seeded subset of the questions, in question-id order."""
    questions = sorted(mtbench.read_questions(cfg.questions).values(), key=lambda q: q.question_id)
    keep = seeded_subset([str(q.question_id) for q in questions], cfg.limit, cfg.seed, MT_BENCH_DOMAIN)
    return [questions[i] for i in sorted(keep)]


def _rating_label(text: str) -> str | None:
    rating = mtbench.parse_rating(text)
    return None if rating == mtbench.FAILED_RATING else str(rating)


def mt_bench_grader(
    cfg: MTBenchConfig, engine: JudgeEngine, decoding: DecodingConfig
) -> tuple[LabelGrader, dict[str, mtbench.JudgePrompt]]:
    """The MT-Bench grader on ``engine`` (official templates from ``cfg.judge_prompts``) and the
    templates."""
    prompts = mtbench.read_judge_prompts(cfg.judge_prompts)
    template_sha = artifacts.sha256_file(Path(cfg.judge_prompts))
    grader = LabelGrader(
        engine, "mt_bench", dataclasses.replace(decoding, max_tokens=cfg.judge_max_tokens),
        RATING_LABELS, _rating_label, template_sha,
    )
    return grader, prompts


def answer_mt_bench(
    cfg: MTBenchConfig, questions: Sequence[mtbench.MTQuestion], answer: AnswerFn
) -> list[tuple[str, str]]:
    """A method's two answer turns per question (turn 2 answers the whole conversation)."""
    turns = answer([list(q.turns[:2]) for q in questions], cfg.max_new_tokens)
    return [(t[0], t[1]) for t in turns]


def write_mt_bench_answers(
    questions: Sequence[mtbench.MTQuestion], answers: Sequence[tuple[str, str]], model: str, path: Path
) -> None:
    """Answers in FastChat's ``model_answer`` layout (no answer ids or timestamps)."""
    write_jsonl(
        [{"question_id": q.question_id, "model_id": model, "choices": [{"index": 0, "turns": list(pair)}]}
         for q, pair in zip(questions, answers, strict=True)],
        path,
    )


#: One MT-Bench grading: (method, question, turn, judge user prompt, the request).
MTAsk = tuple[str, mtbench.MTQuestion, int, str, Question]


def mt_bench_asks(
    questions: Sequence[mtbench.MTQuestion],
    answers: Mapping[str, Sequence[tuple[str, str]]],
    references: Mapping[int, Sequence[str]],
    prompts: Mapping[str, mtbench.JudgePrompt],
) -> list[MTAsk]:
    """Every grading request, method by method, question by question, turn 1 then 2."""
    asks: list[MTAsk] = []
    for method, per_question in answers.items():
        for q, pair in zip(questions, per_question, strict=True):
            reference = (
                references.get(q.question_id)
                if q.category in mtbench.NEED_REFERENCE_CATEGORIES else None
            )
            for turn in (1, 2):
                system, user = mtbench.render_single(q, pair, turn, reference, prompts)
                asks.append((method, q, turn, user, Question(
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                    instruction=json.dumps(list(q.turns[:turn]), ensure_ascii=False),
                    outputs=tuple(pair[:turn]),
                    extra={"turn": turn, "prompt": mtbench.judge_prompt_name(q.category, turn),
                           "reference": list(reference[:turn]) if reference else None},
                )))
    return asks


def judge_mt_bench(
    cfg: MTBenchConfig,
    questions: Sequence[mtbench.MTQuestion],
    answers: Mapping[str, Sequence[tuple[str, str]]],
    generator: Callable[[str], str],
    grader: LabelGrader,
    prompts: Mapping[str, mtbench.JudgePrompt],
    outputs: Callable[[str], Path],
    stop: threading.Event | None = None,
) -> dict[str, dict[str, Any]] | None:
    """Judge and score every method's MT-Bench answers; None when ``stop`` was set first.

    Args:
        cfg: ``eval.mt_bench``.
        questions: :func:`mt_bench_questions`.
        answers: ``{method: answer turns per question}`` (:func:`answer_mt_bench`).
        generator: a method's model name in the files (``smollm2-sp2dpo``).
        grader: :func:`mt_bench_grader`'s.
        prompts: the judge templates.
        outputs: a method's output folder (``mt_bench_judgments.jsonl`` goes there).
        stop: set by a signal: no new call starts.

    Returns:
        ``{method: {"turn1", "turn2", "score", "n", "n_failed"}}``.
    """
    references = mtbench.read_reference_answers(cfg.reference_answers)
    methods = list(answers)
    asks = mt_bench_asks(questions, answers, references, prompts)
    records = grader.grade_all([a[-1] for a in asks], stop)
    if any(r is None for r in records):
        return None

    rows_by_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for (method, q, turn, user, _), record in zip(asks, records, strict=True):
        assert record is not None
        label = record.get("label")
        score = mtbench.parse_rating(f"[[{label}]]") if label is not None else mtbench.FAILED_RATING
        rows_by_method[method].append({
            "question_id": q.question_id,
            "model": generator(method),
            "judge": [grader.engine.cfg.model, mtbench.judge_prompt_name(q.category, turn)],
            "user_prompt": user,
            "judgment": record.get("text"),
            "score": score,
            "turn": turn,
        })
    result: dict[str, dict[str, Any]] = {}
    for method in methods:
        rows = rows_by_method[method]
        write_jsonl(rows, outputs(method) / "mt_bench_judgments.jsonl")
        judged = [
            mtbench.SingleJudgment(r["question_id"], r["model"], tuple(r["judge"]), float(r["score"]), r["turn"])
            for r in rows
        ]
        scored = mtbench.scores(judged).get(generator(method), {})
        result[method] = {
            "turn1": scored.get("turn1"),
            "turn2": scored.get("turn2"),
            "score": scored.get("score"),
            "n": len(rows),
            "n_failed": sum(r["score"] == mtbench.FAILED_RATING for r in rows),
        }
    return result


# ------------------------------------------------------------------------------ Arena-Hard


def arena_hard_questions(cfg: ArenaHardConfig) -> list[arenahard.ArenaQuestion]:
    """The seeded subset of the prompts, in file order."""
    questions = list(arenahard.read_questions(cfg.questions).values())
    keep = seeded_subset([str(q.question_id) for q in questions], cfg.limit, cfg.seed, ARENA_HARD_DOMAIN)
    return [questions[i] for i in sorted(keep)]


def arena_hard_grader(
    cfg: ArenaHardConfig, engine: JudgeEngine, decoding: DecodingConfig, prompt_dir: Path
) -> tuple[LabelGrader, arenahard.ArenaHardPrompt]:
    """The Arena-Hard grader on ``engine`` (our judge prompt) and the prompt."""
    prompt = arenahard.ArenaHardPrompt.load(prompt_dir)
    grader = LabelGrader(
        engine, "arena_hard", dataclasses.replace(decoding, max_tokens=cfg.judge_max_tokens),
        arenahard.VERDICT_LABELS, arenahard.parse_verdict, prompt.sha256,
    )
    return grader, prompt


def answer_arena_hard(
    cfg: ArenaHardConfig, questions: Sequence[arenahard.ArenaQuestion], answer: AnswerFn
) -> list[str]:
    """A method's answer per prompt."""
    return [t[0] for t in answer([[q.prompt] for q in questions], cfg.max_new_tokens)]


def write_arena_hard_answers(
    questions: Sequence[arenahard.ArenaQuestion], answers: Sequence[str], model: str, path: Path
) -> None:
    """Answers in the official ``model_answer`` layout (no answer ids or timestamps)."""
    write_jsonl(
        [{"question_id": q.question_id, "model_id": model,
          "choices": [{"index": 0, "turns": [{"content": a}]}]}
         for q, a in zip(questions, answers, strict=True)],
        path,
    )


#: One Arena-Hard game: (method, question, game 1 or 2, the request).
AHAsk = tuple[str, arenahard.ArenaQuestion, int, Question]


def arena_hard_asks(
    questions: Sequence[arenahard.ArenaQuestion],
    answers: Mapping[str, Sequence[str]],
    baseline: Mapping[Any, arenahard.ArenaAnswer],
    prompt: arenahard.ArenaHardPrompt,
) -> list[AHAsk]:
    """Both games of every prompt, method by method (game 1: the baseline's answer as A)."""
    asks: list[AHAsk] = []
    for method, per_question in answers.items():
        for q, mine in zip(questions, per_question, strict=True):
            theirs = baseline[q.question_id].text
            for game, (a, b) in enumerate(((theirs, mine), (mine, theirs)), start=1):
                asks.append((method, q, game, Question(
                    messages=prompt.render(q.prompt, a, b), instruction=q.prompt, outputs=(a, b),
                )))
    return asks


def judge_arena_hard(
    cfg: ArenaHardConfig,
    questions: Sequence[arenahard.ArenaQuestion],
    answers: Mapping[str, Sequence[str]],
    generator: Callable[[str], str],
    grader: LabelGrader,
    prompt: arenahard.ArenaHardPrompt,
    outputs: Callable[[str], Path],
    stop: threading.Event | None = None,
) -> dict[str, dict[str, Any]] | None:
    """Judge (two games per prompt) and score every method's Arena-Hard answers; None when
    ``stop`` was set first. Arguments as :func:`judge_mt_bench`.

    Returns:
        ``{method: {"score", "ci", "n_battles", "wins", "ties", "losses", "verdicts",
        "n_failed", "rounds", "seed"}}`` (``verdicts``: count per label over both games).
    """
    baseline = arenahard.read_answers(cfg.baseline_answers)
    missing = [q.question_id for q in questions if q.question_id not in baseline]
    if missing:
        raise ValueError(f"{cfg.baseline_answers}: no baseline answer for question_id {missing[0]!r}")
    methods = list(answers)
    asks = arena_hard_asks(questions, answers, baseline, prompt)
    records = grader.grade_all([a[-1] for a in asks], stop)
    if any(r is None for r in records):
        return None

    games: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for (method, q, _game, ask), record in zip(asks, records, strict=True):
        assert record is not None
        games.setdefault((method, q.question_id), []).append({
            "user_prompt": ask.messages[-1]["content"],
            "judgment": record.get("text"),
            "score": record.get("label"),
        })
    judgments: list[arenahard.Judgment] = []
    for method in methods:
        rows = []
        for q in questions:
            pair = games[(method, q.question_id)]
            rows.append({"question_id": q.question_id, "model": generator(method),
                         "judge": grader.engine.cfg.model, "games": pair})
            judgments.append(arenahard.Judgment(
                q.question_id, generator(method), grader.engine.cfg.model,
                tuple(arenahard.Game(g["score"]) for g in pair),
            ))
        write_jsonl(rows, outputs(method) / "arena_hard_judgments.jsonl")
    battles = arenahard.judgments_to_battles(judgments, baseline=cfg.baseline)
    scored = (
        arenahard.score_battles(battles, baseline=cfg.baseline, rounds=cfg.bootstrap_rounds,
                                seed=cfg.bootstrap_seed)
        if battles else {}
    )
    result: dict[str, dict[str, Any]] = {}
    for method in methods:
        labels = [g["score"] for q in questions for g in games[(method, q.question_id)]]
        row = scored.get(generator(method), {})
        result[method] = {
            "score": row.get("score"),
            "ci": row.get("ci"),
            "n_battles": row.get("n_battles", 0),
            "wins": row.get("wins", 0),
            "ties": row.get("ties", 0),
            "losses": row.get("losses", 0),
            "verdicts": {label: Counter(labels)[label] for label in arenahard.VERDICT_LABELS},
            "n_failed": sum(label is None for label in labels),
            "rounds": cfg.bootstrap_rounds,
            "seed": cfg.bootstrap_seed,
        }
    return result
