"""MT-Bench and Arena-Hard in the eval stage (`sp2dpo.evaluate.suites`, `.judges.graded`): the official
files written, the scores equal the official computation on them, and every judge call is made
once. HTTP judges are the scripted fault server; the local judge is the real gemma-3-270m."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from sp2dpo.core.config import (
    ArenaHardConfig,
    DecodingConfig,
    EvalConfig,
    MTBenchConfig,
    TeacherConfig,
    build,
)
from sp2dpo.evaluate import suites
from sp2dpo.evaluate.benchmarks import arenahard, mtbench
from sp2dpo.evaluate.calls import EvalCalls
from sp2dpo.evaluate.judges.engine import JudgeEngine
from sp2dpo.evaluate.judges.graded import LabelGrader, Question
from sp2dpo.evaluate.suites.arena_hard import ArenaHardSuite
from sp2dpo.evaluate.suites.mt_bench import MTBenchSuite
from tests.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
FAST = DecodingConfig(temperature=0.0, top_p=1.0, max_tokens=16, timeout_s=5.0, max_retries=2,
                      backoff_base_s=0.01, backoff_max_s=0.05)


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def context(engine: JudgeEngine, out: Path, generator: Callable[[str], str] = lambda m: m) -> suites.Context:
    """A suite's context: the repository's judge prompts, outputs under ``out``."""
    return suites.Context(engine=engine, judge_prompts=ROOT / "prompts/judge",
                          arena_hard_prompts=ROOT / arenahard.DEFAULT_PROMPT_DIR,
                          generator=generator, outputs=lambda m: out / m)


def mt_bench_suite(cfg: MTBenchConfig, engine: JudgeEngine, out: Path, decoding: DecodingConfig = FAST,
                   **kw) -> MTBenchSuite:
    return MTBenchSuite(cfg, EvalConfig(mt_bench=cfg, judge_decoding=decoding), context(engine, out, **kw))


def arena_hard_suite(cfg: ArenaHardConfig, engine: JudgeEngine, out: Path, decoding: DecodingConfig = FAST,
                     **kw) -> ArenaHardSuite:
    return ArenaHardSuite(cfg, EvalConfig(arena_hard=cfg, judge_decoding=decoding), context(engine, out, **kw))


def sections(scored: suites.Scored | None, name: str) -> dict:
    assert scored is not None
    return {method: entry[name] for method, entry in scored.entries.items()}


def http_judge(server: FaultServer) -> TeacherConfig:
    return build(TeacherConfig, {"id": "fake-judge", "backend": "openai", "preset": "generic",
                                 "model": "fake-gpt", "base_url": server.base_url,
                                 "max_concurrency": 4, "price_in_per_m": 10.0,
                                 "price_out_per_m": 30.0}, "judge")


def rating_responder(body):
    """A judge that rates an answer by its length (a known, answer-dependent rating); an answer
    containing "NOPE" gets a reply without a rating."""
    user = body["messages"][-1]["content"]
    if "NOPE" in user:
        return "I cannot decide.", None
    found = re.findall(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]",
                       user, re.S)
    answer = found[-1] if found else user
    return f"Some evaluation text.\nRating: [[{1 + len(answer) % 10}]]", None


def mt_answers(questions, tag):
    return [(f"{tag} answer one to {q.question_id}", f"{tag} second {'x' * (q.question_id % 7)}")
            for q in questions]


def test_mt_bench_files_scores_and_no_repeated_calls(tmp_path):
    cfg = MTBenchConfig(limit=5, seed=7)
    questions = mt_bench_suite(cfg, JudgeEngine(EvalConfig().judge), tmp_path).questions
    assert len(questions) == 5 and [q.question_id for q in questions] == sorted(q.question_id for q in questions)
    answers = {"base": mt_answers(questions, "b"), "dpo": mt_answers(questions, "d")}
    answers["dpo"][0] = ("NOPE", "NOPE again")  # one question without a rating on both turns
    store = tmp_path / "calls"

    def run(server):
        with EvalCalls(store) as calls:
            suite = mt_bench_suite(cfg, JudgeEngine(http_judge(server), calls), tmp_path,
                                   generator=lambda m: f"s-{m}")
            result = sections(suite.evaluate(answers, threading.Event()), "mt_bench")
            return result, calls.counts()

    with FaultServer(responder=rating_responder) as server:
        result, counts = run(server)
        assert len(server.requests) == 2 * 2 * 5 == counts["made"]["judge"]
        # The request is FastChat's template: the math/reasoning/coding ones carry the reference.
        bodies = [r["body"]["messages"][-1]["content"] for r in server.requests]
        assert all("[The Start of Assistant's Answer]" in b or "<|The Start of Assistant A's Conversation" in b
                   for b in bodies)
        again, counts = run(server)
        assert len(server.requests) == 20 and counts["made"] == {} and counts["reused"]["judge"] == 20
    assert again == result
    rows = [json.loads(line) for line in (tmp_path / "dpo" / "mt_bench_judgments.jsonl").read_text().splitlines()]
    assert [(r["question_id"], r["turn"]) for r in rows] == [(q.question_id, t) for q in questions for t in (1, 2)]
    assert rows[0]["score"] == rows[1]["score"] == -1 and rows[0]["judge"][0] == "fake-gpt"
    # The scores are the official computation on the written file (sp2dpo mtbench re-scores it).
    official = mtbench.scores(mtbench.read_judgments(tmp_path / "dpo" / "mt_bench_judgments.jsonl"))["s-dpo"]
    assert result["dpo"]["score"] == pytest.approx(official["score"], abs=1e-12)
    assert result["dpo"]["n_failed"] == 2 and result["dpo"]["n"] == 10
    kept = [r["score"] for r in rows if r["score"] != -1]
    assert result["dpo"]["score"] == pytest.approx(sum(kept) / len(kept))
    t1 = [r["score"] for r in rows if r["turn"] == 1 and r["score"] != -1]
    assert result["dpo"]["turn1"] == pytest.approx(sum(t1) / len(t1))
    assert result["base"]["n_failed"] == 0


def verdict_responder(body):
    """Game 1 (baseline as A): the model wins slightly when its answer is longer; game 2 mirrors."""
    user = body["messages"][-1]["content"]
    a = re.search(r"<\|The Start of Assistant A's Answer\|>\n(.*?)\n<\|The End of Assistant A's Answer\|>", user, re.S)
    b = re.search(r"<\|The Start of Assistant B's Answer\|>\n(.*?)\n<\|The End of Assistant B's Answer\|>", user, re.S)
    assert a and b, user[:500]
    if "MODEL-TIE" in a.group(1) + b.group(1):
        return "Both are the same. My final verdict is tie: [[A=B]]", None
    if "MODEL-STRONG" in b.group(1):
        return "B is much better. [[B>>A]]", None
    if "MODEL-STRONG" in a.group(1):
        return "A is much better. [[A>>B]]", None
    return "Hard to say [[A>B]] or [[B>A]]", None  # two labels: no verdict


def test_arena_hard_games_battles_scores_and_no_repeated_calls(tmp_path):
    cfg = ArenaHardConfig(limit=4, seed=1, bootstrap_rounds=20)
    questions = arena_hard_suite(cfg, JudgeEngine(EvalConfig().judge), tmp_path).questions
    assert len(questions) == 4
    answers = {
        "strong": [["MODEL-STRONG"]] * 4,
        "mixed": [["MODEL-STRONG"], ["MODEL-TIE"], ["MODEL-TIE"], ["plain answer"]],
    }
    store = tmp_path / "calls"

    def run(server):
        with EvalCalls(store) as calls:
            suite = arena_hard_suite(cfg, JudgeEngine(http_judge(server), calls), tmp_path)
            return sections(suite.evaluate(answers, threading.Event()), "arena_hard")

    with FaultServer(responder=verdict_responder) as server:
        result = run(server)
        # 2 methods x 4 prompts x 2 games, less the 2 games of prompt 1 where both methods gave
        # the same answer: the same judge input is one call.
        assert len(server.requests) == 2 * 4 * 2 - 2 == len(server.counts)
        # Each prompt is played twice: the baseline's answer as A (game 1), then as B (game 2).
        baseline = arenahard.read_answers(cfg.baseline_answers)
        sides = []
        for request in server.requests:
            user = request["body"]["messages"][-1]["content"]
            [q] = [q for q in questions if f"<|User Prompt|>\n{q.prompt}" in user]
            a_part, b_part = user.split("<|The End of Assistant A's Answer|>")
            theirs = baseline[q.question_id].text[:200]
            assert (theirs in a_part) != (theirs in b_part)
            sides.append((q.question_id, theirs in a_part))
        for qid in {q for q, _ in sides}:  # as many games with the baseline as A as with it as B
            assert sides.count((qid, True)) == sides.count((qid, False)) >= 1
        assert run(server) == result
        assert len(server.requests) == 14  # the re-run made no call
    # By hand: "strong" wins every game strongly (weight 3): 24 battles, all model_b wins.
    assert result["strong"]["n_battles"] == 24 and result["strong"]["wins"] == 24
    assert result["strong"]["verdicts"] == {"A>>B": 4, "A>B": 0, "A=B": 0, "B>A": 0, "B>>A": 4}
    # "mixed": q1 strong (6 wins), q2-q3 ties (4), q4 no verdict in either game (dropped).
    mixed = result["mixed"]
    assert (mixed["wins"], mixed["ties"], mixed["losses"], mixed["n_failed"]) == (6, 4, 0, 2)
    # One model's score against the baseline is the closed form (W + T/2) / N when every battle
    # involves the baseline.
    assert mixed["score"] == pytest.approx(100 * (6 + 2) / 10, abs=1e-6)
    rows = [json.loads(line) for line in (tmp_path / "mixed" / "arena_hard_judgments.jsonl").read_text().splitlines()]
    assert [len(r["games"]) for r in rows] == [2, 2, 2, 2]
    assert rows[0]["games"][0]["score"] == "B>>A" and rows[0]["games"][1]["score"] == "A>>B"
    # sp2dpo arenahard re-scores the written judgments to the same numbers.
    judged = arenahard.read_judgments([tmp_path / m / "arena_hard_judgments.jsonl" for m in answers])
    again = arenahard.score_battles(arenahard.judgments_to_battles(judged), rounds=20, seed=cfg.bootstrap_seed)
    assert again["mixed"]["score"] == pytest.approx(mixed["score"]) and again["mixed"]["ci"] == mixed["ci"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_local_grader_chooses_the_most_probable_whole_label(tmp_path):
    """The local judge's choice among "1]]" ... "10]]" equals the argmax of each candidate's
    full log-probability computed independently (transformers, one pass per candidate), so a
    multi-token label such as "10]]" is told apart from "1]]"."""
    import torch

    from sp2dpo.llm.local import LocalScorer

    judge = build(TeacherConfig, {"id": "gemma", "backend": "local", "model": "local:gemma3-270m",
                                  "max_input_tokens": 512}, "judge")
    model = LocalScorer(judge.model, max_input_tokens=512)
    labels = tuple(str(k) for k in range(1, 11))
    with EvalCalls(tmp_path / "calls") as calls:
        grader = LabelGrader(JudgeEngine(judge, calls, scorer=model), "mt_bench", FAST, labels,
                             lambda t: None, "t")
        question = Question(messages=[{"role": "system", "content": "Rate answers from 1 to 10."},
                                      {"role": "user", "content": "Question: 2+2? Answer: 4. Rate it."}],
                            instruction="2+2?", outputs=("4",))
        record = grader.grade(question)
    prompt = model.render(question.messages) + "[["
    base = model.encode(prompt)
    scores = {}
    for label in labels:
        ids = model.encode(prompt + label + "]]")
        assert ids[: len(base)] == base
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
        scores[label] = sum(float(logits[j - 1, ids[j]]) for j in range(len(base), len(ids)))
    assert record["status"] == "ok" and record["label"] == max(scores, key=scores.get)
    for label in labels:
        assert record["logprobs"][label] == pytest.approx(scores[label], abs=1e-3)
    assert record["text"] == f"[[{record['label']}]]"
