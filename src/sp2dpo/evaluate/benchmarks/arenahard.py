"""Arena-Hard-Auto v0.1 scoring: judge verdicts -> battles -> Bradley-Terry -> win rate vs baseline.

Arena-Hard-Auto (``lmarena/arena-hard-auto``, benchmark ``arena-hard-v0.1``) asks a judge to
compare each model's answer with a fixed baseline's (``gpt-4-0314``) on 500 hard prompts, twice
per prompt: **game 1** shows the baseline as assistant A and the model as B, **game 2** swaps
them. Each game ends with one verdict label (:data:`VERDICT_LABELS`). This module reproduces what
the official ``show_result.py`` / ``utils_math.py`` of the v0.1 era do with those labels, so that a
score computed here can be put next to the leaderboard's:

1. **Battles** (:func:`judgments_to_battles`): every game becomes rows of a table with columns
   ``question_id, model_a, model_b, winner`` where ``model_a`` is always the baseline. A game-1
   label is read as written, a game-2 label mirrored (its ``A`` is the model). ``A>B`` / ``B>A``
   give one row, a strong ``A>>B`` / ``B>>A`` gives ``weight`` identical rows (3 by default),
   ``A=B`` one ``tie`` row, any other label (none, several, ``A<B``...) no row.
2. **Bradley-Terry** (:func:`bradley_terry`): the official code fits a logistic regression without
   intercept or penalty on the battle table stacked twice, where a tie is a win for ``model_a`` in
   the first copy and for ``model_b`` in the second. Here the same likelihood is maximised by
   Newton's method (each battle row counts as 2 trials with 2, 1 or 0 successes for
   ``model_a``). Ratings are on the Elo scale (400 points per factor 10 in odds, 1000 for the
   baseline).
3. **Score**: the predicted win rate against the baseline, in percent. When every battle
   involves the baseline, as in Arena-Hard, a model's score is just ``100 * (W + T/2) / N``
   over its rows (``W`` wins, ``T`` ties), so one model's judgments determine its score.
4. **Interval** (:func:`score_battles`): a 95% percentile bootstrap over the rows of the whole
   table (``rounds`` refits, 2.5th and 97.5th percentiles of each rating, turned into win rates).
   The generator is ``numpy.random.default_rng(seed)``. The official interval resamples the
   pooled table of all ~60 leaderboard models with numpy's global state seeded with 42, so it
   depends on that pool and cannot be reproduced from a few models' battles; ours is
   deterministic for a given table and seed (docs/benchmarks.md).

Our pipeline judges with its own prompt (``prompts/judge/arena_hard/``, :class:`ArenaHardPrompt`)
and feeds its per-question labels through :func:`verdicts_to_battles`, the same code path as the
official judgment files (:func:`read_judgments`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.artifacts import write_text
from sp2dpo.core.errors import UserError
from sp2dpo.evaluate.benchmarks.bradley_terry import (
    DEFAULT_BASELINE,
    DEFAULT_ROUNDS,
    DEFAULT_SEED,
    bradley_terry,
    format_text,
    score_battles,
    win_rate,
)
from sp2dpo.evaluate.benchmarks.evalfiles import (
    BenchmarkInputError,
    field,
    iter_jsonl,
    question_id,
    text_field,
)
from sp2dpo.evaluate.judges.prompts import prompt_sha256, read_prompt_folder

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BASELINE",
    "DEFAULT_PROMPT_DIR",
    "DEFAULT_ROUNDS",
    "DEFAULT_SEED",
    "DEFAULT_WEIGHT",
    "VERDICT_LABELS",
    "WINNERS",
    "ArenaAnswer",
    "ArenaHardPrompt",
    "ArenaQuestion",
    "Battle",
    "Game",
    "Judgment",
    "bradley_terry",
    "format_text",
    "judgments_to_battles",
    "parse_verdict",
    "read_answers",
    "read_battles",
    "read_judgments",
    "read_questions",
    "score_battles",
    "verdicts_to_battles",
    "win_rate",
    "write_battles",
]

#: The five verdict labels of the v0.1 judge prompt, from "A much better" to "B much better".
VERDICT_LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
#: The official ``regex_pattern`` of ``config/judge_config.yaml``: a label in double brackets.
VERDICT_PATTERN = re.compile(r"\[\[([AB<>=]+)\]\]")
#: Values of the ``winner`` column of a battle table.
WINNERS = ("model_a", "model_b", "tie")

#: Rows written for a strong (``>>``) verdict: the official ``--weight`` default.
DEFAULT_WEIGHT = 3
#: Our judge prompt for the pipeline (system.txt, user.txt).
DEFAULT_PROMPT_DIR = Path("prompts/judge/arena_hard")

#: Game 1 (baseline shown as A): label -> (winner, strong). Game 2 mirrors the winner.
_GAME_ONE = {
    "A>>B": ("model_a", True),
    "A>B": ("model_a", False),
    "A=B": ("tie", False),
    "B>A": ("model_b", False),
    "B>>A": ("model_b", True),
}
_MIRROR = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}


# ------------------------------------------------------------------------------ records


@dataclasses.dataclass(frozen=True)
class ArenaQuestion:
    """One Arena-Hard prompt (``question.jsonl``): its id, category, topic cluster and text."""

    question_id: str | int
    category: str
    cluster: str | None
    prompt: str


@dataclasses.dataclass(frozen=True)
class ArenaAnswer:
    """One model's answer to one prompt (``model_answer/<model>.jsonl``).

    ``token_len`` is the official tiktoken length when the file carries it (the leaderboard's
    ``avg_tokens``), else None.
    """

    question_id: str | int
    model: str
    text: str
    token_len: int | None = None


@dataclasses.dataclass(frozen=True)
class Game:
    """One judge call: the label (``score``, None when none could be parsed) and, when kept,
    the judge's prompt and text."""

    score: str | None
    judgment: str | None = None
    user_prompt: str | None = None


