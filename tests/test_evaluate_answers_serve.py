"""Student answers through the eval call store (`sp2dpo.evaluate.answers`), in-process and from
an OpenAI-compatible server.

The fast tests run a tiny random model with SmolLM2's tokenizer (`build_tiny_model`) and the
scripted loopback server of `tests/fault_server.py`. The slow test builds a LoRA adapter with
non-zero weights, merges it into a full model folder, serves that folder with a real
`transformers serve` on loopback (which does not load adapters, hence the merge) and checks that
the server's answers equal the in-process answers of the base model with the adapter.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from sp2dpo.core.config import ConfigError, EvalConfig, GenerationConfig, StudentConfig, build
from sp2dpo.core.config.evaluate import AnswerServerConfig
from sp2dpo.evaluate import answers as ans
from sp2dpo.evaluate.answers import generate as gen
from sp2dpo.evaluate.calls import ANSWER, EvalCalls
from sp2dpo.llm import models
from sp2dpo.llm.client import AuthError
from tests.conftest import free_port, transformers_serve
from tests.fault_server import FaultServer

SPEC = "local:smollm2-135m-instruct"
SETTINGS = GenerationConfig(max_new_tokens=6, batch_size=2, max_input_tokens=128)
KEY = ans.StudentKey(model=SPEC, revision=None, adapter_sha256="a" * 64)
CONVERSATIONS = [
    ["What is the capital of France?"],
    ["Name a prime number greater than 10."],
    ["Say hello.", "Now say it in French."],
]


# ------------------------------------------------------------------------------ configuration


def test_server_config_defaults_to_in_process_and_rejects_bad_values():
    assert EvalConfig().server == AnswerServerConfig()
    assert AnswerServerConfig().base_url is None  # the offline default: transformers in-process
    cfg = build(EvalConfig, {"server": {"base_url": "http://127.0.0.1:8000/v1",
                                        "models": {"base": "Qwen/Qwen3-4B"}}}, "eval")
    assert cfg.server.models == {"base": "Qwen/Qwen3-4B"}
    cases = [
        ({"base_url": "localhost:8000/v1"}, "eval.server.base_url"),
        ({"api_key_env": "sk-live-123"}, "eval.server.api_key_env must be the NAME"),
        ({"models": {"sp2dpo": " "}}, "eval.server.models: method 'sp2dpo'"),
        ({"max_concurrency": 0}, "eval.server.max_concurrency must be >= 1"),
        ({"timeout_s": 0}, "eval.server.timeout_s must be > 0"),
        ({"max_retries": -1}, "eval.server.max_retries must be >= 0"),
        ({"url": "http://x/v1"}, "eval.server: unknown key(s) url"),
    ]
    for values, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            build(EvalConfig, {"server": values}, "eval")
        assert "sk-live-123" not in str(info.value)  # a pasted key is never echoed


def test_served_model_names_follow_vllm_lora_modules():
    student = StudentConfig(model="HuggingFaceTB/SmolLM2-135M-Instruct")
    server = AnswerServerConfig(base_url="http://127.0.0.1:8000/v1")
    assert ans.served_model(server, student, "base") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert ans.served_model(server, student, "sp2dpo") == "sp2dpo"
    custom = dataclasses.replace(server, models={"base": "smollm2", "dpo": "smollm2-dpo"})
    assert ans.served_model(custom, student, "base") == "smollm2"
    assert ans.served_model(custom, student, "dpo") == "smollm2-dpo"
    assert ans.served_model(custom, student, "sp2dpo") == "sp2dpo"


def test_decode_fields_hold_what_changes_an_answer():
    greedy = ans.decode_fields(SETTINGS, 6)
    assert greedy == {"max_new_tokens": 6, "max_input_tokens": 128, "temperature": 0.0,
                      "repetition_penalty": 1.0, "chat_template": None}
    # A new batch size or seed keeps greedy answers; sampling adds top_p and the seed.
    assert ans.decode_fields(dataclasses.replace(SETTINGS, batch_size=7, seed=1), 6) == greedy
    sampled = ans.decode_fields(dataclasses.replace(SETTINGS, temperature=0.7), 6)
    assert sampled["top_p"] == 1.0 and sampled["seed"] == 42
    assert ans.decode_fields(SETTINGS, 7)["max_new_tokens"] == 7  # the cap used, not the setting's


# ------------------------------------------------------------------------------ in-process


class CountingBackend:
    """A backend wrapper that records the requests it is asked to answer."""

    def __init__(self, inner: ans.AnswerBackend) -> None:
        self.inner = inner
        self.requests: list[list[dict[str, str]]] = []
        self.batches_in_order = getattr(inner, "batches_in_order", False)

    def run(self, requests, settings, max_new_tokens, done):
        self.requests.extend(requests)
        self.inner.run(requests, settings, max_new_tokens, done)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model with SmolLM2's tokenizer and chat template, loaded once."""
    folder = models.build_tiny_model(SPEC, tmp_path_factory.mktemp("tiny") / "model")
    return gen.load_student(str(folder), device="cpu")


