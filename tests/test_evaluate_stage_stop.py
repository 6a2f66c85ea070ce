"""The whole eval stage against HTTP endpoints only (answers from a "server", every judge call to
a scripted judge, both the fault-injection server): the four suites run, Ctrl-C mid-run stops
cleanly with everything finished on disk, and the re-run pays for nothing twice."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sp2dpo.evaluate.calls import EvalCalls
from tests.fault_server import FaultServer

ROOT = Path(__file__).resolve().parents[1]
STUDENT_MODEL = "served-student"


def responder(body):
    """Student answers for the student's model; for the judge: AlpacaEval's label with log-probs
    (the model's answer is the one starting "Answer"), MT-Bench "[[6]]", Arena-Hard "[[B>A]]"."""
    messages = body["messages"]
    if body["model"] == STUDENT_MODEL:
        turns = sum(m["role"] == "user" for m in messages)
        return f"Answer {turns} to: {messages[-1]['content'][:40]}", None
    system, user = messages[0]["content"], messages[-1]["content"]
    if "[[rating]]" in system or "[[rating]]" in user:
        return "Fine.\nRating: [[6]]", None
    if "<|User Prompt|>" in user:
        return "My final verdict: [[B>A]]", None
    found = re.search(r"<answer_([AB])>\nAnswer", user)
    mine = found.group(1) if found else "A"
    other = "B" if mine == "A" else "A"
    return mine, [{"token": mine, "logprob": math.log(0.7)}, {"token": other, "logprob": math.log(0.3)}]


def _setup(tmp_path: Path, server: FaultServer) -> list[str]:
    params = {
        "eval": {
            "methods": ["base"],
            "generation": {"max_new_tokens": 16, "max_input_tokens": 512},
            "server": {"base_url": server.base_url, "models": {"base": STUDENT_MODEL},
                       "max_concurrency": 2, "timeout_s": 10, "max_retries": 1},
            "judge": {"id": "fake-judge", "backend": "openai", "preset": "generic",
                      "model": "fake-gpt", "base_url": server.base_url, "max_concurrency": 2,
                      "extra_body": {"logprobs": True, "top_logprobs": 5}},
            "judge_decoding": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 1, "timeout_s": 10,
                               "max_retries": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
            "alpaca_eval": {"limit": 6},
            "mt_bench": {"limit": 3, "max_new_tokens": 16, "judge_max_tokens": 64},
            "ifeval": {"limit": 2, "max_new_tokens": 16},
            "arena_hard": {"limit": 3, "max_new_tokens": 16, "judge_max_tokens": 64,
                           "bootstrap_rounds": 10},
            "prefeval": {"enabled": False},  # it needs the model's weights; tested elsewhere
        }
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return [sys.executable, "-m", "sp2dpo.cli", "eval", "smollm2", "--params", str(path),
            "--out", str(tmp_path / "out"), "--no-track"]


#: Answers: AlpacaEval 6 + MT-Bench 3 x 2 turns + IFEval 2 + Arena-Hard 3; judge calls: 6 + 6 + 6.
N_ANSWERS, N_JUDGE = 6 + 6 + 2 + 3, 6 + 6 + 6


def _records(tmp_path: Path) -> dict:
    return EvalCalls(tmp_path / "out" / "calls").records


@pytest.mark.timeout(300)
def test_eval_stage_stops_on_ctrl_c_and_the_rerun_repeats_nothing(tmp_path):
    with FaultServer(latency_s=0.3, responder=responder) as server:
        cmd = _setup(tmp_path, server)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while sum(r["kind"] == "judge" for r in _records(tmp_path).values()) < 3:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=30)
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=30)
        assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("sp2dpo: error:")]
        assert len(lines) == 1 and "eval smollm2 stopped by SIGINT" in lines[0], err[-3000:]
        stored = _records(tmp_path)
        # Every request answered before the stop is on disk (the ones in flight included).
        assert len(server.requests) == len(stored) < N_ANSWERS + N_JUDGE
        assert sum(r["kind"] == "answer" for r in stored.values()) == N_ANSWERS

        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        assert max(server.counts.values()) == 1  # nothing was requested twice
        assert len(server.requests) == len(_records(tmp_path)) == N_ANSWERS + N_JUDGE
        again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert again.returncode == 0 and len(server.requests) == N_ANSWERS + N_JUDGE
    result = json.loads(done.stdout)["base"]
    assert set(result) == {"alpaca_eval", "mt_bench", "ifeval", "arena_hard", "prefeval"}
    assert result["prefeval"] is None  # disabled here
    assert result["alpaca_eval"]["win_rate"] == pytest.approx(70.0)
    assert result["mt_bench"]["score"] == 6 and result["mt_bench"]["n_failed"] == 0
    # "B>A" in both games: game 1 (model as B) a win, game 2 (model as A) a loss.
    assert result["arena_hard"]["wins"] == result["arena_hard"]["losses"] == 3
    assert result["arena_hard"]["score"] == pytest.approx(50.0)
    assert json.loads(again.stdout) == json.loads(done.stdout)
