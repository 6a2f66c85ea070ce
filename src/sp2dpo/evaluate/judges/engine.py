"""One judge engine for every suite: the backend, the eval call store, concurrency and stopping.

:class:`JudgeEngine` owns what every judge of the eval stage shares: the judge entry
(``eval.judge``), its backend, the eval call store (:class:`sp2dpo.evaluate.calls.EvalCalls`),
the thread pool and the stop event. A suite plugs in as a *mode* (:class:`JudgeMode`): what a
request's cache key is, which messages it sends, how the in-process model answers it and how an
HTTP reply becomes the stored record. The modes are :class:`~.pairwise.PairwiseJudge`
(AlpacaEval 2.0) and :class:`~.graded.LabelGrader` (MT-Bench ratings, Arena-Hard verdicts).

Backends (``judge.backend``):

- ``local``: the in-process model (:class:`sp2dpo.llm.local.LocalScorer`), loaded once, lazily,
  under a lock, and shared by every mode; one request computes at a time;
- ``openai``: any OpenAI-compatible endpoint through the shared retry loop of
  :class:`sp2dpo.llm.teachers.RetryingCaller` (retries with backoff, ``Retry-After``, rpm/tpm
  limits), ``judge.max_concurrency`` requests in flight; one caller per distinct decoding (the
  suites ask for different ``max_tokens``), built on first use. ``response_format`` is never sent.

:meth:`JudgeEngine.run` asks each distinct request once: a final record already in the store is
reused, a new one is stored before it is returned. Wall-clock times of the calls made are kept in
memory only (:meth:`JudgeEngine.latency_s`), never in a record, so a re-run writes the same bytes.

Independence: :func:`check_judge_independent` refuses a judge that is one of the annotation
teachers unless ``eval.allow_teacher_judge`` is set.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sp2dpo.core.config import DecodingConfig, TeacherConfig
from sp2dpo.core.errors import UserError
from sp2dpo.evaluate.calls import JUDGE, EvalCalls, judge_key
from sp2dpo.llm import costs, models
from sp2dpo.llm.local import LocalScorer
from sp2dpo.llm.teachers import RetriedCall, RetryingCaller, signature

#: A mode's request (a pair of outputs, a graded question).
R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)


class JudgeConflictError(UserError, ValueError):
    """The judge is also a teacher of the annotation panel."""


def normalize_model(spec: str) -> str:
    """A comparable name of a model spec.

    ``local:<name>`` becomes the folder it resolves to (without converting anything), an
    existing path its absolute form, anything else its last ``/`` segment, lower-cased (so
    ``models/gemini-2.5-flash`` = ``gemini-2.5-flash`` and ``Qwen/Qwen2.5-72B-Instruct`` =
    ``qwen2.5-72b-instruct``).

    >>> normalize_model("models/Gemini-2.5-Flash")
    'gemini-2.5-flash'
    """
    spec = spec.strip()
    if models.is_local_spec(spec):
        name = spec[len(models.LOCAL_PREFIX) :]
        return str((models.cache_dir() / "models" / name).resolve())
    path = Path(spec)
    if path.exists():
        return str(path.resolve())
    return spec.rstrip("/").rsplit("/", 1)[-1].lower()


def check_judge_independent(
    judge: TeacherConfig, teachers: Sequence[TeacherConfig], allow: bool
) -> str | None:
    """Refuse a judge whose model is also a teacher's (compared with :func:`normalize_model`).

    Args:
        judge: the judge entry.
        teachers: the annotation panel.
        allow: ``eval.allow_teacher_judge``.

    Returns:
        None when independent; with ``allow``, a warning for the caller to log and record.

    Raises:
        JudgeConflictError: a conflict and ``allow`` is false.
    """
    mine = normalize_model(judge.model)
    shared = [t for t in teachers if normalize_model(t.model) == mine]
    if not shared:
        return None
    names = ", ".join(f"{t.id!r} ({t.model})" for t in shared)
    what = (
        f"judge {judge.id!r} ({judge.model}) is the same model as teacher {names}: its "
        "preferences are not independent of the beta schedule it evaluates"
    )
    if not allow:
        raise JudgeConflictError(
            f"{what}. Choose another judge (eval.judge, e.g. the gpt4-turbo-judge profile) or set "
            "eval.allow_teacher_judge: true to accept it (recorded in the results)."
        )
    return f"{what} (allowed by eval.allow_teacher_judge)"


def judge_signature(judge: TeacherConfig, decoding: DecodingConfig, *, scorer: str) -> dict[str, Any]:
    """What determines a judge's answer besides its prompt: the cache key's ``decode`` part.

    HTTP: the request fields as sent (model, decoding, extra body; no URL, no key). Local: the
    load settings and ``scorer``, a name and version of the local scoring rule (bump it when the
    rule changes, so stored verdicts are not reused). Computed from the config alone, so a run
    whose every call is cached never loads the judge.
    """
    if judge.backend == "local":
        return {
            "backend": "local",
            "scorer": scorer,
            "revision": judge.revision,
            "dtype": judge.dtype,
            "max_input_tokens": judge.max_input_tokens,
        }
    return signature(dataclasses.replace(judge, structured_output="none"), decoding)


def request_tokens(messages: Sequence[Mapping[str, str]]) -> int:
    """A judge request's prompt-token estimate: its characters / ``CHARS_PER_TOKEN``, plus one."""
    return costs.estimate_tokens(messages) + 1