def _local(tiny) -> CountingBackend:
    return CountingBackend(ans.LocalBackend(lambda: tiny))


@pytest.mark.timeout(300)
def test_in_process_answers_are_stored_and_only_missing_ones_generated(tiny, tmp_path):
    store = tmp_path / "calls"
    first = _local(tiny)
    with EvalCalls(store) as calls:
        answerer = ans.Answerer(first, calls, KEY, "tiny-test")
        out = answerer.answer(CONVERSATIONS, SETTINGS)
    assert [len(a) for a in out] == [1, 1, 2]
    # Two passes: turn 2 is asked with the conversation so far, its turn-1 answer included.
    assert len(first.requests) == 4 and first.requests[-1] == [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": out[2][0]},
        {"role": "user", "content": "Now say it in French."},
    ]
    # Each answer equals plain generation of its conversation.
    model, tokenizer = tiny
    batches = gen.generate_conversations(model, tokenizer, first.requests[:3], SETTINGS)
    plain = [g for batch in batches for g in batch]
    assert [g.text for g in plain] == [out[0][0], out[1][0], out[2][0]]

    records = [json.loads(line) for path in sorted(store.rglob("*.jsonl"))
               for line in path.read_text().splitlines()]
    assert len(records) == 4 and {r["kind"] for r in records} == {ANSWER}
    assert {r["status"] for r in records} == {"ok"}
    assert set(records[0]) == {"key", "kind", "status", "answer", "prompt_tokens",
                               "completion_tokens", "finish_reason"}  # no time stamps
    assert all(r["finish_reason"] in ("stop", "length") and 1 <= r["completion_tokens"] <= 6
               for r in records)

    # A new run (store re-read from disk) with one extra conversation generates exactly one.
    second = _local(tiny)
    extra = [*CONVERSATIONS, ["Give two tips for sleeping better."]]
    with EvalCalls(store) as calls:
        answerer = ans.Answerer(second, calls, KEY, "tiny-test")
        again = answerer.answer(extra, SETTINGS)
        assert calls.made == {ANSWER: 1} and calls.reused == {ANSWER: 4}
    # The new one shares a batch (of 2) with the third conversation, whose stored turn-1
    # answer is made again in that batch and dropped: the batch is the one a fresh run makes.
    assert again[:3] == out and second.requests == [[{"role": "user", "content": extra[2][0]}],
                                                     [{"role": "user", "content": extra[3][0]}]]
    assert (answerer.generated, answerer.reused) == (1, 4)

    # Single-turn items: answer_instructions, the same keys as one-turn conversations.
    third = _local(tiny)
    with EvalCalls(store) as calls:
        texts = ans.Answerer(third, calls, KEY, "tiny-test").answer_instructions(
            [CONVERSATIONS[1][0], CONVERSATIONS[0][0]], SETTINGS
        )
    assert texts == [out[1][0], out[0][0]] and third.requests == []

    # Another adapter digest, or another token cap, is another answer.
    for key, cap in ((dataclasses.replace(KEY, adapter_sha256="b" * 64), None), (KEY, 5)):
        other = _local(tiny)
        with EvalCalls(store) as calls:
            ans.Answerer(other, calls, key, "tiny-test").answer(CONVERSATIONS[:1], SETTINGS, cap)
        assert len(other.requests) == 1


