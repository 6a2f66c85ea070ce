"""A teacher of the panel: one backend (HTTP or in-process) behind one retry-and-parse loop.

Both backends produce reply *text*; :meth:`RetryingCaller.judge` parses it with
:func:`sp2dpo.llm.parse.parse_judgement`, so statuses, the call log and the call table are
the same whichever backend answered. Retries: transient failures (429, 5xx, timeouts, connection
errors, malformed bodies) and invalid outputs are retried up to ``decoding.max_retries`` times
with exponential backoff and jitter, never sooner than a server's ``Retry-After``; a content
filter is final at once; an auth error raises :class:`~sp2dpo.llm.client.AuthError`.
The local backend is deterministic, so its invalid outputs are not retried.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from sp2dpo.core.config import ConfigError, DecodingConfig, TeacherConfig
from sp2dpo.llm.client import Attempt, AuthError, OpenAICompatibleClient, request_fields
from sp2dpo.llm.costs import CHARS_PER_TOKEN, estimate_tokens, price_usd
from sp2dpo.llm.local import SCORER_VERSION, LocalScorer
from sp2dpo.llm.parse import parse_judgement

#: One local model computes at a time: the CPU is shared and models are not thread-safe.
_LOCAL_LOCK = threading.Lock()


class Backend(Protocol):
    """What a backend provides: one attempt at a reply, and request-level settings."""

    retries_invalid: bool

    def send(self, messages: list[dict[str, str]]) -> Attempt: ...


@dataclasses.dataclass
class CallResult:
    """The final outcome of one call, after retries."""

    status: str
    category: str | None = None
    magnitude: float | None = None
    confidence: float | None = None
    text: str | None = None
    raw: str | None = None
    error: str | None = None
    attempts: int = 0
    latency_s: float | None = None
    elapsed_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    http_status: int | None = None
    response_model: str | None = None
    fingerprint: str | None = None
    finish_reason: str | None = None
    transient: bool = False
    """The call failed for a reason that may pass (connection, timeout, 429 or 5xx after the
    retries): not a final outcome, a re-run calls it again."""


#: Statuses that can be transient (see :attr:`CallResult.transient`).
TRANSIENT_STATUSES = frozenset({"http_error", "timeout"})


def signature(teacher: TeacherConfig, decoding: DecodingConfig) -> dict[str, Any]:
    """The request signature that enters the call-cache key (no secrets, no endpoint URL).

    A local teacher's names the scorer by :data:`sp2dpo.llm.local.SCORER_VERSION` (bumped when
    its answers change), never by a hash of its code: a refactor keeps every stored call.
    """
    if teacher.backend == "local":
        return {
            "backend": "local",
            "seed": decoding.seed,
            "dtype": teacher.dtype,
            "max_input_tokens": teacher.max_input_tokens,
            "revision": teacher.revision,
            "scorer_version": SCORER_VERSION,
        }
    return {"backend": "openai", **request_fields(teacher, decoding)}


class LocalBackend:
    """The in-process backend: wraps :class:`sp2dpo.llm.local.LocalScorer` (loaded lazily)."""

    retries_invalid = False

    def __init__(self, teacher: TeacherConfig, decoding: DecodingConfig) -> None:
        self.teacher = teacher
        self.seed = decoding.seed
        self._judge: Any = None

    def _load(self) -> Any:
        if self._judge is None:
            self._judge = LocalScorer(
                self.teacher.model,
                revision=self.teacher.revision,
                dtype=self.teacher.dtype,
                max_input_tokens=self.teacher.max_input_tokens,
            )
        return self._judge

    def send(self, messages: list[dict[str, str]]) -> Attempt:
        with _LOCAL_LOCK:
            judge = self._load()
            start = time.monotonic()
            try:
                out = judge.judge(messages, seed=self.seed)
            except ValueError as exc:  # e.g. max_input_tokens too small for the rubric
                raise ConfigError(f"teacher {self.teacher.id!r}: {exc}") from None
            latency = time.monotonic() - start
        return Attempt(
            "reply",
            text=out.text,
            raw=out.text,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            response_model=self.teacher.model,
            latency_s=latency,
        )


class HttpBackend:
    """The OpenAI-compatible backend, with the teacher's rate limiter in front of each request."""

    retries_invalid = True

    def __init__(
        self, teacher: TeacherConfig, decoding: DecodingConfig, chars_per_token: float = CHARS_PER_TOKEN
    ) -> None:
        self.client = OpenAICompatibleClient(teacher, decoding)
        self.max_tokens = decoding.max_tokens
        self.chars_per_token = chars_per_token
        self.stop: threading.Event | None = None

    def send(self, messages: list[dict[str, str]]) -> Attempt:
        tokens = estimate_tokens(messages, self.chars_per_token) + self.max_tokens
        if not self.client.limiter.acquire(tokens, self.stop):
            return Attempt("aborted")
        return self.client.send(messages)


@dataclasses.dataclass(frozen=True)
class RetriedCall:
    """The final attempt of :meth:`RetryingCaller.call`, how many were made, and the summed tokens."""

    attempt: Attempt
    attempts: int
    prompt_tokens: int | None
    completion_tokens: int | None


