"""A judge asked for one verdict label written ``[[label]]``: MT-Bench ratings, Arena-Hard verdicts.

Both suites' judges end their answer with a bracketed label (``[[7]]``; ``[[A>B]]``), parsed by
the suite's own rule (:func:`sp2dpo.evaluate.mtbench.parse_rating`,
:func:`sp2dpo.evaluate.arenahard.parse_verdict`). Backends:

- ``openai``: the judge writes its free-text evaluation (``max_tokens`` of the suite, greedy)
  through the shared retry loop; the text is kept in the judgment and parsed; no label is
  ``unparseable`` (a failed judgment, dropped from the scores as the official scripts drop it);
- ``local``: a small in-process model cannot be trusted to write an evaluation and then a label,
  so it is asked for the label directly: after the prompt and the cue ``[[``, the label whose
  whole continuation ``label]]`` is the most probable (:func:`sp2dpo.llm.logprobs.choose`). The
  log-probabilities of every label are kept.

Every call goes through the eval call store (:class:`sp2dpo.evaluate.calls.EvalCalls`): a call
already stored is reused, a new one is recorded before it is used.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sp2dpo.core.config import DecodingConfig, TeacherConfig
from sp2dpo.evaluate.calls import JUDGE, EvalCalls, judge_key
from sp2dpo.evaluate.judge_backends import judge_signature
from sp2dpo.llm.local import LocalScorer
from sp2dpo.llm.teachers import HttpBackend, RetryingCaller

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
    """Asks ``judge`` for one of ``labels`` (see the module doc).

    Args:
        suite: ``mt_bench`` or ``arena_hard`` (part of the cache key).
        judge: the judge entry (``eval.judge``).
        decoding: the judge decoding with the suite's ``max_tokens``.
        labels: the labels the local backend chooses among, in a fixed order.
        parse: the suite's parser of a judge's text into a label (None: no label).
        template_sha256: hash of the suite's judge templates (part of the key).
        calls: the eval call store.
        local: an already loaded local judge model to share (loaded on first use otherwise).
    """

    #: Name and version of the local scoring rule (part of the cache key).
    LOCAL_SCORER = "label-choice/1"

    def __init__(
        self,
        suite: str,
        judge: TeacherConfig,
        decoding: DecodingConfig,
        labels: Sequence[str],
        parse: Callable[[str], str | None],
        template_sha256: str,
        calls: EvalCalls,
        *,
        local: Callable[[], LocalScorer] | None = None,
    ) -> None:
        self.suite = suite
        self.cfg = dataclasses.replace(judge, structured_output="none")
        self.decoding = decoding
        self.labels = tuple(labels)
        self.parse = parse
        self.template_sha256 = template_sha256
        self.calls = calls
        self.signature = {
            **judge_signature(judge, decoding, scorer=self.LOCAL_SCORER),
            **({"labels": list(self.labels)} if judge.backend == "local" else {}),
        }
        self._local_factory = local
        self._local: LocalScorer | None = None
        self._http: RetryingCaller | None = None
        self._lock = threading.Lock()

    def key(self, question: Question) -> str:
        return judge_key(
            suite=self.suite,
            judge_id=self.cfg.id,
            model=self.cfg.model,
            template_sha256=self.template_sha256,
            instruction=question.instruction,
            outputs=question.outputs,
            decode=self.signature,
            extra=question.extra,
        )

    def pending(self, questions: Sequence[Question]) -> list[Question]:
        """The questions with no final record in the store (what a run would pay for)."""
        return [q for q in questions if self.calls.final(self.key(q)) is None]

    def grade(
        self, question: Question, stop: threading.Event | None = None
    ) -> dict[str, Any] | None:
        """The judge record of ``question`` (stored or new); None when ``stop`` was set before
        an HTTP call ended (nothing paid, nothing stored)."""
        key = self.key(question)
        stored = self.calls.get(key)
        if stored is not None:
            return stored
        if self.cfg.backend == "local":
            record = self._grade_local(question)
        else:
            record = self._grade_http(question, stop or threading.Event())
            if record is None:
                return None
        return self.calls.put(key, JUDGE, record)

    def grade_all(
        self, questions: Sequence[Question], stop: threading.Event | None = None
    ) -> list[dict[str, Any] | None]:
        """:meth:`grade` for each question, in order (HTTP: ``max_concurrency`` at once); an
        entry is None when ``stop`` was set before it was judged. Questions with the same key
        (the same judge input, e.g. two methods that gave the same answer) are asked once."""
        stop = stop if stop is not None else threading.Event()
        keys = [self.key(q) for q in questions]
        unique = {key: q for key, q in zip(keys, questions, strict=True)}
        if self.cfg.backend == "local" or self.cfg.max_concurrency == 1 or len(unique) <= 1:
            done: dict[str, dict[str, Any] | None] = {}
            for key, question in unique.items():
                stored = self.calls.get(key)
                if stored is None and stop.is_set():
                    done[key] = None
                    continue
                done[key] = stored if stored is not None else self.grade(question, stop)
            return [done[key] for key in keys]
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.cfg.max_concurrency) as pool:
            futures = {key: pool.submit(self.grade, q, stop) for key, q in unique.items()}
            try:
                results = {key: future.result() for key, future in futures.items()}
            except BaseException:
                stop.set()
                for future in futures.values():
                    future.cancel()
                raise
        return [results[key] for key in keys]

    # ------------------------------------------------------------------------------ backends

    def _grade_local(self, question: Question) -> dict[str, Any]:
        from sp2dpo.llm.logprobs import choose

        with self._lock:
            if self._local is None:
                self._local = self._local_factory() if self._local_factory else LocalScorer(
                    self.cfg.model,
                    revision=self.cfg.revision,
                    dtype=self.cfg.dtype,
                    max_input_tokens=self.cfg.max_input_tokens,
                )
            try:
                choice = choose(self._local, question.messages, CUE, [f"{x}]]" for x in self.labels])
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

    def _grade_http(self, question: Question, stop: threading.Event) -> dict[str, Any] | None:
        with self._lock:
            if self._http is None:
                backend = HttpBackend(self.cfg, self.decoding, chars_per_token=4.0)
                self._http = RetryingCaller(self.cfg, self.decoding, backend=backend)
        done = self._http.call(question.messages, stop, role="judge")
        if done is None:
            return None
        attempt = done.attempt
        record: dict[str, Any] = {
            "status": attempt.status,
            "label": None,
            "text": attempt.text,
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "attempts": done.attempts,
            "cost_usd": (
                (done.prompt_tokens or 0) * self.cfg.price_in_per_m
                + (done.completion_tokens or 0) * self.cfg.price_out_per_m
            ) / 1e6,
            "error": attempt.error,
        }
        if attempt.status == "reply":
            label = self.parse(attempt.text or "")
            record.update(status="ok" if label is not None else "unparseable", label=label)
            if label is None:
                record["error"] = "no single [[label]] verdict in the judge's text"
        return record
