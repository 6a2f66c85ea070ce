"""The eval stage and ``--estimate`` know suites only through the protocol
(:mod:`sp2dpo.evaluate.suites`): a toy suite added to the registry runs in both, and the estimate
is the run's own request builder minus what the store holds (answers and judge calls, against
the fault-injection server as student server and judge)."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from sp2dpo.core import config
from sp2dpo.evaluate import estimate, stage, suites
from sp2dpo.evaluate.judges.engine import request_tokens as estimate_tokens
from sp2dpo.evaluate.judges.graded import LabelGrader, Question
from sp2dpo.evaluate.suites.base import write_jsonl
from tests.fault_server import FaultServer
from tests.test_evaluate_stage_stop import N_ANSWERS, responder

ROOT = Path(__file__).resolve().parents[1]

TOY_CAP = 12
TOY_JUDGE_TOKENS = 8


class ToySuite:
    """Three one-turn prompts; the judge says ``[[yes]]`` or ``[[no]]`` to each answer; the score
    is the share of yes."""

    name: ClassVar[str] = "toy_polite"
    PROMPTS: ClassVar[list[str]] = ["Say hi.", "Name a colour.", "Count to three."]

    def __init__(self, ecfg: config.EvalConfig, ctx: suites.Context) -> None:
        self.ctx = ctx
        self.grader = LabelGrader(
            ctx.engine, self.name, dataclasses.replace(ecfg.judge_decoding, max_tokens=TOY_JUDGE_TOKENS),
            ("yes", "no"), lambda text: {"[[yes]]": "yes", "[[no]]": "no"}.get(text.strip()), "toy-template/1",
        )

    @classmethod
    def from_config(cls, ecfg: config.EvalConfig, ctx: suites.Context) -> ToySuite:
        return cls(ecfg, ctx)

    @property
    def enabled(self) -> bool:
        return True

    def describe(self) -> str:
        return f"{len(self.PROMPTS)} toy prompts"

    def conversations(self) -> suites.Conversations:
        return suites.Conversations([[p] for p in self.PROMPTS], TOY_CAP)

    def write_answers(self, method: str, answers: Sequence[Sequence[str]]) -> None:
        write_jsonl([{"prompt": p, "answer": a[0]} for p, a in zip(self.PROMPTS, answers, strict=True)],
                    self.ctx.outputs(method) / "toy_answers.jsonl")

    def _requests(self, answers: suites.Answers) -> list[Question]:
        return [
            Question(messages=[{"role": "user", "content": f"TOY-JUDGE Is this polite? {a[0]}"}],
                     instruction=p, outputs=(a[0],))
            for per in answers.values() for p, a in zip(self.PROMPTS, per, strict=True)
        ]

    def judge_requests(self, answers: suites.Answers) -> list[suites.JudgeBatch]:
        return [suites.JudgeBatch(self.grader, self._requests(answers))]

    def evaluate(self, answers: suites.Answers, stop: threading.Event) -> suites.Scored | None:
        records = self.grader.grade_all(self._requests(answers), stop)
        if any(r is None for r in records):
            return None
        scored = suites.Scored({})
        for i, method in enumerate(answers):
            mine = records[i * len(self.PROMPTS) : (i + 1) * len(self.PROMPTS)]
            yes = sum(r is not None and r["label"] == "yes" for r in mine)
            scored.entries[method] = {self.name: {"yes_rate": 100.0 * yes / len(mine), "n": len(mine)}}
        return scored

    def report_fields(self, entries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        return {"n_toy_prompts": len(self.PROMPTS)}


def toy_responder(body: dict[str, Any]) -> tuple[str, Any]:
    """The toy judge says yes only to the answer about a colour; everything else as the stage's
    stop test answers it."""
    user = body["messages"][-1]["content"]
    if user.startswith("TOY-JUDGE"):
        return ("[[yes]]" if "colour" in user else "[[no]]"), None
    return responder(body)


def _params(tmp_path: Path, server: FaultServer, **eval_overrides: Any) -> config.Params:
    """The stage-stop test's HTTP-only eval section (student server + scripted judge)."""
    section: dict[str, Any] = {
        "methods": ["base"],
        "generation": {"max_new_tokens": 16, "max_input_tokens": 512},
        "server": {"base_url": server.base_url, "models": {"base": "served-student"},
                   "max_concurrency": 2, "timeout_s": 10, "max_retries": 1},
        "judge": {"id": "fake-judge", "backend": "openai", "preset": "generic", "model": "fake-gpt",
                  "base_url": server.base_url, "max_concurrency": 2,
                  "extra_body": {"logprobs": True, "top_logprobs": 5},
                  "price_in_per_m": 1.0, "price_out_per_m": 2.0},
        "judge_decoding": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 1, "timeout_s": 10,
                           "max_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
        "alpaca_eval": {"limit": 6},
        "mt_bench": {"limit": 3, "max_new_tokens": 16, "judge_max_tokens": 64},
        "ifeval": {"limit": 2, "max_new_tokens": 16},
        "arena_hard": {"limit": 3, "max_new_tokens": 16, "judge_max_tokens": 64, "bootstrap_rounds": 10},
        "prefeval": {"enabled": False},
    }
    for key, value in eval_overrides.items():
        section[key] = {**section[key], **value} if isinstance(value, dict) else value
    path = tmp_path / f"params-{len(list(tmp_path.glob('params-*')))}.yaml"
    path.write_text(yaml.safe_dump({"eval": section}))
    return config.load(path, sections=["eval", "train", "teachers", "matrix"])


def _paths(tmp_path: Path) -> stage.EvalPaths:
    return stage.EvalPaths(adapters=tmp_path / "models", outputs=tmp_path / "out",
                           report=tmp_path / "report.json", calls=tmp_path / "calls")


