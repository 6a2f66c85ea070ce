"""Where student answers come from: transformers in this process, or an OpenAI-compatible server.

- :class:`LocalBackend`: transformers in this process (:func:`~sp2dpo.evaluate.answers.generate.
  load_student`, loaded on first need, so a run whose answers are all stored loads no model),
  batches of ``eval.generation.batch_size`` in the given order;
- :class:`ServerBackend`: any OpenAI-compatible chat-completions endpoint (``eval.server``), up
  to ``max_concurrency`` requests in flight, each through the shared retry loop of
  :class:`sp2dpo.llm.teachers.RetryingCaller` (backoff, ``Retry-After``, key hygiene: the key comes
  from the environment variable named by ``api_key_env`` and never reaches a log or a record).
  The request carries the conversation, ``temperature`` (0 = greedy), ``top_p``, ``seed`` and
  ``max_tokens``; ``repetition_penalty`` only when it is not 1.0 (a vLLM extension). The student's
  tokenizer applies the same prompt budget as in-process generation before the request is sent
  (:func:`~sp2dpo.evaluate.answers.generate.fit_conversation`), and the answer is stripped as in-process
  answers are.

Both report each request's :class:`Reply` as soon as it exists; :class:`sp2dpo.evaluate.answers.
Answerer` stores it before using it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from sp2dpo.core.config import DecodingConfig, GenerationConfig, StudentConfig, TeacherConfig
from sp2dpo.core.config.evaluate import AnswerServerConfig
from sp2dpo.evaluate.answers import generate
from sp2dpo.llm import models
from sp2dpo.llm.teachers import RetryingCaller

log = logging.getLogger(__name__)

#: Status of a record that holds an answer.
OK = "ok"

#: Messages of one request: ``{"role", "content"}`` dicts ending with a user turn.
Messages = list[dict[str, str]]


@dataclasses.dataclass(frozen=True)
class Reply:
    """One backend outcome: an answer (``status == "ok"``) or a failure with its ``error``."""

    status: str
    text: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """The store record (no time stamps or latencies: the same bytes on every run)."""
        record: dict[str, Any] = {
            "status": self.status,
            "answer": self.text if self.status == OK else None,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
        }
        if self.status != OK:
            record["error"] = self.error
        return record


class AnswerBackend(Protocol):
    """What produces answers: ``run`` reports each request's reply through ``done`` as soon as
    it exists (``done(i, reply)`` for ``requests[i]``); ``close`` frees what it holds."""

    def run(
        self,
        requests: Sequence[Messages],
        settings: GenerationConfig,
        max_new_tokens: int,
        done: Callable[[int, Reply], None],
    ) -> None: ...

    def close(self) -> None: ...


class LocalBackend:
    """In-process transformers generation, batched in the order given.

    Args:
        loader: returns ``(model, tokenizer)`` (:func:`~sp2dpo.evaluate.answers.generate.load_student`);
            called on the first request, so a fully cached run loads nothing.
    """

    #: Requests are generated in batches of ``batch_size`` in the order given, and an answer's
    #: floats depend on its batch-mates (padding): the Answerer sends whole fixed chunks.
    batches_in_order = True

    def __init__(self, loader: Callable[[], tuple[Any, Any]]) -> None:
        self._loader = loader
        self._loaded: tuple[Any, Any] | None = None

    def run(
        self,
        requests: Sequence[Messages],
        settings: GenerationConfig,
        max_new_tokens: int,
        done: Callable[[int, Reply], None],
    ) -> None:
        if self._loaded is None:
            self._loaded = self._loader()
        model, tokenizer = self._loaded
        index = 0
        batches = generate.generate_conversations(
            model, tokenizer, requests, settings, max_new_tokens
        )
        for batch in batches:
            for answer in batch:
                done(index, Reply(
                    OK,
                    text=answer.text,
                    prompt_tokens=answer.prompt_tokens,
                    completion_tokens=answer.completion_tokens,
                    finish_reason=answer.finish_reason,
                ))
                index += 1

    def close(self) -> None:
        """Drop the model (the caller's ``gc.collect()`` then frees its memory)."""
        self._loaded = None


class ServerBackend:
    """Answers from an OpenAI-compatible chat-completions endpoint.

    Args:
        server: ``eval.server`` (``base_url`` must be set).
        served_model: the ``model`` field of the requests (:func:`served_model`).
        name: the evaluated model's name in messages (``smollm2-sp2dpo``).
        tokenizer: returns the student's tokenizer (:func:`~sp2dpo.evaluate.answers.generate.
            load_tokenizer`), used to cut over-long prompts as in-process generation does;
            None: conversations are sent as given.
    """

    def __init__(
        self,
        server: AnswerServerConfig,
        served_model: str,
        name: str,
        tokenizer: Callable[[], Any] | None = None,
    ) -> None:
        if server.base_url is None:
            raise ValueError("ServerBackend needs eval.server.base_url")
        self.server = server
        self.served_model = served_model
        self.name = name
        self._tokenizer_loader = tokenizer
        self._tokenizer: Any = None
        self.requests_sent = 0
        self._count_lock = threading.Lock()

    def _teacher(self, settings: GenerationConfig, max_new_tokens: int) -> RetryingCaller:
        """The retry loop and HTTP client of one decoding (its fields are fixed per client)."""
        extra = (
            {"repetition_penalty": settings.repetition_penalty}
            if settings.repetition_penalty != 1.0
            else {}
        )
        cfg = TeacherConfig(
            id=re.sub(r"[^A-Za-z0-9.-]", "-", self.name) or "student",
            backend="openai",
            model=self.served_model,
            # The smallest request: model, messages, max_tokens, temperature, top_p, seed, which
            # vLLM, transformers serve and hosted OpenAI-compatible APIs all accept.
            preset="transformers-serve",
            base_url=self.server.base_url,
            api_key_env=self.server.api_key_env,
            max_concurrency=self.server.max_concurrency,
            extra_body=extra,
        )
        decoding = DecodingConfig(
            temperature=settings.temperature,
            top_p=settings.top_p,
            max_tokens=max_new_tokens,
            seed=settings.seed,
            timeout_s=self.server.timeout_s,
            max_retries=self.server.max_retries,
        )
        return RetryingCaller(cfg, decoding)

    def _fit(self, messages: Messages, settings: GenerationConfig) -> Messages:
        if self._tokenizer_loader is None:
            return messages
        if self._tokenizer is None:
            self._tokenizer = self._tokenizer_loader()
        fitted, _ = generate.fit_conversation(self._tokenizer, messages, settings.max_input_tokens)
        return fitted

    def _ask(self, retry: RetryingCaller, messages: Messages, stop: threading.Event) -> Reply | None:
        with self._count_lock:
            self.requests_sent += 1
        done = retry.call(
            messages, stop, retry_reply=lambda attempt: attempt.text is None, role="student"
        )
        if done is None:
            return None
        attempt = done.attempt
        if attempt.status == "reply" and attempt.text is not None:
            return Reply(
                OK,
                text=attempt.text.strip(),
                prompt_tokens=attempt.prompt_tokens,
                completion_tokens=attempt.completion_tokens,
                finish_reason=attempt.finish_reason,
            )
        status = "http_error" if attempt.status == "reply" else attempt.status
        error = attempt.error or "HTTP 200: reply without text"
        return Reply(status, prompt_tokens=attempt.prompt_tokens,
                     completion_tokens=attempt.completion_tokens,
                     finish_reason=attempt.finish_reason, error=error)

    def run(
        self,
        requests: Sequence[Messages],
        settings: GenerationConfig,
        max_new_tokens: int,
        done: Callable[[int, Reply], None],
    ) -> None:
        """Send every request, ``max_concurrency`` at a time; ``done`` runs in this thread.

        Raises:
            AuthError: the endpoint rejected the key (requests in flight finish and are
                reported first; no new one starts).
        """
        fitted = [self._fit(messages, settings) for messages in requests]
        retry = self._teacher(settings, max_new_tokens)
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.server.max_concurrency)
        pending: dict[Future[Reply | None], int] = {}
        error: BaseException | None = None
        try:
            for i, messages in enumerate(fitted):
                pending[pool.submit(self._ask, retry, messages, stop)] = i
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    index = pending.pop(future)
                    try:
                        reply = future.result()
                    except Exception as exc:  # AuthError: stop the others, raise once all ended
                        stop.set()
                        error = error or exc
                        continue
                    if reply is not None:
                        done(index, reply)
        finally:
            # On an interrupt, requests in flight end (no new one starts) and are still stored:
            # an answer the server computed is not asked for again.
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for future, index in pending.items():
                if future.done() and not future.cancelled() and future.exception() is None:
                    reply = future.result()
                    if reply is not None:
                        done(index, reply)
        if error is not None:
            raise error

    def close(self) -> None:
        self._tokenizer = None


def served_model(server: AnswerServerConfig, student: StudentConfig, method: str) -> str:
    """The served model name of ``method``: ``eval.server.models[method]``, else the student's
    model for ``base`` (an HF id as given; a ``local:`` spec as its converted folder, the name
    ``vllm serve FOLDER`` or ``transformers serve FOLDER`` gives it) and the method's own name
    for an adapter (``--lora-modules METHOD=models/<student>/METHOD``)."""
    if method in server.models:
        return server.models[method]
    if method == generate.BASE_METHOD:
        return models.resolve(student.model)
    return method
