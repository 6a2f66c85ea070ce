"""OpenAI-compatible chat-completions over ``requests``: presets, request mapping, one attempt.

One :class:`OpenAICompatibleClient` per HTTP teacher. :meth:`~OpenAICompatibleClient.send` makes
exactly one request and classifies the outcome as an :class:`Attempt` (a reply text, or a
``http_error`` / ``timeout`` / ``content_filter`` / ``auth_error`` with whether it is worth
retrying and any server-requested wait). Retries, parsing and statuses are shared with the local
backend in :mod:`sp2dpo.llm.teachers`.

Secrets: the key is read from the environment variable *named* in the teacher config, kept in a
private attribute, sent only in the ``Authorization`` header, and scrubbed from every text this
module returns (response bodies, error messages). ``repr`` never shows it.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import math
import os
import threading
import time
from typing import Any

import requests

from sp2dpo.core.config import DecodingConfig, TeacherConfig
from sp2dpo.core.errors import UserError
from sp2dpo.core.schemas import CATEGORIES
from sp2dpo.llm.parse import KEYS

log = logging.getLogger(__name__)

#: Longest response body kept in the call log (characters).
MAX_RAW_CHARS = 8000


class AuthError(UserError, RuntimeError):
    """A teacher's key is missing or rejected: the stage stops at once.

    The message names the teacher and the environment variable, never the key's value.
    """


@dataclasses.dataclass(frozen=True)
class Preset:
    """What an OpenAI-compatible provider accepts.

    Attributes:
        base_url: default endpoint (None: the teacher must give ``base_url``).
        max_tokens_field: request field of the output-token cap.
        params: decoding settings the endpoint accepts (others are not sent).
        structured: default ``response_format`` mode (``json_schema``, ``json_object``, ``none``).
        strict_schema: send ``strict: true`` and ``additionalProperties: false`` with the schema.
    """

    base_url: str | None
    max_tokens_field: str
    params: frozenset[str]
    structured: str
    strict_schema: bool = False


_COMMON = frozenset({"temperature", "top_p", "seed", "frequency_penalty", "presence_penalty", "n", "stop"})

#: Provider presets (``teachers[].preset``).
PRESETS: dict[str, Preset] = {
    # Chat Completions; reasoning models (gpt-5*, o*) only take max_completion_tokens.
    "openai": Preset(
        "https://api.openai.com/v1", "max_completion_tokens", _COMMON, "json_schema", strict_schema=True
    ),
    # Qwen through DashScope's OpenAI-compatible mode (international endpoint; mainland China:
    # https://dashscope.aliyuncs.com/compatible-mode/v1). JSON mode is what qwen-max supports.
    "dashscope": Preset(
        "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        "max_tokens",
        frozenset({"temperature", "top_p", "top_k", "seed", "presence_penalty", "repetition_penalty", "n", "stop"}),
        "json_object",
    ),
    # Gemini's OpenAI-compatible endpoint (key in the Authorization header, as for OpenAI).
    "gemini": Preset(
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "max_tokens",
        frozenset({"temperature", "top_p", "seed", "stop"}),
        "json_schema",
    ),
    # Self-hosted vLLM: sampling extras (top_k, repetition_penalty) are top-level fields.
    "vllm": Preset(None, "max_tokens", _COMMON | {"top_k", "repetition_penalty"}, "json_schema"),
    # `transformers serve`: rejects unknown fields and ignores n / presence_penalty / response_format.
    "transformers-serve": Preset(None, "max_tokens", frozenset({"temperature", "top_p", "seed", "stop"}), "none"),
    "generic": Preset(None, "max_tokens", _COMMON, "none"),
}

#: Values of a decoding setting that mean "off": dropping them for a preset changes nothing.
_NEUTRAL: dict[str, Any] = {
    "top_k": None,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "repetition_penalty": 1.0,
    "n": 1,
    "stop": None,
}

#: Error codes / message fragments of provider content filters (OpenAI, Azure, DashScope, Gemini).
_FILTER_MARKERS = (
    "content_filter",
    "content_policy",
    "content policy",
    "data_inspection_failed",
    "datainspectionfailed",
    "inappropriate content",
    "responsible ai",
    "prohibited_content",
    "blocked by safety",
)
_AUTH_CODES = ("invalid_api_key", "invalidapikey", "arrearage", "permission_denied")
_RETRYABLE_4XX = (408, 409, 425, 429)


def judgement_schema(strict: bool) -> dict[str, Any]:
    """JSON schema of a reply: exactly the three semantic-gap keys."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            KEYS[0]: {"type": "string", "enum": list(CATEGORIES)},
            KEYS[1]: {"type": "number"},
            KEYS[2]: {"type": "number"},
        },
        "required": list(KEYS),
    }
    if strict:
        schema["additionalProperties"] = False
    return schema


