"""MT-Bench single-answer grading as FastChat's ``llm_judge`` does it: prompts, ratings, scores.

MT-Bench (``lm-sys/FastChat``, ``fastchat/llm_judge``) has 80 two-turn questions in 8 categories.
A judge grades each answer turn on a 1-10 scale:

* **Prompts.** The judge templates come from FastChat's ``judge_prompts.jsonl`` (read with
  :func:`read_judge_prompts`, never copied into code). Turn 1 uses ``single-v1`` and turn 2
  ``single-v1-multi-turn`` (the whole two-turn conversation, graded on the second answer). For
  the categories of :data:`NEED_REFERENCE_CATEGORIES` the ``single-math-v1`` variants are used,
  filled with the GPT-4 reference answer (``reference_answer/gpt-4.jsonl``; the ``reference``
  field of ``question.jsonl`` is not what FastChat grades with). :func:`render_single` builds the
  (system, user) pair exactly as FastChat's ``run_judge_single``.
* **Ratings.** :func:`parse_rating`: the first ``[[number]]`` in the judge's text, else the first
  ``[number]``, else -1 (a failed grade). A number outside 1..10 is a failed grade too: this is
  our choice, not FastChat's (whose ``show_result.py`` would average a ``[[0]]`` or ``[[11]]``;
  its prompts ask for a rating from 1 to 10), so our own judgments count such a rating in
  ``n_failed`` instead of averaging it. A judgment file read with :func:`read_judgments` must hold
  grades from 1 to 10 or -1; any other score is refused with its file and line.
* **Scores.** :func:`scores`, as ``show_result.py --mode single``: rows rated -1 are dropped; the
  turn-1 and turn-2 scores are the mean rating of each turn; the MT-Bench score is the mean of
  all remaining rows pooled (equal to the mean of the two turn means when no row is dropped).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.errors import UserError
from sp2dpo.evaluate.benchmarks.evalfiles import BenchmarkInputError, field, iter_jsonl, text_field

__all__ = [
    "DEFAULT_JUDGE_PROMPTS",
    "DEFAULT_QUESTIONS",
    "DEFAULT_REFERENCE",
    "FAILED_RATING",
    "MAX_RATING",
    "MIN_RATING",
    "NEED_REFERENCE_CATEGORIES",
    "JudgePrompt",
    "MTAnswer",
    "MTQuestion",
    "SingleJudgment",
    "format_text",
    "judge_prompt_name",
    "parse_rating",
    "read_answers",
    "read_judge_prompts",
    "read_judgments",
    "read_questions",
    "read_reference_answers",
    "render_single",
    "scores",
]

#: Categories graded against a reference answer (FastChat's ``NEED_REF_CATS`` for MT-Bench).
NEED_REFERENCE_CATEGORIES = ("math", "reasoning", "coding")
#: The rating FastChat records when no rating can be read from the judge's text.
FAILED_RATING = -1
#: The grade scale of the judge prompts (inclusive; a number of the scale may have decimals).
MIN_RATING, MAX_RATING = 1, 10

DEFAULT_QUESTIONS = Path("data/evalsets/mt_bench/question.jsonl.gz")
DEFAULT_REFERENCE = Path("data/evalsets/mt_bench/reference_answer/gpt-4.jsonl.gz")
DEFAULT_JUDGE_PROMPTS = Path("data/evalsets/mt_bench/judge_prompts.jsonl")

_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")


# ------------------------------------------------------------------------------ records, readers


@dataclasses.dataclass(frozen=True)
class MTQuestion:
    """One MT-Bench question: its id, category and the user's two turns.

    ``reference`` is the short ``reference`` field some rows carry (not used for grading).
    """

    question_id: int
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class MTAnswer:
    """One model's (or the reference's) answer turns to one question (first choice)."""

    question_id: int
    model: str
    turns: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class JudgePrompt:
    """One entry of FastChat's ``judge_prompts.jsonl``."""

    name: str
    type: str
    system_prompt: str
    prompt_template: str
    output_format: str
    category: str = ""
    description: str = ""


@dataclasses.dataclass(frozen=True)
class SingleJudgment:
    """One row of a single-answer judgment file: the rating of one model's turn on one question.

    ``judge`` is ``(judge model, prompt name)``, e.g. ``("gpt-4", "single-v1")``.
    """

    question_id: int
    model: str
    judge: tuple[str, ...]
    score: float
    turn: int


def _int_id(row: Mapping[str, Any], where: str) -> int:
    return field(row, "question_id", where, int)