class JudgeMode(Protocol[R_contra]):
    """A suite's judge on the engine: how one request is keyed, sent and recorded.

    Attributes:
        suite: ``alpaca_eval``, ``mt_bench`` or ``arena_hard`` (part of the cache key).
        decoding: the decoding of its HTTP requests (one caller per distinct decoding).
    """

    suite: str
    decoding: DecodingConfig

    def key(self, request: R_contra) -> str:
        """The request's cache key (:func:`sp2dpo.evaluate.calls.judge_key`)."""
        ...

    def messages(self, request: R_contra) -> list[dict[str, str]]:
        """The chat messages sent for the request (also sized by cost estimates)."""
        ...

    def ask_local(self, scorer: LocalScorer, request: R_contra) -> dict[str, Any]:
        """The record of the request answered by the in-process model."""
        ...

    def record_from_reply(self, done: RetriedCall) -> dict[str, Any]:
        """The record of a finished HTTP call (after retries)."""
        ...


class JudgeEngine:
    """The judge backend, the call store, concurrency and stopping, shared by the modes.

    Args:
        cfg: the judge entry (``eval.judge``).
        calls: the eval call store (None: an in-memory store, nothing kept).
        scorer: an already loaded in-process judge model to use (local backend; default: loaded
            from ``cfg`` on first use).
    """

    def __init__(
        self, cfg: TeacherConfig, calls: EvalCalls | None = None, *, scorer: LocalScorer | None = None
    ) -> None:
        self.cfg = cfg
        self.calls = calls if calls is not None else EvalCalls(None)
        self._http_cfg = dataclasses.replace(cfg, structured_output="none")
        self._scorer = scorer
        self._callers: dict[str, RetryingCaller] = {}
        self._latency: dict[str, float] = {}
        self._lock = threading.Lock()  # lazy construction of the model and the callers
        self._compute = threading.Lock()  # one local request at a time

    @property
    def is_local(self) -> bool:
        """Whether the judge is the in-process model."""
        return self.cfg.backend == "local"

    @property
    def workers(self) -> int:
        """Requests in flight: ``max_concurrency`` over HTTP, one for the local model."""
        return 1 if self.is_local else max(1, self.cfg.max_concurrency)

    @property
    def scorer(self) -> LocalScorer:
        """The in-process judge model, loaded on first use (once, shared by every mode)."""
        with self._lock:
            if self._scorer is None:
                self._scorer = LocalScorer(
                    self.cfg.model,
                    revision=self.cfg.revision,
                    dtype=self.cfg.dtype,
                    max_input_tokens=self.cfg.max_input_tokens,
                )
            return self._scorer

    def caller(self, decoding: DecodingConfig) -> RetryingCaller:
        """The HTTP retry loop for ``decoding``, built on first use."""
        name = repr(decoding)
        with self._lock:
            if name not in self._callers:
                self._callers[name] = RetryingCaller(self._http_cfg, decoding)
            return self._callers[name]

    def close(self) -> None:
        """Release the backend (the local model's memory); a later request loads it again."""
        with self._lock:
            self._scorer = None
            self._callers.clear()

    def call_key(
        self,
        suite: str,
        *,
        template_sha256: str,
        instruction: str,
        outputs: tuple[str, ...],
        decode: Mapping[str, Any],
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """:func:`sp2dpo.evaluate.calls.judge_key` with this judge's id and model."""
        return judge_key(
            suite=suite,
            judge_id=self.cfg.id,
            model=self.cfg.model,
            template_sha256=template_sha256,
            instruction=instruction,
            outputs=outputs,
            decode=decode,
            extra=extra,
        )

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        """USD cost of the given token counts at the judge's prices."""
        return costs.price_usd(self.cfg, prompt_tokens, completion_tokens)

    def cost_estimate(self, max_tokens: int, requests: Sequence[Sequence[Mapping[str, str]]]) -> dict[str, Any]:
        """Calls, estimated prompt tokens, the output-token cap and the maximum cost of
        ``requests`` (each a judge request's messages) at the judge's prices."""
        prompt_tokens = sum(request_tokens(m) for m in requests)
        completion_tokens = max_tokens * len(requests)
        return {
            "calls": len(requests),
            "prompt_tokens": prompt_tokens,
            "max_completion_tokens": completion_tokens,
            "max_cost_usd": self.cost(prompt_tokens, completion_tokens),
        }

    def latency_s(self, key: str) -> float:
        """Wall time of the call of ``key`` made by this engine (0.0 for a stored record)."""
        return self._latency.get(key, 0.0)

    def pending(self, mode: JudgeMode[R], requests: Sequence[R]) -> list[R]:
        """The distinct requests with no final record in the store (what a run would pay for).

        Only reads the store: works on a store opened for reading, creates nothing.
        """
        todo: dict[str, R] = {}
        for request in requests:
            key = mode.key(request)
            if key not in todo and self.calls.final(key) is None:
                todo[key] = request
        return list(todo.values())

    def run(
        self, mode: JudgeMode[R], requests: Sequence[R], stop: threading.Event | None = None
    ) -> list[dict[str, Any] | None]:
        """The record of each request, in order; requests with the same key are asked once.

        A final record in the store is reused; a new one is stored before it is returned. An
        entry is None when ``stop`` was set before its request was judged (nothing paid,
        nothing stored).

        Raises:
            AuthError: the endpoint rejected the key (``stop`` is set, the other calls end).
            Exception: any error of a request, after ``stop`` was set and the rest cancelled.
        """
        stop = stop if stop is not None else threading.Event()
        keys = [mode.key(r) for r in requests]
        unique: dict[str, R] = {}
        for key, request in zip(keys, requests, strict=True):
            unique.setdefault(key, request)
        try:
            if self.workers == 1 or len(unique) <= 1:
                done = {key: self._ask(mode, key, r, stop) for key, r in unique.items()}
            else:
                with concurrent.futures.ThreadPoolExecutor(max_workers=self.workers) as pool:
                    futures = {key: pool.submit(self._ask, mode, key, r, stop) for key, r in unique.items()}
                    try:
                        done = {key: future.result() for key, future in futures.items()}
                    except BaseException:
                        stop.set()
                        for future in futures.values():
                            future.cancel()
                        raise
        except BaseException:
            stop.set()
            raise
        return [done[key] for key in keys]

    def _ask(self, mode: JudgeMode[R], key: str, request: R, stop: threading.Event) -> dict[str, Any] | None:
        """The stored record of ``key``, or a new one asked and stored; None when stopped."""
        stored = self.calls.get(key)
        if stored is not None:
            return stored
        if stop.is_set():
            return None
        started = time.monotonic()
        if self.is_local:
            scorer = self.scorer
            with self._compute:
                record = mode.ask_local(scorer, request)
        else:
            done = self.caller(mode.decoding).call(mode.messages(request), stop, role="judge")
            if done is None:
                return None
            record = mode.record_from_reply(done)
        stored = self.calls.put(key, JUDGE, record)
        self._latency[key] = time.monotonic() - started
        return stored