@pytest.mark.timeout(300)
def test_a_resumed_run_answers_in_the_batches_of_a_fresh_run(tiny, tmp_path):
    """Which answers the store already holds never changes which batch an answer comes from
    (padding makes an answer's floats depend on its batch-mates)."""
    items = [[f"Name the number {n} in words, then spell it backwards."] for n in range(5)]
    fresh = _local(tiny)
    with EvalCalls(tmp_path / "fresh") as calls:
        expected = ans.Answerer(fresh, calls, KEY, "tiny-test").answer(items, SETTINGS)
    assert fresh.requests == [[{"role": "user", "content": c[0]}] for c in items]

    store = tmp_path / "resumed"
    with EvalCalls(store) as calls:  # another run answered items 0 and 3 (in a batch of its own)
        ans.Answerer(_local(tiny), calls, KEY, "tiny-test").answer([items[0], items[3]], SETTINGS)
    resumed = _local(tiny)
    with EvalCalls(store) as calls:
        got = ans.Answerer(resumed, calls, KEY, "tiny-test").answer(items, SETTINGS)
        assert calls.made == {ANSWER: 3} and calls.reused == {ANSWER: 2}
    # Batches of 2 over the whole list: [0, 1], [2, 3], [4]; each holds a missing item, so all
    # five are generated in the fresh run's batches, and only the missing three are stored.
    assert resumed.requests == fresh.requests
    assert [got[i] for i in (1, 2, 4)] == [expected[i] for i in (1, 2, 4)]
    records = [json.loads(line) for path in sorted(store.rglob("*.jsonl"))
               for line in path.read_text().splitlines()]
    assert len(records) == 5 and len({r["key"] for r in records}) == 5


class FailingBackend:
    """Answers every request except those whose last message is one of ``failing``, which
    end with ``status``."""

    def __init__(self, failing: set[str], status: str = "http_error") -> None:
        self.failing = failing
        self.status = status
        self.requests: list[list[dict[str, str]]] = []

    def run(self, requests, settings, max_new_tokens, done):
        for i, messages in enumerate(requests):
            self.requests.append(messages)
            text = messages[-1]["content"]
            if text in self.failing:
                done(i, ans.Reply(self.status, error=f"{self.status}: no answer"))
            else:
                done(i, ans.Reply("ok", text=f"answer to {text}", prompt_tokens=3,
                                  completion_tokens=2, finish_reason="stop"))

    def close(self) -> None:
        pass


def test_failed_answers_raise_after_the_others_are_stored_and_are_asked_again(tmp_path):
    store = tmp_path / "calls"
    items = [["one"], ["please fail"], ["two", "and fail here"], ["three", "four"]]
    with EvalCalls(store) as calls, pytest.raises(ans.AnswerError) as info:
        backend = FailingBackend({"please fail"}, status="content_filter")
        ans.Answerer(backend, calls, KEY, "smollm2-sp2dpo").answer(items, SETTINGS)
    # Turn 1 fails for one item: turn 2 is never asked; the message names model and count.
    assert "smollm2-sp2dpo: 1 of 4 answers failed at turn 1 (1 content_filter)" in str(info.value)
    with EvalCalls(store) as calls:
        statuses = sorted(r["status"] for r in calls.records.values())
        assert statuses == ["content_filter", "ok", "ok", "ok"]
        failed = next(r for r in calls.records.values() if r["status"] != "ok")
        assert failed["answer"] is None and failed["error"] == "content_filter: no answer"
    # A re-run asks only for the failed answer (even a failure the store calls final, such as a
    # content filter: it is no answer), then turn 2; never the stored answers.
    backend = FailingBackend({"and fail here"})
    failed_turn_2 = "1 of 2 answers failed at turn 2"
    with EvalCalls(store) as calls, pytest.raises(ans.AnswerError, match=failed_turn_2):
        ans.Answerer(backend, calls, KEY, "smollm2-sp2dpo").answer(items, SETTINGS)
    assert [m[-1]["content"] for m in backend.requests] == ["please fail", "and fail here", "four"]


