"""Tests of the AlpacaEval 2.0 pairwise judge (`sp2dpo.evaluate.judges.pairwise` on the engine).

HTTP tests run against the scripted loopback server of `tests/fault_server.py`, whose
``responder`` plays a judge that finds the model's answer in the prompt and returns its label
with fixed log-probabilities. The slow tests load the real gemma-3-270m (local backend) and start
a real `transformers serve`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from pathlib import Path

import pytest

from sp2dpo.core.config import DecodingConfig, EvalConfig, TeacherConfig, build
from sp2dpo.evaluate.calls import EvalCalls
from sp2dpo.evaluate.judges import pairwise as J
from sp2dpo.evaluate.judges.engine import JudgeConflictError, JudgeEngine, check_judge_independent
from sp2dpo.evaluate.judges.prompts import JudgePrompt
from sp2dpo.llm.client import AuthError
from tests.conftest import compose_params
from tests.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
MODEL_OUT = "model says {i}"
FAST = DecodingConfig(temperature=0.0, top_p=1.0, max_tokens=1, timeout_s=5.0, max_retries=2,
                      backoff_base_s=0.01, backoff_max_s=0.05)


def pairs(n: int, marker: str = "", start: int = 0) -> list[tuple[dict, dict]]:
    out = []
    for i in range(start, start + n):
        instruction = f"Question {i}: what is {i} + {i}? {marker}".strip()
        ref = {"instruction": instruction, "output": f"The answer is {2 * i}.",
               "generator": "gpt4_1106_preview", "dataset": "helpful_base"}
        mod = {"instruction": instruction, "output": MODEL_OUT.format(i=i),
               "generator": "smollm2-sp2dpo", "dataset": "helpful_base"}
        out.append((ref, mod))
    return out


def model_label(body: dict) -> tuple[str, str]:
    """The labels of the model's and the reference's answers in a request's user message."""
    user = body["messages"][-1]["content"]
    found = re.search(r"<answer_([AB])>\nmodel says", user)
    assert found, user
    mine = found.group(1)
    return mine, "B" if mine == "A" else "A"


def judge_responder(body: dict):
    mine, other = model_label(body)
    top = [{"token": mine, "logprob": math.log(0.75)}, {"token": other, "logprob": math.log(0.25)},
           {"token": "The", "logprob": -12.0}]
    return mine, top


def one(judge: J.PairwiseJudge, reference: dict, model: dict) -> dict:
    """The annotation of one pair."""
    [annotation], _ = judge.annotate([(reference, model)])
    return annotation


def http_judge(server: FaultServer, **overrides) -> TeacherConfig:
    entry = {"id": "fake-judge", "backend": "openai", "preset": "generic", "model": "fake-gpt",
             "base_url": server.base_url, "max_concurrency": 4, "price_in_per_m": 10.0,
             "price_out_per_m": 30.0, "extra_body": {"logprobs": True, "top_logprobs": 5},
             **overrides}
    return build(TeacherConfig, entry, "judge")


# ------------------------------------------------------------------------------ pure functions


def test_preference_from_logprobs_is_exact_and_counts_label_variants():
    top = [{"token": "B", "logprob": math.log(0.6)}, {"token": " B", "logprob": math.log(0.15)},
           {"token": "A", "logprob": math.log(0.25)}]
    assert J.preference_from_logprobs(top, "B", "A") == pytest.approx(1.75, abs=1e-12)
    assert J.preference_from_logprobs(top, "A", "B") == pytest.approx(1.25, abs=1e-12)
    # One label outside the top-k counts as probability 0; both outside: no value.
    assert J.preference_from_logprobs([{"token": "A", "logprob": -0.1}], "A", "B") == 2.0
    assert J.preference_from_logprobs([{"token": "The", "logprob": -0.1}], "A", "B") is None
    assert J.preference_from_text("B", "B", "A") == 2.0
    assert J.preference_from_text(" A.\n", "B", "A") == 1.0
    assert J.preference_from_text("Both", "B", "A") is None
    assert J.preference_from_text(None, "B", "A") is None