class RetryingCaller:
    """The retrying call loop around one backend: its config, backend and retry policy.

    It drives the annotate teachers, the eval judge's HTTP backend and the answer server alike.

    Args:
        cfg: the teacher's config.
        decoding: decoding and API-call settings (retry budget, backoff).
        chars_per_token: prompt-size heuristic for the tpm limiter.
        backend: inject a backend (tests); default: built from ``cfg.backend``.
    """

    def __init__(
        self,
        cfg: TeacherConfig,
        decoding: DecodingConfig,
        *,
        chars_per_token: float = CHARS_PER_TOKEN,
        backend: Backend | None = None,
    ) -> None:
        self.cfg = cfg
        self.decoding = decoding
        if backend is None:
            backend = (
                LocalBackend(cfg, decoding)
                if cfg.backend == "local"
                else HttpBackend(cfg, decoding, chars_per_token)
            )
        self.backend = backend
        self._rng = random.Random()

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt + 1``: base * 2^attempt with jitter in
        [50%, 100%], capped; never less than the server's Retry-After (itself capped)."""
        d = self.decoding
        delay = min(d.backoff_max_s, d.backoff_base_s * 2**attempt) * self._rng.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, d.retry_after_max_s))
        return delay

    def call(
        self,
        messages: list[dict[str, str]],
        stop: threading.Event,
        *,
        retry_reply: Callable[[Attempt], bool] = lambda attempt: False,
        role: str = "teacher",
        auth_hint: str = "",
    ) -> RetriedCall | None:
        """Send ``messages`` until an attempt is final, backing off between retries.

        An attempt is final when it is a reply that ``retry_reply`` accepts, an error that is
        not retryable, or the last of ``1 + max_retries``. Token counts add up over attempts.
        When ``stop`` is set while an attempt is in flight, that attempt is returned as it ended
        (a reply is paid for: it must be logged, not asked again); no further attempt starts.

        Returns:
            The final attempt with its counts; None when ``stop`` was set before any attempt
            ended.

        Raises:
            AuthError: the endpoint rejected the key (``role`` and ``auth_hint`` word the message).
        """
        if isinstance(self.backend, HttpBackend):
            self.backend.stop = stop
        prompt_tokens = completion_tokens = None
        budget = self.decoding.max_retries
        for attempt_no in range(budget + 1):
            if stop.is_set():
                return None
            attempt = self.backend.send(messages)
            if attempt.status == "aborted":
                return None
            prompt_tokens = add_counts(prompt_tokens, attempt.prompt_tokens)
            completion_tokens = add_counts(completion_tokens, attempt.completion_tokens)
            if attempt.status == "auth_error":
                env = self.cfg.api_key_env or "(no api_key_env configured)"
                raise AuthError(
                    f"{role} {self.cfg.id!r} ({self.cfg.model}): the endpoint rejected the API key "
                    f"from environment variable {env} ({attempt.error}){auth_hint}"
                )
            retryable = retry_reply(attempt) if attempt.status == "reply" else attempt.retryable
            if not retryable or attempt_no == budget or stop.is_set():
                return RetriedCall(attempt, attempt_no + 1, prompt_tokens, completion_tokens)
            if stop.wait(self.backoff(attempt_no, attempt.retry_after)):
                return None
        raise AssertionError("unreachable")  # pragma: no cover

    def judge(self, messages: list[dict[str, str]], stop: threading.Event) -> CallResult | None:
        """Call until a final status (an invalid judgement is retried where the backend allows);
        None when ``stop`` was set before the call finished.

        Raises:
            AuthError: the endpoint rejected the key (or the backend reported an auth failure).
        """
        started = time.monotonic()
        done = self.call(
            messages,
            stop,
            retry_reply=lambda a: self.backend.retries_invalid and parse_judgement(a.text).status != "ok",
            auth_hint="; fix the key and re-run: finished calls are cached",
        )
        if done is None:
            return None
        attempt = done.attempt
        result = CallResult(
            status=attempt.status,
            text=attempt.text,
            raw=attempt.raw,
            error=attempt.error,
            attempts=done.attempts,
            latency_s=attempt.latency_s,
            http_status=attempt.http_status,
            response_model=attempt.response_model,
            fingerprint=attempt.fingerprint,
            finish_reason=attempt.finish_reason,
            transient=attempt.status in TRANSIENT_STATUSES and attempt.retryable,
        )
        if attempt.status == "reply":
            parsed = parse_judgement(attempt.text)
            result.status, result.error = parsed.status, parsed.error
            if parsed.status == "ok":
                result.category = parsed.category
                result.magnitude = parsed.magnitude
                result.confidence = parsed.confidence
        result.prompt_tokens, result.completion_tokens = done.prompt_tokens, done.completion_tokens
        result.elapsed_s = time.monotonic() - started
        return result

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        """USD cost of the given token counts at this teacher's prices
        (:func:`sp2dpo.llm.costs.price_usd`)."""
        return price_usd(self.cfg, prompt_tokens, completion_tokens)


def add_counts(total: int | None, value: int | None) -> int | None:
    """Sum of token counts where either may be unknown (None)."""
    if value is None:
        return total
    return value if total is None else total + value
