"""A judge asked for one verdict label written ``[[label]]``: MT-Bench ratings, Arena-Hard verdicts.

Both suites' judges end their answer with a bracketed label (``[[7]]``; ``[[A>B]]``), parsed by
the suite's own rule (:func:`sp2dpo.evaluate.benchmarks.mtbench.parse_rating`,
:func:`sp2dpo.evaluate.benchmarks.arenahard.parse_verdict`). :class:`LabelGrader` is a mode of the judge
engine (:class:`~.engine.JudgeEngine`); by backend:

- ``openai``: the judge writes its free-text evaluation (``max_tokens`` of the suite, greedy)
  through the shared retry loop; the text is kept in the judgment and parsed; no label is
  ``unparseable`` (a failed judgment, dropped from the scores as the official scripts drop it);
- ``local``: a small in-process model cannot be trusted to write an evaluation and then a label,
  so it is asked for the label directly: after the prompt and the cue ``[[``, the label whose
  whole continuation ``label]]`` is the most probable (:func:`sp2dpo.llm.logprobs.choose`). The
  log-probabilities of every label are kept.

Every call goes through the eval call store of the engine: a call already stored is reused, a
new one is recorded before it is used.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sp2dpo.core.config import DecodingConfig
from sp2dpo.evaluate.judges.engine import JudgeEngine, judge_signature
from sp2dpo.llm.local import LocalScorer
from sp2dpo.llm.teachers import RetriedCall

#: The answer cue after which the local backend scores ``label]]``.
CUE = "[["


@dataclasses.dataclass(frozen=True)
class Question:
    """One grading request: the judge messages and the content that keys it."""

    messages: list[dict[str, str]]
    instruction: str
    outputs: tuple[str, ...]
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class LabelGrader:
    """Asks the engine's judge for one of ``labels`` (see the module doc).

    Args:
        engine: the judge engine (``eval.judge``, the backend and the call store).
        suite: ``mt_bench`` or ``arena_hard`` (part of the cache key).
        decoding: the judge decoding with the suite's ``max_tokens``.
        labels: the labels the local backend chooses among, in a fixed order.
        parse: the suite's parser of a judge's text into a label (None: no label).
        template_sha256: hash of the suite's judge templates (part of the key).
    """

    #: Name and version of the local scoring rule (part of the cache key).
    LOCAL_SCORER = "label-choice/1"

    def __init__(
        self,
        engine: JudgeEngine,
        suite: str,
        decoding: DecodingConfig,
        labels: Sequence[str],
        parse: Callable[[str], str | None],
        template_sha256: str,
    ) -> None:
        self.engine = engine
        self.suite = suite
        self.decoding = decoding
        self.labels = tuple(labels)
        self.parse = parse
        self.template_sha256 = template_sha256
        self.signature = {
            **judge_signature(engine.cfg, decoding, scorer=self.LOCAL_SCORER),
            **({"labels": list(self.labels)} if engine.is_local else {}),
        }

    def key(self, question: Question) -> str:
        """The cache key of ``question``."""
        return self.engine.call_key(
            self.suite,
            template_sha256=self.template_sha256,
            instruction=question.instruction,
            outputs=question.outputs,
            decode=self.signature,
            extra=question.extra,
        )

    def messages(self, question: Question) -> list[dict[str, str]]:
        """The judge messages of ``question``."""
        return question.messages

    def pending(self, questions: Sequence[Question]) -> list[Question]:
        """The distinct questions with no final record in the store (what a run would pay for)."""
        return self.engine.pending(self, questions)

    def grade_all(
        self, questions: Sequence[Question], stop: threading.Event | None = None
    ) -> list[dict[str, Any] | None]:
        """The judge record of each question, in order (:meth:`JudgeEngine.run`: stored or new;
        the same judge input asked once; None when ``stop`` was set before it was judged)."""
        return self.engine.run(self, questions, stop)

    def grade(self, question: Question, stop: threading.Event | None = None) -> dict[str, Any] | None:
        """:meth:`grade_all` of one question."""
        return self.grade_all([question], stop)[0]

    # ------------------------------------------------------------------------------ backends

    def ask_local(self, scorer: LocalScorer, question: Question) -> dict[str, Any]:
        """The record of the most probable whole ``label]]`` after the cue ``[[``."""
        from sp2dpo.llm.logprobs import choose

        try:
            choice = choose(scorer, question.messages, CUE, [f"{x}]]" for x in self.labels])
        except ValueError as exc:
            return {"status": "prompt_too_long", "label": None, "text": None, "error": str(exc)}
        label = choice.best[: -len("]]")]
        return {
            "status": "ok",
            "label": label,
            "text": f"{CUE}{label}]]",
            "logprobs": {c[: -len("]]")]: lp for c, lp in choice.logprobs.items()},
            "prompt_tokens": choice.prompt_tokens,
            "completion_tokens": 0,
            "is_truncated": choice.is_truncated,
            "error": None,
        }

    def record_from_reply(self, done: RetriedCall) -> dict[str, Any]:
        """The record of a finished HTTP call: the text, its parsed label, tokens and cost."""
        attempt = done.attempt
        record: dict[str, Any] = {
            "status": attempt.status,
            "label": None,
            "text": attempt.text,
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "attempts": done.attempts,
            "cost_usd": self.engine.cost(done.prompt_tokens, done.completion_tokens),
            "error": attempt.error,
        }
        if attempt.status == "reply":
            label = self.parse(attempt.text or "")
            record.update(status="ok" if label is not None else "unparseable", label=label)
            if label is None:
                record["error"] = "no single [[label]] verdict in the judge's text"
        return record