def test_side_order_is_deterministic_and_mixes():
    instructions = [f"instruction {i}" for i in range(40)]
    sides = [J.model_on_first_side(t, 42) for t in instructions]
    assert sides == [J.model_on_first_side(t, 42) for t in instructions]
    assert 10 <= sum(sides) <= 30
    assert sides != [J.model_on_first_side(t, 7) for t in instructions]
    import hashlib

    assert sides[0] == (hashlib.sha256(b"42:instruction 0").digest()[0] % 2 == 1)


def test_judge_prompt_is_ours_and_labels_outputs():
    prompt = JudgePrompt.load()
    messages = prompt.messages("Say hi.", "first answer", "second answer")
    user = messages[1]["content"]
    assert "<answer_A>\nfirst answer\n</answer_A>" in user
    assert "<answer_B>\nsecond answer\n</answer_B>" in user
    assert user.index("Say hi.") < user.index("first answer") < user.index("second answer")
    assert user.splitlines()[-1].endswith("Reply with the single letter A or B and nothing else.")
    assert "length" in messages[0]["content"].lower()


def test_check_judge_independent():
    def entry(id: str, model: str, backend: str = "openai") -> TeacherConfig:
        return build(TeacherConfig, {"id": id, "model": model, "backend": backend,
                                     "base_url": "http://127.0.0.1:9/v1"}, "t")

    teachers = [entry("gemini", "models/gemini-2.5-flash"), entry("qwen", "qwen-max"),
                entry("gemma", "local:gemma3-270m", "local")]
    assert check_judge_independent(entry("j", "gpt-4-1106-preview"), teachers, False) is None
    with pytest.raises(JudgeConflictError, match=r"teacher 'gemini'.*eval\.allow_teacher_judge"):
        check_judge_independent(entry("j", "Gemini-2.5-Flash"), teachers, False)
    assert issubclass(JudgeConflictError, ValueError)
    # A local spec and the converted folder it resolves to are the same model.
    from sp2dpo.llm import models

    folder = str(models.cache_dir() / "models" / "gemma3-270m")
    with pytest.raises(JudgeConflictError, match="teacher 'gemma'"):
        check_judge_independent(entry("j", folder), teachers, False)
    warning = check_judge_independent(entry("j", "QWEN-MAX"), teachers, True)
    assert "teacher 'qwen'" in warning and "allowed by eval.allow_teacher_judge" in warning


def test_official_judge_profile_composes_the_gpt4_turbo_judge(tmp_path):
    params = compose_params(tmp_path, ["+profiles=gpt4-turbo-judge"])
    judge, decoding = params.eval.judge, params.eval.judge_decoding
    assert (judge.backend, judge.preset, judge.model) == ("openai", "openai", "gpt-4-1106-preview")
    assert judge.api_key_env == "OPENAI_API_KEY"
    assert judge.extra_body == {"logprobs": True, "top_logprobs": 5}
    assert (judge.price_in_per_m, judge.price_out_per_m) == (10.0, 30.0)
    assert (decoding.temperature, decoding.max_tokens, decoding.max_retries) == (0.0, 1, 5)
    assert params.eval.allow_teacher_judge is False
    # Only the judge changed: the rest of eval is the offline default.
    assert params.eval.alpaca_eval == EvalConfig().alpaca_eval


# ------------------------------------------------------------------------------ HTTP backend


def test_http_judge_continuous_preference_from_logprobs():
    items = [*pairs(8), (pairs(1, start=99)[0][0], {**pairs(1, start=99)[0][0], "generator": "m"})]
    with FaultServer(responder=judge_responder) as server:
        annotations, summary = J.run_judge(items, http_judge(server), FAST, seed=42)
        bodies = [r["body"] for r in server.requests]
    assert len(bodies) == 8  # the identical pair was not sent
    assert all(b["logprobs"] is True and b["top_logprobs"] == 5 and b["max_tokens"] == 1 for b in bodies)
    assert all("response_format" not in b and b["temperature"] == 0.0 for b in bodies)
    assert [a["instruction"] for a in annotations] == [ref["instruction"] for ref, _ in items]
    for a in annotations[:8]:
        assert list(a) == [*J.AE_KEYS, *J.EXTRA_KEYS]
        assert a["preference"] == pytest.approx(1.75, abs=1e-12) and a["status"] == "ok"
        assert a["generator_1"] == "gpt4_1106_preview" and a["generator_2"] == "smollm2-sp2dpo"
        assert a["output_2"].startswith("model says") and a["annotator"] == "fake-judge"
        assert a["raw_completion"][0]["logprob"] == pytest.approx(math.log(0.75))
        assert a["price_per_example"] == pytest.approx((100 * 10 + 20 * 30) / 1e6)
        assert a["attempts"] == 1 and a["time_per_example"] > 0
    sides = [a["model_on_first_side"] for a in annotations[:8]]
    assert sides == [J.model_on_first_side(a["instruction"], 42) for a in annotations[:8]]
    assert 0 < sum(sides) < 8
    draw = annotations[8]
    assert (draw["preference"], draw["status"], draw["raw_completion"]) == (1.5, "identical", None)
    assert summary["status"] == {"identical": 1, "ok": 8} and summary["n_judge_calls"] == 8
    assert summary["cost_usd"] == pytest.approx(8 * (100 * 10 + 20 * 30) / 1e6)
    json.dumps(annotations)  # serialisable as an AlpacaEval annotations file


