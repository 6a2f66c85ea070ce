"""What a benchmark suite is to the eval stage: one object behind :class:`Suite`.

The stage (:mod:`sp2dpo.evaluate.stage`), ``sp2dpo eval --estimate``
(:mod:`sp2dpo.evaluate.estimate`) and the MLflow metrics loop over the registered suites
(:mod:`sp2dpo.evaluate.suites`) and never name one. A suite:

1. selects its items from its params section ``eval.<name>`` when it is built
   (:meth:`Suite.from_config`; nothing is selected when ``enabled`` is false);
2. says which conversations the student answers (:meth:`Suite.conversations`: user turns per
   conversation and an answer-token cap) and writes a method's answers in the official layout
   (:meth:`Suite.write_answers`);
3. builds the judge requests from every evaluated model's answers (:meth:`Suite.judge_requests`,
   each batch a judge mode of :mod:`sp2dpo.evaluate.judges` with its requests): the run asks
   exactly these, the estimate drops the stored ones and prices the rest;
4. judges and scores (:meth:`Suite.evaluate`): its entries in the report, per method, and the
   official judgment files.

Official formats and pure scoring stay in the benchmark modules (``alpaca``, ``winrate``,
``mtbench``, ``arenahard``, ``ifeval``); answering is the stage's, judging the engine's
(:class:`sp2dpo.evaluate.judges.engine.JudgeEngine`).

A fifth suite is one module (a class with these members, added to the registry) and its params
section.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sp2dpo.core import artifacts
from sp2dpo.core.config import EvalConfig
from sp2dpo.evaluate.judges.graded import LabelGrader

#: ``{method: per conversation, the answer of each user turn}``.
Answers = Mapping[str, Sequence[Sequence[str]]]


@dataclasses.dataclass(frozen=True)
class Context:
    """What a suite reads besides its params section.

    Attributes:
        engine: the judge (backend, call store, concurrency, stopping).
        judge_prompts: the AlpacaEval judge's prompt folder.
        arena_hard_prompts: the Arena-Hard judge's prompt folder.
        generator: an evaluated method's model name in the files (``smollm2-sp2dpo``).
        outputs: an evaluated method's output folder.
    """

    engine: Any
    judge_prompts: Path
    arena_hard_prompts: Path
    generator: Callable[[str], str]
    outputs: Callable[[str], Path]


@dataclasses.dataclass(frozen=True)
class Conversations:
    """What the student answers for a suite: user turns per conversation, and the answer-token
    cap of every turn (None: ``eval.generation.max_new_tokens``)."""

    turns: list[list[str]]
    max_new_tokens: int | None = None


@dataclasses.dataclass(frozen=True)
class JudgeBatch:
    """Requests of one judge mode (a :class:`~sp2dpo.evaluate.judges.pairwise.PairwiseJudge` or
    :class:`~sp2dpo.evaluate.judges.graded.LabelGrader`); ``max_tokens`` is its output cap."""

    mode: Any
    requests: list[Any]

    @property
    def max_tokens(self) -> int:
        return int(self.mode.decoding.max_tokens)


@dataclasses.dataclass
class Scored:
    """A suite's outcome: the report's entries per method (``{method: {section: value}}``, the
    section being the suite's name, plus any extra section such as AlpacaEval's ``judge``) and
    wall-clock measurements per method (MLflow and the run log only)."""

    entries: dict[str, dict[str, Any]]
    timings: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)


class Suite(Protocol):
    """One benchmark of the eval stage (see the module doc)."""

    #: The report section and the params section ``eval.<name>``.
    name: ClassVar[str]

    @classmethod
    def from_config(cls, ecfg: EvalConfig, ctx: Context) -> Suite:
        """The suite of ``ecfg``, its items selected (none when it is disabled)."""
        ...

    @property
    def enabled(self) -> bool:
        """Whether the suite has anything to evaluate."""
        ...

    def describe(self) -> str:
        """Its size for the log (``8 AlpacaEval instructions``)."""
        ...

    def conversations(self) -> Conversations:
        """What the student answers."""
        ...

    def write_answers(self, method: str, answers: Sequence[Sequence[str]]) -> None:
        """Write ``method``'s answers (aligned with :meth:`conversations`) in the official layout."""
        ...

    def judge_requests(self, answers: Answers) -> list[JudgeBatch]:
        """Every judge request for these answers (none for a rule-based suite)."""
        ...

    def evaluate(self, answers: Answers, stop: threading.Event) -> Scored | None:
        """Judge (through the engine) and score every method's answers and write the judgment
        files; None when ``stop`` was set before every judge call was made."""
        ...

    def report_fields(self, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """Top-level fields of the student's report (``n_instructions``), even when disabled."""
        ...


def write_jsonl(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """JSON lines, keys in the given order (the official files' layout), atomically."""
    artifacts.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), path)


def label_grader(
    ctx: Context,
    suite: str,
    ecfg: EvalConfig,
    max_tokens: int,
    labels: Sequence[str],
    parse: Callable[[str], str | None],
    template_sha256: str,
) -> LabelGrader:
    """The ``[[label]]`` grader of a judged suite: ``eval.judge_decoding`` with the suite's
    output cap, on the context's engine."""
    decoding = dataclasses.replace(ecfg.judge_decoding, max_tokens=max_tokens)
    return LabelGrader(ctx.engine, suite, decoding, labels, parse, template_sha256)