def _strings(row: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = field(row, name, where, list)
    if not value or not all(isinstance(v, str) for v in value):
        raise BenchmarkInputError(f"{where}: field '{name}' must be a non-empty list of strings")
    return tuple(value)


def read_questions(path: str | Path = DEFAULT_QUESTIONS) -> dict[int, MTQuestion]:
    """FastChat's ``question.jsonl(.gz)``: ``question_id, category, turns`` (+ ``reference``).

    Raises:
        FileNotFoundError, BenchmarkInputError: a missing or mistyped field or a repeated id
            (``FILE:LINE: ...`` names file, line and field).
    """
    out: dict[int, MTQuestion] = {}
    for where, row in iter_jsonl(path):
        qid = _int_id(row, where)
        reference = _strings(row, "reference", where) if "reference" in row else None
        if qid in out:
            raise BenchmarkInputError(f"{where}: field 'question_id': {qid} repeated")
        out[qid] = MTQuestion(qid, text_field(row, "category", where), _strings(row, "turns", where),
                              reference)
    return out


def read_answers(path: str | Path) -> dict[int, MTAnswer]:
    """An answer file in FastChat's format: ``question_id, model_id, choices=[{turns: [str]}]``.

    Raises:
        FileNotFoundError, BenchmarkInputError: as :func:`read_questions`.
    """
    out: dict[int, MTAnswer] = {}
    for where, row in iter_jsonl(path):
        qid = _int_id(row, where)
        choices = field(row, "choices", where, list)
        if not choices or not isinstance(choices[0], dict):
            raise BenchmarkInputError(f"{where}: field 'choices' must hold at least one object")
        turns = _strings(choices[0], "turns", f"{where}: choices[0]")
        if qid in out:
            raise BenchmarkInputError(f"{where}: field 'question_id': {qid} repeated")
        out[qid] = MTAnswer(qid, text_field(row, "model_id", where), turns)
    return out


def read_reference_answers(path: str | Path = DEFAULT_REFERENCE) -> dict[int, tuple[str, ...]]:
    """The reference answers (``reference_answer/gpt-4.jsonl``) as ``{question_id: turns}``."""
    return {qid: answer.turns for qid, answer in read_answers(path).items()}


def read_judge_prompts(path: str | Path = DEFAULT_JUDGE_PROMPTS) -> dict[str, JudgePrompt]:
    """FastChat's ``judge_prompts.jsonl`` by prompt name.

    Raises:
        FileNotFoundError, BenchmarkInputError: a missing or mistyped field or a repeated name.
    """
    out: dict[str, JudgePrompt] = {}
    for where, row in iter_jsonl(path):
        names = ("name", "type", "system_prompt", "prompt_template", "output_format")
        name, kind, system, template, output_format = (text_field(row, n, where) for n in names)
        if name in out:
            raise BenchmarkInputError(f"{where}: field 'name': {name!r} repeated")
        out[name] = JudgePrompt(name, kind, system, template, output_format,
                                str(row.get("category", "")), str(row.get("description", "")))
    return out


def read_judgments(path: str | Path) -> list[SingleJudgment]:
    """A single-answer judgment file (FastChat's ``model_judgment/<judge>_single.jsonl``).

    Each line: ``question_id, model, judge ([judge model, prompt name]), score, turn`` (other
    keys, such as ``user_prompt``, ``judgment`` and ``tstamp``, are ignored).

    Raises:
        FileNotFoundError, BenchmarkInputError: a missing or mistyped field (``FILE:LINE: missing
            field 'score'``), a ``score`` that is neither -1 nor a grade from 1 to 10, a ``turn``
            other than 1 or 2, or a repeated (model, question, turn, judge).
    """
    out: list[SingleJudgment] = []
    seen: dict[tuple[Any, ...], str] = {}
    for where, row in iter_jsonl(path):
        qid = _int_id(row, where)
        model = text_field(row, "model", where)
        judge = _strings(row, "judge", where)
        score = field(row, "score", where, (int, float))
        turn = field(row, "turn", where, int)
        if turn not in (1, 2):
            raise BenchmarkInputError(f"{where}: field 'turn' must be 1 or 2, got {turn}")
        if not _is_grade(score):
            raise BenchmarkInputError(
                f"{where}: field 'score' must be a grade from {MIN_RATING} to {MAX_RATING} "
                f"(or {FAILED_RATING} for a failed grade), got {score}"
            )
        key = (model, qid, turn, judge)
        if score != FAILED_RATING:  # -1 rows are dropped first, as show_result.py does: never a repeat
            if key in seen:
                raise BenchmarkInputError(
                    f"{where}: model {model!r}, question_id {qid}, turn {turn} already rated at "
                    f"{seen[key]}"
                )
            seen[key] = where
        out.append(SingleJudgment(qid, model, judge, score, turn))
    return out


# ------------------------------------------------------------------------------ prompts, ratings


def judge_prompt_name(category: str, turn: int) -> str:
    """The FastChat judge prompt for a question's category and turn (single-answer grading)."""
    if turn not in (1, 2):
        raise UserError(f"turn must be 1 or 2, got {turn!r}")
    name = "single-math-v1" if category in NEED_REFERENCE_CATEGORIES else "single-v1"
    return f"{name}-multi-turn" if turn == 2 else name


def render_single(
    question: MTQuestion,
    answer: Sequence[str],
    turn: int,
    reference: Sequence[str] | None,
    prompts: Mapping[str, JudgePrompt],
) -> tuple[str, str]:
    """The judge's (system, user) texts for one answer turn, as FastChat's ``run_judge_single``.

    Args:
        question: the question (its category selects the prompt).
        answer: the model's answer turns (turn 2 needs both).
        turn: 1 or 2.
        reference: the reference answer turns; required for :data:`NEED_REFERENCE_CATEGORIES`
            and not used for the other categories (FastChat passes none there).
        prompts: :func:`read_judge_prompts`.

    Raises:
        UserError: a missing prompt, a math-like question without reference, or too few turns.
    """
    name = judge_prompt_name(question.category, turn)
    if name not in prompts:
        raise UserError(f"judge prompt {name!r} missing (have: {', '.join(sorted(prompts))})")
    prompt = prompts[name]
    if prompt.output_format != "[[rating]]":
        raise UserError(f"judge prompt {name!r} has output format {prompt.output_format!r}, "
                        "expected '[[rating]]'")
    if len(question.turns) < turn or len(answer) < turn:
        raise UserError(f"question {question.question_id}: turn {turn} needs {turn} question and "
                        f"answer turn(s), got {len(question.turns)} and {len(answer)}")
    values: dict[str, str] = {}
    if question.category in NEED_REFERENCE_CATEGORIES:
        if reference is None or len(reference) < turn:
            raise UserError(f"question {question.question_id} ({question.category}) is graded "
                            f"against a reference answer with {turn} turn(s); none given")
        values["ref_answer_1"] = reference[0]
        if turn == 2:
            values["ref_answer_2"] = reference[1]
    if turn == 1:
        values.update(question=question.turns[0], answer=answer[0])
    else:
        values.update(question_1=question.turns[0], question_2=question.turns[1],
                      answer_1=answer[0], answer_2=answer[1])
    try:
        user = prompt.prompt_template.format(**values)
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"judge prompt {name!r}: template field {exc} cannot be filled") from None
    return prompt.system_prompt, user