def test_http_judge_discrete_and_unparseable():
    def text_only(body):
        mine, _ = model_label(body)
        instruction = body["messages"][-1]["content"]
        if "Question 0" in instruction:
            return "Both answers are fine.", None
        return (mine if "Question 1" in instruction else ("B" if mine == "A" else "A")), None

    with FaultServer(responder=text_only) as server:
        annotations, summary = J.run_judge(pairs(3), http_judge(server, extra_body={}), FAST)
        assert all("logprobs" not in r["body"] for r in server.requests)
        assert len(server.requests) == 3  # an unparseable answer is not retried
    bad, win, loss = annotations
    assert (bad["status"], bad["preference"], bad["raw_completion"]) == (
        "unparseable", None, "Both answers are fine.")
    assert "Both answers" in bad["error"]
    assert (win["preference"], win["raw_completion"]) == (2.0, win["raw_completion"])
    assert win["raw_completion"] in ("A", "B") and loss["preference"] == 1.0
    assert summary["status"] == {"ok": 2, "unparseable": 1} and summary["n_failed"] == 1


def test_http_judge_missing_labels_is_a_failure():
    def off_topic(body):
        return "The", [{"token": "The", "logprob": -0.01}, {"token": "I", "logprob": -5.0}]

    with FaultServer(responder=off_topic) as server:
        annotations, _ = J.run_judge(pairs(1), http_judge(server), FAST)
    assert annotations[0]["status"] == "missing_labels" and annotations[0]["preference"] is None


def test_http_judge_retries_429_with_retry_after():
    with FaultServer(responder=judge_responder, retry_after="0.3") as server:
        annotations, _ = J.run_judge(pairs(2, "[[fault:rate_limit_once]]"), http_judge(server), FAST)
        assert len(server.requests) == 4
    for a in annotations:
        assert a["status"] == "ok" and a["attempts"] == 2
        assert a["preference"] == pytest.approx(1.75) and a["time_per_example"] >= 0.3


def test_http_judge_transport_failure_is_recorded():
    with FaultServer(responder=judge_responder) as server:
        annotations, summary = J.run_judge(pairs(1, "[[fault:server_error]]"), http_judge(server), FAST)
    a = annotations[0]
    assert (a["status"], a["preference"], a["attempts"]) == ("http_error", None, 3)
    assert "HTTP 500" in a["error"] and summary["n_failed"] == 1


