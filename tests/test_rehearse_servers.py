"""The rehearsal's loopback servers (sp2dpo.rehearse.servers), over real HTTP: teacher replies the
rubric parser accepts, the same bytes for the same request in any process, faults on the first
attempt only (the real retry loop gets through them), judge replies each evaluation parser
understands, request counts, and a child process that never outlives its parent."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time

import pytest
import requests

from sp2dpo.core.config import DecodingConfig, TeacherConfig
from sp2dpo.evaluate.benchmarks import arenahard, mtbench
from sp2dpo.evaluate.judges import pairwise
from sp2dpo.evaluate.judges.engine import JudgeEngine
from sp2dpo.evaluate.judges.pairwise import PairwiseJudge
from sp2dpo.llm.client import OpenAICompatibleClient
from sp2dpo.llm.parse import parse_judgement
from sp2dpo.llm.teachers import RetryingCaller
from sp2dpo.rehearse import servers as srv
from sp2dpo.rehearse.servers import Servers, ServerSpec
from tests.conftest import ROOT

CLEAN = {"rate_429": 0.0, "rate_5xx": 0.0, "rate_timeout": 0.0, "rate_invalid": 0.0,
         "latency_median_s": 0.002, "latency_sigma": 0.5}
SPECS = [
    ServerSpec("teacher-a", "teacher", **CLEAN),
    ServerSpec("teacher-b", "teacher", **{**CLEAN, "seed": 1}),
    ServerSpec("student", "student", **CLEAN),
    ServerSpec("judge", "judge", **CLEAN),
    ServerSpec("t-429", "teacher", **{**CLEAN, "rate_429": 1.0, "retry_after_s": 0.4}),
    ServerSpec("t-5xx", "teacher", **{**CLEAN, "rate_5xx": 1.0}),
    ServerSpec("t-hang", "teacher", **{**CLEAN, "rate_timeout": 1.0, "hang_s": 3.0}),
    ServerSpec("t-invalid", "teacher", **{**CLEAN, "rate_invalid": 1.0}),
]
FAST = DecodingConfig(timeout_s=5.0, max_retries=3, backoff_base_s=0.01, backoff_max_s=0.02)


@pytest.fixture(scope="module")
def servers():
    with Servers(SPECS) as running:
        yield running


def teacher_cfg(servers: Servers, name: str, **overrides) -> TeacherConfig:
    fields = {"id": name, "backend": "openai", "preset": "dashscope", "model": f"{name}-model",
              "base_url": servers.base_urls[name], "structured_output": "json_object", **overrides}
    return TeacherConfig(**fields)


def pair_messages(i: int, variant: str = "v1") -> list[dict[str, str]]:
    return [{"role": "system", "content": f"You audit preference pairs ({variant})."},
            {"role": "user", "content": f"BEGIN USER_PROMPT\nQuestion {i}\nEND USER_PROMPT\n"
                                        f"BEGIN WINNER\nAnswer {i}.\nEND WINNER"}]


def post(url: str, body: dict) -> requests.Response:
    return requests.post(url + "/chat/completions", data=json.dumps(body), timeout=10,
                         headers={"Content-Type": "application/json"})


def content(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


@pytest.mark.timeout(60)
def test_teacher_replies_parse_and_are_a_function_of_the_request(servers):
    bodies = [
        OpenAICompatibleClient(teacher_cfg(servers, "teacher-a", preset=preset, structured_output="auto"),
                               FAST).body(pair_messages(i))
        for i in range(40) for preset in ("dashscope", "openai", "gemini")
    ]
    assert {"max_completion_tokens", "response_format"} <= set(bodies[1])  # the openai preset
    first = [post(servers.base_urls["teacher-a"], b) for b in bodies]
    parsed = [parse_judgement(content(r)) for r in first]
    assert all(p.status == "ok" for p in parsed), [p.error for p in parsed if p.status != "ok"]
    assert {p.category for p in parsed} == set(srv.CATEGORIES)
    assert len({(p.magnitude, p.confidence) for p in parsed}) > 30
    assert all(0 <= p.magnitude <= 1 and 0 <= p.confidence <= 1 for p in parsed)
    usage = first[0].json()["usage"]
    assert usage["completion_tokens"] == -(-len(content(first[0])) // 4) and usage["prompt_tokens"] > 10
    # The same request again, and in a fresh process: the same bytes, body and all.
    again = [post(servers.base_urls["teacher-a"], b) for b in bodies[:6]]
    assert [r.content for r in again] == [r.content for r in first[:6]]
    with Servers([SPECS[0]]) as fresh:
        assert [post(fresh.base_urls["teacher-a"], b).content for b in bodies[:6]] == [
            r.content for r in first[:6]
        ]
    # Another seed answers differently; prompt variants of one pair agree often, not always.
    other = [content(post(servers.base_urls["teacher-b"], b)) for b in bodies[:30]]
    assert sum(a != b for a, b in zip(other, map(content, first[:30]), strict=True)) > 20
    categories = [
        [parse_judgement(content(post(servers.base_urls["teacher-a"],
                                      {"model": "m", "messages": pair_messages(i, v)}))).category
         for v in ("v1", "v2", "v3")]
        for i in range(30)
    ]
    agree = sum(len(set(c)) == 1 for c in categories)
    assert 3 <= agree < 30


@pytest.mark.timeout(60)
def test_transient_faults_hit_the_first_attempt_only_and_invalid_replies_stay(servers):
    stop = threading.Event()
    before = servers.stats()
    started = time.monotonic()
    result = RetryingCaller(teacher_cfg(servers, "t-429"), FAST).judge(pair_messages(1), stop)
    assert result is not None and result.status == "ok" and result.attempts == 2
    assert time.monotonic() - started >= 0.4  # Retry-After (0.4 s) over a backoff of <= 0.02 s
    for name in ("t-5xx", "t-hang"):
        decoding = dataclasses.replace(FAST, timeout_s=1.0)  # below hang_s (3 s)
        result = RetryingCaller(teacher_cfg(servers, name), decoding).judge(pair_messages(2), stop)
        assert result is not None and (result.status, result.attempts) == ("ok", 2), name
    result = RetryingCaller(teacher_cfg(servers, "t-invalid"), FAST).judge(pair_messages(3), stop)
    assert result is not None and result.status == "invalid_json"
    assert result.attempts == 1 + FAST.max_retries
    after = servers.stats()

    def delta(name: str) -> dict[str, int]:
        old = before[name]["counts"]
        return {k: v - old.get(k, 0) for k, v in after[name]["counts"].items() if v - old.get(k, 0)}

    assert delta("t-429") == {"requests": 2, "429": 1, "ok": 1}
    assert delta("t-5xx") == {"requests": 2, "5xx": 1, "ok": 1}
    assert delta("t-hang") == {"requests": 2, "timeout": 1, "ok": 1}
    assert delta("t-invalid") == {"requests": 4, "invalid": 4}


@pytest.mark.timeout(60)
def test_student_answers_vary_and_respect_the_token_cap(servers):
    cfg = teacher_cfg(servers, "student", preset="transformers-serve", structured_output="auto",
                      model="smollm2-sp2dpo")
    long = OpenAICompatibleClient(cfg, dataclasses.replace(FAST, max_tokens=2048))
    short = OpenAICompatibleClient(cfg, dataclasses.replace(FAST, max_tokens=16))
    replies = [long.send([{"role": "user", "content": f"Instruction {i}"}]) for i in range(30)]
    lengths = [len(r.text.split()) for r in replies]
    assert all(r.finish_reason == "stop" for r in replies)
    assert min(lengths) >= 30 and max(lengths) <= 400 and len(set(lengths)) > 20
    cut = short.send([{"role": "user", "content": "Instruction 0"}])
    assert cut.finish_reason == "length" and len(cut.text) == 64
    assert replies[0].text.startswith(cut.text) and cut.completion_tokens == 16


def judge_cfg(servers: Servers, logprobs: bool) -> TeacherConfig:
    extra = {"logprobs": True, "top_logprobs": 5} if logprobs else {}
    return teacher_cfg(servers, "judge", preset="openai", model="gpt-4-1106-preview",
                       structured_output="none", extra_body=extra)


@pytest.mark.timeout(60)
def test_each_judge_is_understood_by_its_own_parser(servers):
    assert srv.ALPACA_LABELS == pairwise.LABELS
    assert srv.ARENA_HARD_VERDICTS == arenahard.VERDICT_LABELS
    before = servers.stats()["judge"]["counts"]
    # AlpacaEval: one token; with logprobs a continuous preference, without a discrete one.
    pairs = [({"instruction": f"Task {i}", "output": f"Reference {i}.", "generator": "ref"},
              {"instruction": f"Task {i}", "output": f"Model answer {i}.", "generator": "m"})
             for i in range(20)]
    label_decoding = dataclasses.replace(FAST, max_tokens=1, temperature=0.0, top_p=1.0)
    for logprobs in (True, False):
        annotator = PairwiseJudge(JudgeEngine(judge_cfg(servers, logprobs)), label_decoding,
                                  prompts_dir=ROOT / "prompts" / "judge")
        annotations, summary = annotator.annotate(pairs)
        assert summary["status"] == {"ok": 20}, annotations[0]["error"]
        prefs = [a["preference"] for a in annotations]
        assert all(1.0 <= p <= 2.0 for p in prefs) and len(set(prefs)) > 1
        assert (set(prefs) <= {1.0, 2.0}) is not logprobs
    # MT-Bench single grading and Arena-Hard: free text with the label last, parsed by the
    # suites' own rules, even when the judge entry asks for logprobs (one judge for all suites).
    client = OpenAICompatibleClient(judge_cfg(servers, True), dataclasses.replace(FAST, max_tokens=2048))
    prompts = mtbench.read_judge_prompts(ROOT / mtbench.DEFAULT_JUDGE_PROMPTS)
    ratings = []
    for i in range(20):
        category = ("writing", "math")[i % 2]
        question = mtbench.MTQuestion(i, category, (f"Question {i}?", f"Follow-up {i}?"))
        turn = 1 + (i // 2) % 2
        system, user = mtbench.render_single(question, ("One.", "Two."), turn, ("R1", "R2"), prompts)
        reply = client.send([{"role": "system", "content": system}, {"role": "user", "content": user}])
        ratings.append(mtbench.parse_rating(reply.text))
    assert all(mtbench.MIN_RATING <= r <= mtbench.MAX_RATING for r in ratings) and len(set(ratings)) > 3
    prompt = arenahard.ArenaHardPrompt.load(ROOT / arenahard.DEFAULT_PROMPT_DIR)
    verdicts = [
        arenahard.parse_verdict(client.send(game).text)
        for i in range(20) for game in prompt.games(f"Prompt {i}", "Baseline answer.", f"Answer {i}.")
    ]
    assert set(verdicts) <= set(arenahard.VERDICT_LABELS) and len(set(verdicts)) >= 4
    after = servers.stats()["judge"]["counts"]
    seen = {k: after.get(k, 0) - before.get(k, 0) for k in ("alpaca_eval", "mt_bench", "arena_hard")}
    assert seen == {"alpaca_eval": 40, "mt_bench": 20, "arena_hard": 40}


@pytest.mark.timeout(60)
def test_counts_are_per_server_and_reset(servers):
    servers.reset_counts()
    assert set(servers.counts().values()) == {0}
    for i in range(3):
        post(servers.base_urls["teacher-a"], {"model": "m", "messages": pair_messages(i)})
    for i in range(2):
        post(servers.base_urls["student"], {"model": "m", "messages": pair_messages(i)})
    assert post(servers.base_urls["student"], {"model": "m"}).status_code == 400
    counts = servers.counts()
    assert counts == {**dict.fromkeys(counts, 0), "teacher-a": 3, "student": 3}
    assert servers.stats()["student"]["counts"] == {"requests": 3, "ok": 2, "bad_request": 1}
    servers.reset_counts()
    assert set(servers.counts().values()) == {0}


@pytest.mark.timeout(60)
def test_the_child_process_ends_with_the_context_or_when_stdin_closes():
    spec = ServerSpec("judge", "judge", **CLEAN)
    with Servers([spec]) as running:
        proc, url = running.proc, running.base_urls["judge"]
        assert proc is not None and proc.poll() is None
        assert content(post(url, {"model": "m", "messages": pair_messages(0)}))
    assert proc.poll() is not None
    with pytest.raises(requests.ConnectionError):
        post(url, {"model": "m", "messages": pair_messages(0)})
    # An orphan dies too: its parent's end of stdin closing is enough.
    running = Servers([spec])
    running.start()
    proc = running.proc
    assert proc is not None and proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    running.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