@dataclasses.dataclass(frozen=True)
class Judgment:
    """One row of an official judgment file: both games of one model on one question.

    ``games[0]`` shows the baseline as A and the model as B; ``games[1]`` swaps them.
    """

    question_id: str | int
    model: str
    judge: str
    games: tuple[Game, ...]


@dataclasses.dataclass(frozen=True)
class Battle:
    """One row of a battle table; ``winner`` is one of :data:`WINNERS`."""

    question_id: str | int
    model_a: str
    model_b: str
    winner: str


# ------------------------------------------------------------------------------ readers


def read_questions(path: str | Path) -> dict[str | int, ArenaQuestion]:
    """The official ``question.jsonl(.gz)``: ``question_id, category, cluster, turns=[{content}]``.

    Returns:
        Questions by id, in file order.

    Raises:
        FileNotFoundError, BenchmarkInputError: see :func:`~sp2dpo.evaluate.benchmarks.evalfiles.iter_jsonl`;
            also a missing or mistyped field, no turn, or a repeated id (file, line and field
            named).
    """
    out: dict[str | int, ArenaQuestion] = {}
    for where, row in iter_jsonl(path):
        qid = question_id(row, where)
        turns = field(row, "turns", where, list)
        if not turns or not isinstance(turns[0], dict):
            raise BenchmarkInputError(f"{where}: field 'turns' must hold at least one object")
        content = text_field(turns[0], "content", f"{where}: turns[0]")
        cluster = row.get("cluster")
        if cluster is not None and not isinstance(cluster, str):
            raise BenchmarkInputError(f"{where}: field 'cluster' must be a string")
        if qid in out:
            raise BenchmarkInputError(f"{where}: field 'question_id': {qid!r} repeated")
        out[qid] = ArenaQuestion(qid, text_field(row, "category", where), cluster, content)
    return out


def read_answers(path: str | Path) -> dict[str | int, ArenaAnswer]:
    """One model's official answer file: ``question_id, model_id, choices=[{turns:[{content,
    token_len}]}]`` (the first choice's first turn is the answer).

    Raises:
        FileNotFoundError, BenchmarkInputError: as :func:`read_questions`; also a file that mixes
            several ``model_id`` values.
    """
    out: dict[str | int, ArenaAnswer] = {}
    model: str | None = None
    for where, row in iter_jsonl(path):
        qid = question_id(row, where)
        model_id = text_field(row, "model_id", where)
        if model is not None and model_id != model:
            raise BenchmarkInputError(
                f"{where}: field 'model_id': {model_id!r} differs from {model!r} of earlier lines"
            )
        model = model_id
        choices = field(row, "choices", where, list)
        if not choices or not isinstance(choices[0], dict):
            raise BenchmarkInputError(f"{where}: field 'choices' must hold at least one object")
        turns = field(choices[0], "turns", f"{where}: choices[0]", list)
        if not turns or not isinstance(turns[0], dict):
            raise BenchmarkInputError(f"{where}: field 'choices[0].turns' must hold an object")
        turn = turns[0]
        content = text_field(turn, "content", f"{where}: choices[0].turns[0]")
        token_len = turn.get("token_len")
        if token_len is not None and (isinstance(token_len, bool) or not isinstance(token_len, int)):
            raise BenchmarkInputError(f"{where}: field 'choices[0].turns[0].token_len' must be an integer")
        if qid in out:
            raise BenchmarkInputError(f"{where}: field 'question_id': {qid!r} repeated")
        out[qid] = ArenaAnswer(qid, model_id, content, token_len)
    return out