# ------------------------------------------------------------------------------ server, scripted


def _echo(body):
    return f"[{body['model']}] {body['messages'][-1]['content']}  ", None


@pytest.mark.timeout(120)
def test_server_backend_sends_the_conversation_and_decoding_concurrently(tmp_path, monkeypatch):
    monkeypatch.setenv("SP2DPO_TEST_ANSWER_KEY", "secret-key-123")
    cfg = AnswerServerConfig(max_concurrency=3, timeout_s=10, max_retries=0,
                             api_key_env="SP2DPO_TEST_ANSWER_KEY")
    with FaultServer(responder=_echo, latency_s=0.2, api_key="secret-key-123") as server:
        cfg = dataclasses.replace(cfg, base_url=server.base_url)
        backend = ans.ServerBackend(cfg, "sp2dpo", "smollm2-sp2dpo")
        items = [[f"question {i}"] for i in range(6)] + [["hi", "again"]]
        with EvalCalls(tmp_path / "calls") as calls:
            out = ans.Answerer(backend, calls, KEY, "smollm2-sp2dpo").answer(items, SETTINGS)
        bodies = [r["body"] for r in server.requests]
        starts = sorted(r["t"] for r in server.requests[:7])
    assert out[0] == ["[sp2dpo] question 0"] and out[6] == ["[sp2dpo] hi", "[sp2dpo] again"]
    assert backend.requests_sent == 8 and len(bodies) == 8
    assert set(bodies[0]) == {"model", "messages", "stream", "max_tokens", "temperature", "top_p",
                              "seed"}
    assert (bodies[0]["model"], bodies[0]["max_tokens"], bodies[0]["temperature"],
            bodies[0]["seed"]) == ("sp2dpo", 6, 0.0, 42)
    assert bodies[-1]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "[sp2dpo] hi"},
        {"role": "user", "content": "again"},
    ]
    assert starts[2] - starts[0] < 0.15  # three in flight at once (each takes 0.2 s)

    # Failures: recorded with their status, never used as answers; a re-run asks again.
    with FaultServer(responder=_echo) as server:
        cfg = dataclasses.replace(cfg, base_url=server.base_url, api_key_env=None)
        items = [["fine"], ["broken [[fault:server_error_once]]"]]
        with EvalCalls(tmp_path / "fail") as calls, pytest.raises(
            ans.AnswerError, match=r"smollm2-dpo: 1 of 2 answers failed at turn 1 \(1 http_error\)"
        ):
            ans.Answerer(ans.ServerBackend(cfg, "dpo", "smollm2-dpo"), calls, KEY,
                         "smollm2-dpo").answer(items, SETTINGS)
        backend = ans.ServerBackend(cfg, "dpo", "smollm2-dpo")
        with EvalCalls(tmp_path / "fail") as calls:
            out = ans.Answerer(backend, calls, KEY, "smollm2-dpo").answer(items, SETTINGS)
        assert out == [["[dpo] fine"], ["[dpo] broken [[fault:server_error_once]]"]]
        assert backend.requests_sent == 1

    # A rejected key stops the run with the variable's name, never the key.
    monkeypatch.setenv("SP2DPO_TEST_ANSWER_KEY", "wrong-key-456")
    with FaultServer(responder=_echo, api_key="secret-key-123") as server:
        cfg = dataclasses.replace(
            cfg, base_url=server.base_url, api_key_env="SP2DPO_TEST_ANSWER_KEY"
        )
        with EvalCalls(None) as calls, pytest.raises(AuthError) as info:
            ans.Answerer(ans.ServerBackend(cfg, "dpo", "smollm2-dpo"), calls, KEY,
                         "smollm2-dpo").answer([["x"]], SETTINGS)
    assert "SP2DPO_TEST_ANSWER_KEY" in str(info.value) and "wrong-key-456" not in str(info.value)