def _estimate(params: config.Params, paths: stage.EvalPaths) -> dict[str, Any]:
    return estimate.estimate(params.eval, params.train, "smollm2", ["base"], paths.adapters, paths.calls,
                             judge_prompts=paths.judge_prompts, arena_hard_prompts=paths.arena_hard_prompts)


def _run(params: config.Params, paths: stage.EvalPaths) -> dict[str, Any]:
    return stage.run(params.eval, params.train, params.teachers, "smollm2", [], paths, track=False)


def _toy_prompt_tokens(answers: Sequence[str]) -> int:
    return sum(estimate_tokens([{"role": "user", "content": f"TOY-JUDGE Is this polite? {a}"}]) for a in answers)


@pytest.mark.timeout(300)
def test_a_toy_suite_runs_in_the_stage_and_the_estimate_through_the_protocol_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(suites, "REGISTRY", [*suites.REGISTRY, ToySuite])
    paths = _paths(tmp_path)
    off = {"enabled": False}
    with FaultServer(responder=toy_responder) as server:
        params = _params(tmp_path, server, alpaca_eval=off, mt_bench=off, ifeval=off, arena_hard=off)

        # Empty store: three answers to generate, three judge calls priced with answers of the cap.
        before = _estimate(params, paths)
        assert not server.requests and not paths.calls.exists()
        assert before["answers_to_generate"] == 3
        assert list(before["suites"]) == ["toy_polite"]
        toy = before["suites"]["toy_polite"]
        assert toy["calls"] == 3 and toy["max_completion_tokens"] == 3 * TOY_JUDGE_TOKENS
        assert toy["prompt_tokens"] == _toy_prompt_tokens(["x" * (TOY_CAP * 4)] * 3)
        assert toy["max_cost_usd"] == pytest.approx((toy["prompt_tokens"] * 1.0 + 3 * TOY_JUDGE_TOKENS * 2.0) / 1e6)
        assert before["total"] == toy

        report = _run(params, paths)
        assert len(server.requests) == 3 + 3
        assert report["methods"]["base"] == {"toy_polite": {"yes_rate": pytest.approx(100 / 3), "n": 3}}
        assert report["suites"] == ["toy_polite"]
        assert report["n_toy_prompts"] == 3 and report["n_instructions"] == 0  # disabled suites report too
        assert json.loads(paths.report.read_text()) == json.loads(json.dumps(report))
        assert stage.flat_metrics(report["methods"]["base"]) == {
            "toy_polite/yes_rate": pytest.approx(100 / 3), "toy_polite/n": 3.0}
        written = [json.loads(line) for line in (paths.outputs / "base" / "toy_answers.jsonl").read_text().splitlines()]
        assert [w["prompt"] for w in written] == ToySuite.PROMPTS

        # Everything stored: nothing left; a re-run asks nothing.
        after = _estimate(params, paths)
        assert after["answers_to_generate"] == 0 and after["total"]["calls"] == 0
        assert _run(params, paths) == report and len(server.requests) == 6

        # Another judge model: the stored answers are read and the judge requests built from
        # them, as the run builds them (exact prompt tokens, not the cap's placeholder).
        other = _params(tmp_path, server, alpaca_eval=off, mt_bench=off, ifeval=off, arena_hard=off,
                        judge={"model": "fake-gpt-2"})
        moved = _estimate(other, paths)
        assert moved["answers_to_generate"] == 0
        assert moved["suites"]["toy_polite"]["calls"] == 3
        assert moved["suites"]["toy_polite"]["prompt_tokens"] == _toy_prompt_tokens([w["answer"] for w in written])
    assert len(server.requests) == 6


#: Judge calls per suite in the stage-stop test's setup (6 AlpacaEval, 3 x 2 turns, 3 x 2 games).
JUDGE_CALLS = {"alpaca_eval": 6, "mt_bench": 6, "arena_hard": 6}


@pytest.mark.timeout(300)
def test_the_estimate_counts_what_the_run_makes_for_the_four_suites(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    paths = _paths(tmp_path)
    with FaultServer(responder=responder) as server:
        params = _params(tmp_path, server)
        before = _estimate(params, paths)
        assert not server.requests
        assert before["answers_to_generate"] == N_ANSWERS
        assert {s: v["calls"] for s, v in before["suites"].items()} == JUDGE_CALLS
        assert before["suites"]["mt_bench"]["max_completion_tokens"] == 6 * 64
        assert before["total"]["calls"] == sum(JUDGE_CALLS.values())

        _run(params, paths)
        assert len(server.requests) == N_ANSWERS + sum(JUDGE_CALLS.values())
        after = _estimate(params, paths)
        assert after["answers_to_generate"] == 0 and after["total"]["calls"] == 0

        # A disabled suite is neither answered nor judged in the estimate (as in the run).
        no_ae = _estimate(_params(tmp_path, server, alpaca_eval={"enabled": False},
                                  judge={"model": "fake-gpt-2"}), paths)
        assert "alpaca_eval" not in no_ae["suites"]
        assert {s: v["calls"] for s, v in no_ae["suites"].items()} == {"mt_bench": 6, "arena_hard": 6}
        assert no_ae["answers_to_generate"] == 0
        # One answer fewer stored (a smaller MT-Bench cap is another answer): both turns of each
        # question are missing, turn 2 keyed on the placeholder of turn 1.
        capped = _estimate(_params(tmp_path, server, mt_bench={"max_new_tokens": 8}), paths)
        assert capped["answers_to_generate"] == 6
        assert capped["suites"]["mt_bench"]["calls"] == 6
        assert capped["suites"]["alpaca_eval"]["calls"] == 0