def response_format(teacher: TeacherConfig) -> dict[str, Any] | None:
    """The ``response_format`` request field of a teacher (None: not sent)."""
    preset = PRESETS[teacher.preset]
    mode = preset.structured if teacher.structured_output == "auto" else teacher.structured_output
    if mode == "json_object":
        return {"type": "json_object"}
    if mode == "json_schema":
        spec: dict[str, Any] = {"name": "semantic_gap", "schema": judgement_schema(preset.strict_schema)}
        if preset.strict_schema:
            spec["strict"] = True
        return {"type": "json_schema", "json_schema": spec}
    return None


def request_fields(teacher: TeacherConfig, decoding: DecodingConfig) -> dict[str, Any]:
    """Every request field except ``model`` and ``messages``: decoding settings mapped to the
    preset, ``response_format`` and ``extra_body``. This is also the call-cache signature."""
    preset = PRESETS[teacher.preset]
    fields: dict[str, Any] = {"stream": False}
    omitted = set(teacher.omit_params)
    if "max_tokens" not in omitted:
        fields[preset.max_tokens_field] = decoding.max_tokens
    for name in ("temperature", "top_p", "top_k", "seed", "frequency_penalty", "presence_penalty",
                 "repetition_penalty", "n", "stop"):
        value = getattr(decoding, name)
        if name in omitted or value is None:
            continue
        if name not in preset.params:
            if value != _NEUTRAL.get(name, object()):
                log.warning(
                    "teacher %s: preset %s does not accept %s=%r; not sent",
                    teacher.id, teacher.preset, name, value,
                )
            continue
        fields[name] = value
    fmt = response_format(teacher)
    if fmt is not None:
        fields["response_format"] = fmt
    fields.update(teacher.extra_body)
    return fields


@dataclasses.dataclass
class Attempt:
    """The outcome of one request.

    ``status`` is ``reply`` (text to parse) or a terminal status candidate (``http_error``,
    ``timeout``, ``content_filter``, ``auth_error``).
    """

    status: str
    text: str | None = None
    retryable: bool = False
    retry_after: float | None = None
    http_status: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    response_model: str | None = None
    fingerprint: str | None = None
    finish_reason: str | None = None
    raw: str | None = None
    error: str | None = None
    latency_s: float = 0.0
    logprobs: list[dict[str, Any]] | None = None
    """The ``top_logprobs`` of the first output token (``[{"token", "logprob"}, ...]``), when the
    request asked for them (``extra_body: {logprobs: true, top_logprobs: N}``) and the endpoint
    returned them; otherwise None."""


class RateLimiter:
    """Token buckets for requests per minute and tokens per minute (thread-safe).

    Each bucket holds up to one minute's allowance and refills continuously.
    """

    def __init__(self, rpm: int | None, tpm: int | None, clock=time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._limits = {"requests": rpm, "tokens": tpm}
        self._levels = {k: float(v) for k, v in self._limits.items() if v}
        self._stamp = clock()

    def wait_time(self, tokens: int) -> float:
        """Reserve one request of ``tokens`` tokens; return 0, or the seconds to wait first."""
        with self._lock:
            now = self._clock()
            elapsed, self._stamp = now - self._stamp, now
            need = {"requests": 1.0, "tokens": float(tokens)}
            wait = 0.0
            for name, limit in self._limits.items():
                if not limit:
                    continue
                level = min(float(limit), self._levels[name] + elapsed * limit / 60.0)
                self._levels[name] = level
                want = min(need[name], float(limit))
                if level < want:
                    wait = max(wait, (want - level) * 60.0 / limit)
            if wait == 0.0:
                for name in self._levels:
                    self._levels[name] -= min(need[name], float(self._limits[name]))
            return wait

    def acquire(self, tokens: int, stop: threading.Event | None = None) -> bool:
        """Block until a request of ``tokens`` tokens may start; False when ``stop`` was set."""
        while True:
            wait = self.wait_time(tokens)
            if wait == 0.0:
                return True
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)