def _game(value: Any, where: str, index: int) -> Game:
    name = f"games[{index}]"
    if value is None:  # a game the judge never finished: no verdict
        return Game(None)
    if not isinstance(value, dict):
        raise BenchmarkInputError(f"{where}: field '{name}' must be a JSON object or null")
    if "score" not in value:
        raise BenchmarkInputError(f"{where}: missing field '{name}.score'")
    label = value["score"]
    if label is not None and not isinstance(label, str):
        raise BenchmarkInputError(f"{where}: field '{name}.score' must be a string or null")
    texts = {}
    for key in ("judgment", "user_prompt"):
        text = value.get(key)
        if text is not None and not isinstance(text, str):
            raise BenchmarkInputError(f"{where}: field '{name}.{key}' must be a string")
        texts[key] = text
    return Game(label, **texts)


def read_judgments(paths: str | Path | Iterable[str | Path]) -> list[Judgment]:
    """Official judgment files of ``gen_judgment.py`` (one per model), in the order given.

    Each line: ``question_id, model, judge, games`` with ``games`` a list of two objects
    ``{user_prompt, judgment, score}``; ``score`` is the parsed label or null.

    Raises:
        FileNotFoundError, BenchmarkInputError: a missing or mistyped field (``FILE:LINE: missing
            field 'games'``), ``games`` not of length 2, or the same (model, question) twice.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Judgment] = []
    seen: dict[tuple[str, str | int], str] = {}
    for path in paths:
        for where, row in iter_jsonl(path):
            qid = question_id(row, where)
            model = text_field(row, "model", where)
            judge = text_field(row, "judge", where)
            games = field(row, "games", where, list)
            if len(games) != 2:
                raise BenchmarkInputError(
                    f"{where}: field 'games' must hold 2 games (baseline first, then swapped), "
                    f"got {len(games)}"
                )
            key = (model, qid)
            if key in seen:
                raise BenchmarkInputError(
                    f"{where}: model {model!r}, question_id {qid!r} already judged at {seen[key]}"
                )
            seen[key] = where
            out.append(Judgment(qid, model, judge, tuple(_game(g, where, i) for i, g in enumerate(games))))
    return out


def read_battles(path: str | Path) -> list[Battle]:
    """A battle table as JSON Lines (``question_id, model_a, model_b, winner``), e.g. the one the
    official ``show_result.py`` writes to ``data/arena_hard_battles.jsonl``.

    Raises:
        FileNotFoundError, BenchmarkInputError: a missing or mistyped field, a ``winner`` outside
            :data:`WINNERS`, or a model playing itself.
    """
    out = []
    for where, row in iter_jsonl(path):
        qid = question_id(row, where)
        a, b = text_field(row, "model_a", where), text_field(row, "model_b", where)
        winner = text_field(row, "winner", where)
        if winner not in WINNERS:
            raise BenchmarkInputError(
                f"{where}: field 'winner' must be one of {', '.join(WINNERS)}, got {winner!r}"
            )
        if a == b:
            raise BenchmarkInputError(f"{where}: fields 'model_a' and 'model_b' are both {a!r}")
        out.append(Battle(qid, a, b, winner))
    return out


def write_battles(battles: Iterable[Battle], path: str | Path) -> None:
    """Write a battle table as JSON Lines (the columns of :func:`read_battles`), atomically."""
    lines = [json.dumps(dataclasses.asdict(b), ensure_ascii=False) + "\n" for b in battles]
    write_text("".join(lines), path)


# ------------------------------------------------------------------------------ verdicts, battles


def parse_verdict(text: str | None) -> str | None:
    """The verdict label of a judge's text, as the official ``get_score`` reads it.

    Every ``[[...]]`` made of ``A``, ``B``, ``<``, ``>``, ``=`` is a candidate; exactly one distinct
    candidate (possibly repeated) is the verdict, none or several distinct ones give None. The
    label is returned as written, so it may lie outside :data:`VERDICT_LABELS` (``[[A<B]]``);
    :func:`judgments_to_battles` drops such labels, as the official code does.
    """
    if text is None:
        return None
    found = VERDICT_PATTERN.findall(text)
    if len(set(found)) != 1:
        return None
    return found[0].strip("\n")


def judgments_to_battles(
    judgments: Iterable[Judgment],
    baseline: str = DEFAULT_BASELINE,
    weight: int = DEFAULT_WEIGHT,
    first_game_only: bool = False,
) -> list[Battle]:
    """The battle table of judgment rows, with the official semantics (module docstring, 1.).

    Rows come out per judgment, game 1's before game 2's, so a table written from the official
    files in the same order is reproduced row for row.

    Args:
        judgments: rows of :func:`read_judgments` or :func:`verdicts_to_battles`.
        baseline: the model shown as A in game 1; ``model_a`` of every battle.
        weight: rows per strong (``>>``) verdict.
        first_game_only: use game 1 only (the official ``--first-game-only``).

    Raises:
        UserError: ``weight`` below 1, or a judgment of the baseline against itself.
    """
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
        raise UserError(f"weight must be an integer >= 1, got {weight!r}")
    battles: list[Battle] = []
    for row in judgments:
        if row.model == baseline:
            raise UserError(f"judgment of the baseline {baseline!r} against itself "
                            f"(question_id {row.question_id!r})")
        for index, game in enumerate(row.games[:1] if first_game_only else row.games[:2]):
            outcome = _GAME_ONE.get(game.score) if game.score is not None else None
            if outcome is None:  # no verdict, or a label outside the five: no battle
                continue
            winner, strong = outcome
            if index == 1:
                winner = _MIRROR[winner]
            battle = Battle(row.question_id, baseline, row.model, winner)
            battles.extend([battle] * (weight if strong else 1))
    return battles


def verdicts_to_battles(
    verdicts: Mapping[str, Mapping[str | int, Sequence[str | None]]],
    baseline: str = DEFAULT_BASELINE,
    weight: int = DEFAULT_WEIGHT,
    judge: str = "",
) -> list[Battle]:
    """Our pipeline's verdicts as a battle table, through :func:`judgments_to_battles`.

    Args:
        verdicts: ``{model: {question_id: (game-1 label, game-2 label)}}``: game 1 shows the
            baseline as A, game 2 shows the model as A; a label is what :func:`parse_verdict`
            returned (None: no verdict).
        baseline, weight: as in :func:`judgments_to_battles`.
        judge: the judge's name, kept on the intermediate rows (not in the battles).

    Raises:
        UserError: a question without exactly two labels, or as :func:`judgments_to_battles`.
    """
    rows = []
    for model, per_question in verdicts.items():
        for qid, labels in per_question.items():
            if isinstance(labels, str) or len(labels) != 2:
                raise UserError(f"model {model!r}, question_id {qid!r}: expected 2 labels "
                                f"(game 1, game 2), got {labels!r}")
            rows.append(Judgment(qid, model, judge, tuple(Game(label) for label in labels)))
    return judgments_to_battles(rows, baseline=baseline, weight=weight)


# ------------------------------------------------------------------------------ our judge prompt


@dataclasses.dataclass(frozen=True)
class ArenaHardPrompt:
    """Our Arena-Hard judge prompt: a system text and a user template (``prompts/judge/arena_hard``).

    The user template has exactly the placeholders ``{question}``, ``{answer_a}``, ``{answer_b}``
    (``str.format`` fields; a literal brace is doubled). ``sha256`` identifies the version: the
    hash of the system text, a NUL byte and the user template.
    """

    system: str
    user: str
    sha256: str

    FIELDS = frozenset({"question", "answer_a", "answer_b"})

    @classmethod
    def load(cls, folder: str | Path = DEFAULT_PROMPT_DIR) -> ArenaHardPrompt:
        """Read ``system.txt`` and ``user.txt`` of ``folder`` and check the placeholders.

        Raises:
            UserError: a missing file, or a user template whose fields are not exactly the three.
        """
        folder = Path(folder)
        system, user = read_prompt_folder(folder, "Arena-Hard judge", error=UserError)
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(user) if f is not None]
        except ValueError as exc:
            raise UserError(f"{folder / 'user.txt'}: bad template: {exc}") from None
        if sorted(fields) != sorted(cls.FIELDS):
            raise UserError(f"{folder / 'user.txt'}: placeholders must be {{question}}, "
                            f"{{answer_a}}, {{answer_b}} once each, found {fields}")
        return cls(system, user, prompt_sha256(system, user))

    def render(self, question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
        """System and user messages for one game (``answer_a`` is shown as Assistant A)."""
        user = self.user.format(question=question, answer_a=answer_a, answer_b=answer_b)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def games(
        self, question: str, baseline_answer: str, model_answer: str
    ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """The messages of both games: game 1 shows the baseline as A, game 2 the model as A."""
        return (self.render(question, baseline_answer, model_answer),
                self.render(question, model_answer, baseline_answer))
