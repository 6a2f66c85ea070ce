"""Tests for the HTTP backend's request mapping, limiter, backoff and error classification."""

from __future__ import annotations

import dataclasses
import email.utils
import threading
import time

import pytest
import requests

from sp2dpo.core.config import ConfigError, DecodingConfig, TeacherConfig, build
from sp2dpo.llm.client import (
    PRESETS,
    OpenAICompatibleClient,
    RateLimiter,
    _retry_after,
    request_fields,
)
from sp2dpo.llm.teachers import RetryingCaller, signature


def make(**kw) -> TeacherConfig:
    base = {"id": "t", "model": "m", "base_url": "http://127.0.0.1:9/v1"}
    return build(TeacherConfig, {**base, **kw}, "teachers[0]")


def test_paper_decoding_defaults():
    d = DecodingConfig()
    assert (d.temperature, d.top_p, d.top_k, d.max_tokens, d.seed) == (0.1, 0.8, None, 64, 42)
    assert (d.frequency_penalty, d.presence_penalty, d.repetition_penalty, d.n, d.stop) == (0, 0, 1.0, 1, None)
    assert (d.timeout_s, d.max_retries, d.backoff_base_s) == (180, 3, 5)


def test_openai_preset_maps_token_cap_and_structured_output():
    fields = request_fields(make(preset="openai", base_url=None), DecodingConfig())
    assert fields["max_completion_tokens"] == 64 and "max_tokens" not in fields
    assert (fields["temperature"], fields["top_p"], fields["seed"]) == (0.1, 0.8, 42)
    schema = fields["response_format"]["json_schema"]
    assert fields["response_format"]["type"] == "json_schema" and schema["strict"] is True
    assert schema["schema"]["required"] == [
        "semantic_gap_category", "semantic_gap_magnitude", "semantic_gap_confidence"]
    assert schema["schema"]["additionalProperties"] is False
    assert "top_k" not in fields and "repetition_penalty" not in fields and "stop" not in fields


def test_presets_send_only_what_the_provider_accepts(caplog):
    d = dataclasses.replace(DecodingConfig(), top_k=20, stop=["\n\n"])
    vllm = request_fields(make(preset="vllm"), d)
    assert vllm["top_k"] == 20 and vllm["repetition_penalty"] == 1.0 and vllm["max_tokens"] == 64
    assert vllm["response_format"]["type"] == "json_schema"
    serve = request_fields(make(preset="transformers-serve"), d)
    assert set(serve) == {"stream", "max_tokens", "temperature", "top_p", "seed", "stop"}
    assert "does not accept top_k=20" in caplog.text
    assert request_fields(make(preset="dashscope", base_url=None), d)["response_format"] == {"type": "json_object"}
    gemini = request_fields(make(preset="gemini", base_url=None), d)
    assert "strict" not in gemini["response_format"]["json_schema"]
    assert PRESETS["gemini"].base_url.endswith("/v1beta/openai")
    assert PRESETS["dashscope"].base_url.endswith("/compatible-mode/v1")


def test_omit_params_extra_body_and_structured_override():
    t = make(preset="openai", base_url=None, omit_params=["temperature", "top_p"],
             extra_body={"reasoning_effort": "minimal"}, structured_output="none")
    fields = request_fields(t, DecodingConfig())
    assert "temperature" not in fields and "top_p" not in fields and "response_format" not in fields
    assert fields["reasoning_effort"] == "minimal"
    # The cache signature follows what is sent, never the endpoint or the key variable.
    sig = signature(t, DecodingConfig())
    assert sig == signature(dataclasses.replace(t, base_url="http://x/v1", api_key_env="OTHER"), DecodingConfig())
    assert sig != signature(dataclasses.replace(t, omit_params=[]), DecodingConfig())
    assert sig == signature(t, dataclasses.replace(DecodingConfig(), timeout_s=5, max_retries=0))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": "a_b"}, "must match"),
        ({"model": ""}, "`model` is required"),
        ({"api_key_env": "sk-live-123456"}, "NAME of an environment variable"),
        ({"preset": "vllm", "base_url": None}, "needs a `base_url`"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"omit_params": ["temprature"]}, "unknown name"),
        ({"backend": "anthropic"}, "choose one of 'openai', 'local'"),
    ],
)
def test_bad_teacher_entries(entry, message):
    with pytest.raises(ConfigError, match=message) as info:
        make(**entry)
    assert "sk-live-123456" not in str(info.value)