def test_http_judge_auth_error_and_the_key_never_leaks(monkeypatch, caplog):
    secret = "sk-fake-judge-key-0123456789"
    monkeypatch.setenv("FAKE_JUDGE_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with FaultServer(responder=judge_responder, api_key=secret) as server:
        cfg = http_judge(server, api_key_env="FAKE_JUDGE_KEY")
        # A careless upstream that echoes the Authorization header in its error body.
        annotations, _ = J.run_judge(pairs(1, "[[fault:echo_key]]"), cfg, FAST)
        good, _ = J.run_judge(pairs(2), cfg, FAST)
        assert all(r["auth"] for r in server.requests)
    assert annotations[0]["status"] == "http_error" and "[REDACTED]" in annotations[0]["error"]
    assert all(a["preference"] == pytest.approx(1.75) for a in good)
    assert secret not in json.dumps([*annotations, *good])

    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-wrong-key-9876543210")
    with FaultServer(responder=judge_responder, api_key=secret) as server:
        with pytest.raises(AuthError, match="FAKE_JUDGE_KEY") as info:
            J.run_judge(pairs(6), http_judge(server, api_key_env="FAKE_JUDGE_KEY"), FAST)
    assert "sk-wrong-key" not in str(info.value) and secret not in str(info.value)
    assert secret not in caplog.text and "sk-wrong-key" not in caplog.text
    monkeypatch.delenv("FAKE_JUDGE_KEY")
    with pytest.raises(AuthError, match="FAKE_JUDGE_KEY is not set"):
        J.run_judge(pairs(1), http_judge(server, api_key_env="FAKE_JUDGE_KEY"), FAST)


def test_pairs_must_share_the_instruction():
    ref, mod = pairs(1)[0]
    with pytest.raises(ValueError, match="pair mismatch"):
        J.run_judge([(ref, {**mod, "instruction": "other"})], EvalConfig().judge, FAST)
    annotator = J.PairwiseJudge(JudgeEngine(EvalConfig().judge), FAST)
    with pytest.raises(ValueError, match="1 model outputs for 2 reference outputs"):
        J.annotate_pairs(annotator, [ref, ref], [mod])


def test_annotate_pairs_and_stable_summary():
    items = pairs(4)
    with FaultServer(responder=judge_responder) as server:
        annotator = J.PairwiseJudge(JudgeEngine(http_judge(server)), FAST)
        by_seed = {
            seed: J.annotate_pairs(annotator, [r for r, _ in items], [m for _, m in items], seed=seed)
            for seed in (1, 2)
        }
        annotator.engine.close()
    for seed, (records, summary) in by_seed.items():
        assert [a["model_on_first_side"] for a in records] == [
            J.model_on_first_side(r["instruction"], seed) for r, _ in items]
        stable = J.stable_summary(summary)
        assert "mean_latency_s" in summary and "elapsed_s" in summary
        assert "mean_latency_s" not in stable and "elapsed_s" not in stable
        assert stable["status"] == {"ok": 4} and stable["n_judge_calls"] == 4


# ------------------------------------------------------------------------------ local backend


@pytest.fixture(scope="module")
def local_judge():
    cfg = EvalConfig()
    return J.PairwiseJudge(JudgeEngine(cfg.judge), cfg.judge_decoding, seed=42)


@pytest.mark.slow
def test_local_judge_gemma_continuous_preferences(local_judge):
    items = pairs(10)
    annotations, summary = local_judge.annotate(items)
    assert summary["status"] == {"ok": 10} and summary["cost_usd"] == 0.0
    for a in annotations:
        assert 1.0 < a["preference"] < 2.0  # continuous, from the next-token distribution
        assert [e["token"] for e in a["raw_completion"]] == ["A", "B"]
        labels = ("A", "B") if a["model_on_first_side"] else ("B", "A")
        assert a["preference"] == pytest.approx(
            J.preference_from_logprobs(a["raw_completion"], *labels))
    sides = [a["model_on_first_side"] for a in annotations]
    assert 0 < sum(sides) < 10  # both orders occur
    again, _ = local_judge.annotate(items[:2])
    assert [a["preference"] for a in again] == [a["preference"] for a in annotations[:2]]

    # Swapping sides: the same item under two seeds that put the model on different sides.
    item = items[0]
    seed = next(s for s in range(1, 50)
                if J.model_on_first_side(item[0]["instruction"], s) != sides[0])
    swapped = J.PairwiseJudge(local_judge.engine, local_judge.decoding, seed=seed)  # shares the model
    other = one(swapped, *item)
    assert other["model_on_first_side"] != annotations[0]["model_on_first_side"]
    assert 1.0 < other["preference"] < 2.0
    # The label probabilities follow the positions: the model's label swapped with its side.
    first = {e["token"]: e["logprob"] for e in annotations[0]["raw_completion"]}
    second = {e["token"]: e["logprob"] for e in other["raw_completion"]}
    p_a = [math.exp(d["A"]) / (math.exp(d["A"]) + math.exp(d["B"])) for d in (first, second)]
    p_model = [a - 1.0 for a in (annotations[0]["preference"], other["preference"])]
    for p_first, model_first, p in zip(p_a, (sides[0], not sides[0]), p_model, strict=True):
        assert p == pytest.approx(p_first if model_first else 1.0 - p_first)


@pytest.mark.slow
def test_local_judge_identical_outputs_skip_the_model(local_judge, monkeypatch):
    calls = []
    real = local_judge.ask_local
    monkeypatch.setattr(local_judge, "ask_local", lambda *a: calls.append(a) or real(*a))
    ref, _ = pairs(1)[0]
    annotation = one(local_judge, ref, {**ref, "generator": "copy"})
    assert (annotation["preference"], annotation["status"], annotation["attempts"]) == (1.5, "identical", 0)
    assert calls == []


@pytest.mark.slow
def test_local_judge_trims_the_outputs_not_the_instruction(local_judge, monkeypatch):
    scorer = local_judge.engine.scorer
    monkeypatch.setattr(scorer, "max_input_tokens", 400)
    instruction = "Summarise the text below in one line. KEEP-THIS-INSTRUCTION"
    ref = {"instruction": instruction, "output": "alpha " * 600 + "OMEGA-END", "generator": "r"}
    mod = {"instruction": instruction, "output": "beta " * 900 + "MODEL-END", "generator": "m"}
    annotation = one(local_judge, ref, mod)
    assert annotation["status"] == "ok" and annotation["is_truncated"] is True
    assert 1.0 < annotation["preference"] < 2.0
    first, second = (mod, ref) if annotation["model_on_first_side"] else (ref, mod)
    ids, cut = local_judge.fit(scorer, instruction, first["output"], second["output"])
    text = scorer.tokenizer.decode(ids)
    assert cut and len(ids) <= 400
    assert "KEEP-THIS-INSTRUCTION" in text and "OMEGA-END" in text and "MODEL-END" in text
    assert "[...]" in text and text.rstrip().endswith("Assistant:")
    assert "Reply with the single letter A or B and nothing else." in text
    monkeypatch.setattr(scorer, "max_input_tokens", 60)
    # The budget is patched on the loaded scorer, not in the judge entry that keys the call
    # store: start from an empty store, or the first verdict would be reused.
    local_judge.engine.calls = EvalCalls(None)
    failed = one(local_judge, ref, mod)
    assert (failed["status"], failed["preference"]) == ("prompt_too_long", None)


# ------------------------------------------------------------------------------ transformers serve


@pytest.mark.slow
def test_judge_through_transformers_serve(serve):
    """`transformers serve` ignores `logprobs`/`top_logprobs` (it logs "Ignoring unsupported
    fields") and returns no log-probabilities, so its preferences are discrete."""
    base_url, folder = serve
    cfg = build(TeacherConfig, {
        "id": "smollm2-serve", "backend": "openai", "preset": "transformers-serve", "model": folder,
        "base_url": base_url, "max_concurrency": 1,
        "extra_body": {"logprobs": True, "top_logprobs": 5}}, "judge")
    decoding = dataclasses.replace(FAST, timeout_s=120.0, max_retries=0)
    annotations, summary = J.run_judge(pairs(2), cfg, decoding)
    for a in annotations:
        assert a["status"] in ("ok", "unparseable") and a["attempts"] == 1
        assert a["preference"] in (1.0, 2.0, None)
        assert isinstance(a["raw_completion"], str)  # the answer text: no logprobs came back
    assert summary["n_judge_calls"] == 2



def test_eval_calls_share_only_through_their_own_live_store(tmp_path, monkeypatch):
    # A sweep's workers: each has its own eval store; the eval shared store carries the records
    # between them, and the teachers' shared store is never read or written by eval.
    from sp2dpo.evaluate.calls import SHARED_ENV, EvalCalls

    teachers_shared = tmp_path / "teacher-shared"
    monkeypatch.setenv("SP2DPO_SHARED_CALLS", str(teachers_shared))
    monkeypatch.setenv(SHARED_ENV, str(tmp_path / "eval-shared"))
    with EvalCalls(tmp_path / "worker1") as first:
        first.put("k1", "judge", {"status": "ok", "text": "A"})
    second = EvalCalls(tmp_path / "worker2")
    assert second.get("k1")["text"] == "A" and second.counts()["reused"] == {"judge": 1}
    assert not teachers_shared.exists()
    monkeypatch.delenv(SHARED_ENV)
    assert EvalCalls(tmp_path / "worker3").get("k1") is None
