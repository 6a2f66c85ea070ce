"""The judge engine keeps every stored judge call valid: the cache keys and the records it writes
are the bytes the judge code before the engine (commit d1dca76: ``evaluate/judge.py``,
``judge_backends.py``, ``grader.py``) wrote, so the pipeline's eval call store
(``data/eval_calls``) is reused whole. The golden strings below were computed with that code;
a test that fails here means a change that makes every stored judge call be paid again.

Also the engine's own contract with a scripted mode: each distinct request asked once, stored
records reused, ``stop`` and worker errors, and :meth:`JudgeEngine.pending` reading only."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest

from sp2dpo.core.config import ArenaHardConfig, DecodingConfig, MTBenchConfig, TeacherConfig, build
from sp2dpo.evaluate.calls import EvalCalls
from sp2dpo.evaluate.judges.engine import JudgeEngine
from sp2dpo.evaluate.judges.pairwise import AE_KEYS, EXTRA_KEYS, PairwiseJudge
from sp2dpo.llm.teachers import RetriedCall
from tests.fault_server import FaultServer
from tests.test_evaluate_suites import arena_hard_suite, mt_bench_suite

ROOT = Path(__file__).resolve().parents[1]
FAST = DecodingConfig(temperature=0.0, top_p=1.0, max_tokens=1, timeout_s=5.0, max_retries=2,
                      backoff_base_s=0.01, backoff_max_s=0.05)
#: The pipeline's judge (params.yaml ``eval.judge``).
LOCAL = {"id": "gemma3-judge", "backend": "local", "model": "local:gemma3-270m", "max_input_tokens": 1536}
REF = {"instruction": "Name a primary colour.", "output": "Red.", "generator": "gpt4_1106_preview"}
MOD = {"instruction": "Name a primary colour.", "output": "Blue is one.", "generator": "m"}

#: Keys computed by the code before the engine (d1dca76).
GOLDEN = {
    "alpaca_local": "3e16e09c9de4abc5d7963cd6ba1e5544d339490654012457828fec4cb1eef0ff",
    "alpaca_openai": "532a8cb292546e19d91bb469e6d1605ffd7e514523f9d4eb72866a5e01c15286",
    "mt_bench_local": [
        "1fe49f3f42f4f75f0d25d4ef136cddb1f4f1d81aed513053592576b043e202f5",
        "1a3f233771049f42c944a8da2dc525c04bda3fe53107768aedf7b88bc74945d6",
        "9752ab4fc014b76a6fc4a018dcc25f94df90c6fa9aeda2265a7373c8e399cdd9",
        "e6239817020d1ea8827d89152b4e11d84d8edd678382a11cefbcc80c0865fe61",
    ],
    "mt_bench_openai": [
        "0c87e09b5c8617690c8830f20838fac9be9ffe16f93f9611b34a7abf7b29643b",
        "00f49229673570b0ea3e609e109bb146c3d85cc377364204a60ea6b4bfefa12a",
        "1ce4606b9355920f1794cb158d26d34343fb8dedd159226b7f9fc7a6ba12f00a",
        "723dce3a60ba29d0bc06aadbd0469ffc49c1611dd52283117ce4eaaedf1c8738",
    ],
    "arena_hard_local": [
        "0422bc20219f6afd1defd85643a0fc42b49b3f0ac9c19e74634e82bf9388706e",
        "8b650c4d450a3994285858dd777d4a2b09728c4675c16185e02e966486675619",
    ],
    "arena_hard_openai": [
        "a0ae402e0e469bf09f1068cf0319a89c42723169e26add656a8eea23ffa9d5fe",
        "6ef2dde5f938900cfb22659d6b4e93dd2574fb9e4d5d7ec6fe2eee0408c9077c",
    ],
}
TOP = [{"logprob": math.log(0.75), "token": "A"}, {"logprob": math.log(0.25), "token": "B"}]


def http(url: str = "http://127.0.0.1:9/v1") -> TeacherConfig:
    return build(TeacherConfig, {
        "id": "fake-judge", "backend": "openai", "preset": "generic", "model": "fake-gpt",
        "base_url": url, "max_concurrency": 4, "price_in_per_m": 10.0, "price_out_per_m": 30.0,
        "extra_body": {"logprobs": True, "top_logprobs": 5}}, "judge")


@pytest.fixture
def at_root(evalsets, monkeypatch):
    monkeypatch.chdir(ROOT)


def mt_bench_asks(grader_engine: JudgeEngine) -> tuple[Any, list]:
    cfg = MTBenchConfig(limit=2, seed=42)
    suite = mt_bench_suite(cfg, grader_engine, ROOT / "unused", FAST)
    assert [q.question_id for q in suite.questions] == [136, 152]
    [batch] = suite.judge_requests({"m": [("ans one", "ans two")] * 2})
    return batch.mode, batch.requests


def test_judge_keys_are_the_stored_ones(at_root):
    for backend, cfg in (("local", build(TeacherConfig, LOCAL, "judge")), ("openai", http())):
        engine = JudgeEngine(cfg)
        pairwise = PairwiseJudge(engine, FAST, seed=42, prompts_dir=ROOT / "prompts/judge")
        [request] = pairwise.requests([(REF, MOD)])
        assert request.model_first and pairwise.key(request) == GOLDEN[f"alpaca_{backend}"]

        grader, questions = mt_bench_asks(engine)
        assert [grader.key(q) for q in questions] == GOLDEN[f"mt_bench_{backend}"]

        ah = ArenaHardConfig(limit=1, seed=42)
        [batch] = arena_hard_suite(ah, engine, ROOT / "unused", FAST).judge_requests({"m": [["my answer"]]})
        assert [batch.mode.key(r) for r in batch.requests] == GOLDEN[f"arena_hard_{backend}"]


def test_http_records_and_annotations_are_the_stored_ones(at_root):
    with FaultServer(responder=lambda body: ("A", TOP)) as server:
        engine = JudgeEngine(http(server.base_url))
        pairwise = PairwiseJudge(engine, FAST, seed=42, prompts_dir=ROOT / "prompts/judge")
        [annotation], _ = pairwise.annotate([(REF, MOD)])
    assert list(engine.calls.records.values()) == [{
        "attempts": 1, "completion_tokens": 20, "error": None, "is_truncated": False,
        "key": GOLDEN["alpaca_openai"], "kind": "judge", "prompt_tokens": 100, "status": "reply",
        "text": "A", "top_logprobs": TOP,
    }]
    assert list(annotation) == [*AE_KEYS, *EXTRA_KEYS]
    assert {k: v for k, v in annotation.items() if k != "time_per_example"} == {
        "instruction": "Name a primary colour.", "output_1": "Red.",
        "generator_1": "gpt4_1106_preview", "dataset": None, "output_2": "Blue is one.",
        "generator_2": "m", "annotator": "fake-judge", "preference": 1.75,
        "price_per_example": 0.0016, "raw_completion": TOP, "status": "ok",
        "model_on_first_side": True, "attempts": 1, "is_truncated": False, "error": None,
    }

    with FaultServer(responder=lambda body: ("Fine.\nRating: [[7]]", None)) as server:
        grader, questions = mt_bench_asks(JudgeEngine(http(server.base_url)))
        records = grader.grade_all(questions[:2])
    assert records == [{
        "attempts": 1, "completion_tokens": 20, "cost_usd": 0.0016, "error": None, "key": key,
        "kind": "judge", "label": "7", "prompt_tokens": 100, "status": "ok",
        "text": "Fine.\nRating: [[7]]",
    } for key in GOLDEN["mt_bench_openai"][:2]]


# ------------------------------------------------------------------------------ the engine


class Echo:
    """A scripted mode: a request is a string, its record the string; ``boom`` raises."""

    suite = "test"
    decoding = FAST

    def __init__(self) -> None:
        self.asked: list[str] = []

    def key(self, request: str) -> str:
        return f"k-{request}"

    def messages(self, request: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": request}]

    def ask_local(self, scorer: Any, request: str) -> dict[str, Any]:
        self.asked.append(request)
        if request == "boom":
            raise RuntimeError("boom")
        return {"status": "ok", "text": request}

    def record_from_reply(self, done: RetriedCall) -> dict[str, Any]:
        raise AssertionError("local only")


def test_engine_asks_each_request_once_and_reuses_the_store(tmp_path):
    local = build(TeacherConfig, LOCAL, "judge")
    with EvalCalls(tmp_path / "calls") as calls:
        engine = JudgeEngine(local, calls, scorer=object())  # type: ignore[arg-type]
        mode = Echo()
        records = engine.run(mode, ["a", "b", "a"])
        assert [r["text"] for r in records] == ["a", "b", "a"] and mode.asked == ["a", "b"]
        assert records[0]["key"] == "k-a" and engine.latency_s("k-a") > 0.0
    reader = EvalCalls(tmp_path / "calls")
    again = JudgeEngine(local, reader)
    assert again.pending(mode, ["a", "c", "c", "b"]) == ["c"]
    stop = threading.Event()
    stop.set()
    assert again.run(mode, ["a", "c"], stop) == [records[0], None]  # stored, not asked
    assert again.latency_s("k-a") == 0.0 and reader.counts()["reused"] == {"judge": 1}


def test_engine_pending_reads_only(tmp_path):
    store = tmp_path / "missing" / "calls"
    engine = JudgeEngine(http(), EvalCalls(store))
    assert engine.pending(Echo(), ["a", "a"]) == ["a"]
    assert not (tmp_path / "missing").exists()


def test_engine_error_sets_stop_and_raises():
    engine = JudgeEngine(build(TeacherConfig, LOCAL, "judge"), scorer=object())  # type: ignore[arg-type]
    mode, stop = Echo(), threading.Event()
    with pytest.raises(RuntimeError, match="boom"):
        engine.run(mode, ["a", "boom", "c"], stop)
    assert stop.is_set() and mode.asked == ["a", "boom"]