class OpenAICompatibleClient:
    """HTTP client of one teacher (``backend: openai``).

    Args:
        teacher: the teacher's config.
        decoding: decoding and API-call settings.

    Raises:
        AuthError: when ``api_key_env`` names a variable that is unset or empty.
    """

    def __init__(self, teacher: TeacherConfig, decoding: DecodingConfig) -> None:
        self.teacher = teacher
        self.decoding = decoding
        preset = PRESETS[teacher.preset]
        base = teacher.base_url or preset.base_url
        assert base is not None  # checked by TeacherConfig
        self.url = base.rstrip("/") + "/chat/completions"
        self.fields = request_fields(teacher, decoding)
        self.__key: str | None = None
        if teacher.api_key_env is not None:
            key = os.environ.get(teacher.api_key_env, "").strip()
            if not key:
                raise AuthError(
                    f"teacher {teacher.id!r}: environment variable {teacher.api_key_env} is not set "
                    f"or empty; export the API key there to call {self.url}"
                )
            self.__key = key
        self.limiter = RateLimiter(teacher.rpm, teacher.tpm)
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"OpenAICompatibleClient(teacher={self.teacher.id!r}, url={self.url!r})"

    def redact(self, text: str) -> str:
        """``text`` with the API key (if any) replaced by ``[REDACTED]``."""
        if self.__key and self.__key in text:
            text = text.replace(self.__key, "[REDACTED]")
        return text

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
        return session

    def body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The JSON request body for ``messages``."""
        return {"model": self.teacher.model, "messages": messages, **self.fields}

    def send(self, messages: list[dict[str, str]]) -> Attempt:
        """Make one request and classify the outcome (never raises for HTTP-level failures)."""
        headers = {"Content-Type": "application/json", "User-Agent": "sp2dpo-annotate"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        start = time.monotonic()
        try:
            response = self._session().post(
                self.url,
                data=json.dumps(self.body(messages), ensure_ascii=False).encode("utf-8"),
                headers=headers,
                timeout=(min(self.decoding.timeout_s, 30.0), self.decoding.timeout_s),
            )
        except requests.Timeout:
            return Attempt("timeout", retryable=True, error=f"no response within {self.decoding.timeout_s:g} s",
                           latency_s=time.monotonic() - start)
        except requests.RequestException as exc:
            elapsed = time.monotonic() - start
            if "timed out" in str(exc).lower():  # a read timeout while receiving the body
                return Attempt("timeout", retryable=True, latency_s=elapsed,
                               error=f"no response within {self.decoding.timeout_s:g} s")
            return Attempt("http_error", retryable=True, latency_s=elapsed,
                           error=self.redact(f"connection failed: {type(exc).__name__}"))
        attempt = self._classify(response)
        attempt.latency_s = time.monotonic() - start
        return attempt

    def _classify(self, response: requests.Response) -> Attempt:
        code = response.status_code
        raw = self.redact(response.text[:MAX_RAW_CHARS])
        try:
            payload = response.json()
        except ValueError:
            payload = None
        base = {"http_status": code, "raw": raw, "retry_after": _retry_after(response.headers)}
        if code == 200 and isinstance(payload, dict) and "error" not in payload:
            return self._reply(payload, base)
        message = _error_text(payload) if payload is not None else raw[:300]
        lowered = message.lower()
        if code in (401, 403) or any(m in lowered for m in _AUTH_CODES):
            return Attempt("auth_error", error=self.redact(f"HTTP {code}: {message}"[:300]), **base)
        if any(m in lowered for m in _FILTER_MARKERS):
            return Attempt("content_filter", error=self.redact(f"HTTP {code}: {message}"[:300]), **base)
        retryable = code >= 500 or code in _RETRYABLE_4XX or code == 200
        what = "malformed response body" if code == 200 else message
        return Attempt("http_error", retryable=retryable, error=self.redact(f"HTTP {code}: {what}"[:300]), **base)

    def _reply(self, payload: dict[str, Any], base: dict[str, Any]) -> Attempt:
        usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
        meta = {
            "prompt_tokens": _int(usage.get("prompt_tokens")),
            "completion_tokens": _int(usage.get("completion_tokens")),
            "response_model": payload.get("model") if isinstance(payload.get("model"), str) else None,
            "fingerprint": payload.get("system_fingerprint")
            if isinstance(payload.get("system_fingerprint"), str) else None,
        }
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return Attempt("http_error", retryable=True, error="HTTP 200: response without choices",
                           **meta, **base)
        choice = choices[0]
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
        if finish == "content_filter" or message.get("refusal"):
            refusal = message.get("refusal")
            detail = f"refusal: {refusal}" if isinstance(refusal, str) else "finish_reason content_filter"
            return Attempt("content_filter", finish_reason=finish, error=self.redact(detail[:300]),
                           **meta, **base)
        return Attempt("reply", text=_content_text(message.get("content")), finish_reason=finish,
                       logprobs=_first_top_logprobs(choice.get("logprobs")), **meta, **base)


def _first_top_logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    """The ``top_logprobs`` of the first output token of a chat-completions choice.

    OpenAI layout: ``choice.logprobs.content[0].top_logprobs = [{"token", "logprob", ...}]``.
    Entries without a string token and a numeric, non-NaN log-prob are dropped; None when absent.
    """
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        return None
    top = content[0].get("top_logprobs")
    if not isinstance(top, list):
        return None
    out = []
    for item in top:
        if not isinstance(item, dict) or not isinstance(item.get("token"), str):
            continue
        value = item.get("logprob")
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            continue
        out.append({"token": item["token"], "logprob": float(value)})
    return out or None


def _content_text(content: Any) -> str | None:
    """Message content as text (a string, or the text parts of a list)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _error_text(payload: Any) -> str:
    """A short description of an error body: code and message, in any of the usual layouts."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if not isinstance(payload, dict):
        return str(payload)[:300]
    err = payload.get("error", payload)
    if isinstance(err, dict):
        parts = [str(err[k]) for k in ("code", "type", "status", "message") if err.get(k)]
        return (" ".join(parts) or json.dumps(err))[:300]
    return str(err)[:300]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _retry_after(headers: Any) -> float | None:
    """Server-requested wait in seconds (``retry-after-ms``, or ``Retry-After`` seconds or date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