def _is_grade(score: float) -> bool:
    """A score FastChat's scale allows: a failed grade (-1) or a number from 1 to 10."""
    return score == FAILED_RATING or MIN_RATING <= score <= MAX_RATING


def parse_rating(text: str | None) -> int | float:
    """The rating in a judge's text: first ``[[x]]``, else first ``[x]``, else -1 (as FastChat).

    ``x`` is digits with an optional decimal part; an integer is returned as ``int``. A number
    outside 1..10 is -1 as well (our choice, see the module docstring; FastChat keeps it).
    """
    if text is None:
        return FAILED_RATING
    match = _RATING.search(text) or _RATING_FALLBACK.search(text)
    if match is None:
        return FAILED_RATING
    value = match.group(1)
    rating = float(value) if "." in value else int(value)
    return rating if _is_grade(rating) else FAILED_RATING


# ------------------------------------------------------------------------------ scores


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def scores(rows: Iterable[SingleJudgment]) -> dict[str, dict[str, Any]]:
    """MT-Bench scores per model, as FastChat ``show_result.py --mode single``.

    Returns:
        ``{model: {"turn1", "turn2", "score", "n", "n_turn1", "n_turn2", "n_failed"}}``: turn
        means and the pooled mean (None when no row is left), the rows used, and the rows
        dropped because their rating is -1.
    """
    by_model: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = by_model.setdefault(row.model, {1: [], 2: [], "failed": 0})
        if row.score == FAILED_RATING:
            entry["failed"] += 1
            continue
        entry[row.turn].append(float(row.score))
    out = {}
    for model in sorted(by_model):
        entry = by_model[model]
        pooled = entry[1] + entry[2]
        out[model] = {
            "turn1": _mean(entry[1]),
            "turn2": _mean(entry[2]),
            "score": _mean(pooled),
            "n": len(pooled),
            "n_turn1": len(entry[1]),
            "n_turn2": len(entry[2]),
            "n_failed": entry["failed"],
        }
    return out


def format_text(result: Mapping[str, Mapping[str, Any]]) -> str:
    """A readable table of :func:`scores`, best model first."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    lines = [
        "MT-Bench single-answer grading (1-10; -1 ratings dropped)",
        f"{'model':<40} {'turn 1':>8} {'turn 2':>8} {'score':>8} {'rows':>5} {'failed':>6}",
    ]
    ranked = sorted(result.items(), key=lambda kv: (-(kv[1]["score"] or 0.0), kv[0]))
    for model, row in ranked:
        lines.append(f"{model:<40} {cell(row['turn1']):>8} {cell(row['turn2']):>8} "
                     f"{cell(row['score']):>8} {row['n']:>5} {row['n_failed']:>6}")
    return "\n".join(lines) + "\n"