def test_retry_after_forms():
    assert _retry_after({"Retry-After": "3"}) == 3.0
    assert _retry_after({"Retry-After": "0.5"}) == 0.5
    assert _retry_after({"retry-after-ms": "250"}) == 0.25
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < _retry_after({"Retry-After": date}) <= 30
    assert _retry_after({}) is None and _retry_after({"Retry-After": "soon"}) is None


def test_backoff_is_exponential_with_jitter_and_honours_retry_after():
    d = dataclasses.replace(DecodingConfig(), backoff_base_s=5, backoff_max_s=120, retry_after_max_s=600)
    t = RetryingCaller(make(), d, backend=object())  # type: ignore[arg-type]
    for attempt in range(3):
        for _ in range(20):
            assert 2.5 * 2**attempt <= t.backoff(attempt, None) <= 5 * 2**attempt
    assert t.backoff(10, None) <= 120
    assert t.backoff(0, 30.0) == 30.0 and t.backoff(0, 10_000) == 600


def test_rate_limiter_buckets():
    now = [0.0]
    limiter = RateLimiter(rpm=60, tpm=1200, clock=lambda: now[0])
    assert all(limiter.wait_time(10) == 0 for _ in range(60))  # a full minute's burst
    assert limiter.wait_time(10) == pytest.approx(1.0)  # then one request per second
    now[0] += 1.0
    assert limiter.wait_time(10) == 0
    tokens = RateLimiter(rpm=None, tpm=600, clock=lambda: now[0])
    assert tokens.wait_time(600) == 0 and tokens.wait_time(300) == pytest.approx(30.0)
    stop = threading.Event()
    stop.set()
    assert tokens.acquire(300, stop) is False


def test_connection_refused_is_a_retryable_http_error():
    client = OpenAICompatibleClient(make(), dataclasses.replace(DecodingConfig(), timeout_s=2))
    attempt = client.send([{"role": "user", "content": "hi"}])
    assert attempt.status == "http_error" and attempt.retryable and "connection failed" in attempt.error


def test_error_bodies_are_classified():
    client = OpenAICompatibleClient(make(), DecodingConfig())

    def classify(code, body, headers=None):
        response = requests.Response()
        response.status_code = code
        response._content = body.encode()
        response.headers.update(headers or {})
        return client._classify(response)

    assert classify(401, '{"error": {"code": "invalid_api_key"}}').status == "auth_error"
    assert classify(400, '{"code": "Arrearage", "message": "Access denied"}').status == "auth_error"
    dashscope = '{"error": {"code": "data_inspection_failed", "message": "Input data may contain inappropriate content."}}'
    assert classify(400, dashscope).status == "content_filter"
    limited = classify(429, '{"error": {"message": "slow down"}}', {"Retry-After": "2"})
    assert (limited.status, limited.retryable, limited.retry_after) == ("http_error", True, 2.0)
    assert classify(503, "busy").retryable and not classify(404, '{"error": "no such model"}').retryable
    refusal = '{"choices": [{"message": {"content": null, "refusal": "I cannot help"}, "finish_reason": "stop"}]}'
    assert classify(200, refusal).status == "content_filter"
    parts = '{"choices": [{"message": {"content": [{"type": "text", "text": "{}"}]}, "finish_reason": "stop"}]}'
    assert classify(200, parts).text == "{}"
    empty = classify(200, '{"choices": []}')
    assert (empty.status, empty.retryable) == ("http_error", True)