# ------------------------------------------------------------------------------ server, real


def _make_adapter(folder: Path, seed: int) -> None:
    """A LoRA adapter with non-zero, seeded weights, saved as `train` saves one."""
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = models.load_causal_lm(SPEC)
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _merge(adapter: Path, out: Path) -> None:
    """The base model with the adapter merged in, as a full model folder (transformers serve
    loads no adapters)."""
    from peft import PeftModel

    base, _ = models.load_causal_lm(SPEC)
    PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().save_pretrained(out)
    gen.load_tokenizer(SPEC, adapter).save_pretrained(out)


@pytest.fixture
def merged_server(tmp_path):
    """Adapter folder, second adapter, and a `transformers serve` of the merged model; the
    server is always shut down."""
    adapter, other = tmp_path / "adapter", tmp_path / "other"
    _make_adapter(adapter, seed=0)
    _make_adapter(other, seed=1)
    merged = tmp_path / "merged"
    _merge(adapter, merged)
    with transformers_serve(merged, tmp_path / "serve.log", "--dtype", "float32") as base_url:
        yield base_url, merged, adapter, other


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_server_answers_equal_in_process_answers_and_are_generated_once(merged_server, tmp_path):
    base_url, merged, adapter, other = merged_server
    student = StudentConfig(model=SPEC)
    # batch_size 1: no padding in-process, as the server answers one request at a time.
    settings = GenerationConfig(max_new_tokens=16, batch_size=1, max_input_tokens=256)
    items = [
        ["What is the capital of France?"],
        ["Name a prime number greater than 10."],
        ["Translate 'good morning' into Spanish."],
        ["Say hello.", "Now say it in French."],
    ]
    server = AnswerServerConfig(base_url=base_url, max_concurrency=2, timeout_s=300, max_retries=0)
    key = ans.StudentKey.of(student, adapter)
    tokenizer = lambda: gen.load_tokenizer(student, adapter)  # noqa: E731
    store = tmp_path / "calls"

    backend = ans.ServerBackend(server, str(merged), "smollm2-test", tokenizer)
    with EvalCalls(store) as calls:
        served = ans.Answerer(backend, calls, key, "smollm2-test").answer(items, settings)
    assert backend.requests_sent == 5

    local = ans.LocalBackend(lambda: gen.load_student(student, adapter, device="cpu"))
    with EvalCalls(None) as scratch, ans.Answerer(local, scratch, key, "smollm2-test") as answerer:
        in_process = answerer.answer(items, settings)
    assert served == in_process
    assert all(text for turns in served for text in turns)
    # The adapter matters: the base model answers otherwise, so the equality above is not the
    # base model's answers compared with themselves.
    base = ans.LocalBackend(lambda: gen.load_student(student, device="cpu"))
    with EvalCalls(None) as scratch, ans.Answerer(base, scratch, key, "smollm2-base") as answerer:
        assert answerer.answer(items, settings) != in_process

    # The re-run sends nothing: the backend points at a dead port and still gets every answer.
    dead = dataclasses.replace(server, base_url=f"http://127.0.0.1:{free_port()}/v1")
    backend = ans.ServerBackend(dead, str(merged), "smollm2-test", tokenizer)
    with EvalCalls(store) as calls:
        again = ans.Answerer(backend, calls, key, "smollm2-test").answer(items, settings)
        assert calls.made == {} and calls.reused == {ANSWER: 5}
    assert again == served and backend.requests_sent == 0

    # Another adapter (another digest) reuses nothing: every answer is asked of the dead server.
    other_key = ans.StudentKey.of(student, other)
    assert other_key.adapter_sha256 != key.adapter_sha256
    backend = ans.ServerBackend(dead, "other", "smollm2-other", tokenizer)
    with EvalCalls(store) as calls, pytest.raises(ans.AnswerError, match="4 of 4 answers failed"):
        ans.Answerer(backend, calls, other_key, "smollm2-other").answer(items, settings)
    assert backend.requests_sent == 4
