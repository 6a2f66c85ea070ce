"""Judge calls are never paid twice: `sp2dpo judge` killed mid-run (SIGKILL), stopped (Ctrl-C),
estimated and re-run against the fault-injection server, whose request counts are the bill. Bad
input to `judge_run.run_judge_file` (a limit that is not positive, an output path that is an
input, a folder or under a file) is refused before any call, and an estimate writes nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sp2dpo.core.config import EvalConfig, build
from sp2dpo.core.errors import OutputPathError
from sp2dpo.evaluate import judge_run
from sp2dpo.evaluate.calls import EvalCalls
from sp2dpo.evaluate.judges import pairwise as J
from sp2dpo.evaluate.judges.engine import JudgeEngine, request_tokens
from tests.fault_server import FaultServer
from tests.test_evaluate_judge import judge_responder, pairs

N = 24
CONCURRENCY = 2


def _write_inputs(tmp_path: Path, server: FaultServer, n: int = N) -> dict[str, Path]:
    items = pairs(n)
    reference = tmp_path / "reference.json"
    outputs = tmp_path / "outputs.json"
    reference.write_text(json.dumps([ref for ref, _ in items]))
    outputs.write_text(json.dumps([mod for _, mod in items]))
    params = {
        "eval": {
            "judge": {"id": "fake-judge", "backend": "openai", "preset": "generic",
                      "model": "fake-gpt", "base_url": server.base_url,
                      "max_concurrency": CONCURRENCY, "price_in_per_m": 10.0,
                      "price_out_per_m": 30.0, "extra_body": {"logprobs": True, "top_logprobs": 5}},
            "judge_decoding": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 1, "timeout_s": 5.0,
                               "max_retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
            "alpaca_eval": {"reference_outputs": str(reference)},
        }
    }
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    return {"params": params_path, "reference": reference, "outputs": outputs,
            "out": tmp_path / "annotations.json", "calls": tmp_path / "calls"}


def _cmd(paths: dict[str, Path], *extra: str) -> list[str]:
    return [sys.executable, "-m", "sp2dpo.cli", "judge", "--params", str(paths["params"]),
            "--outputs", str(paths["outputs"]), "--reference", str(paths["reference"]),
            "--out", str(paths["out"]), "--calls", str(paths["calls"]), *extra]


def _run(paths: dict[str, Path], *extra: str) -> dict:
    done = subprocess.run(_cmd(paths, *extra), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _stored(calls: Path) -> int:
    if not calls.exists():
        return 0
    return sum(s.read_bytes().count(b"\n") for s in calls.glob("*.jsonl"))


@pytest.fixture
def started():
    """The `sp2dpo judge` processes a test starts; any still running at teardown is killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)


def _start_and_wait(paths: dict[str, Path], n: int, started: list) -> subprocess.Popen:
    proc = subprocess.Popen(_cmd(paths), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started.append(proc)
    deadline = time.monotonic() + 60
    while _stored(paths["calls"]) < n:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate(timeout=30)
            pytest.fail(f"fewer than {n} judge calls stored before the run ended:\n{err[-3000:]}")
        time.sleep(0.01)
    return proc


@pytest.mark.timeout(180)
def test_sigkill_mid_run_then_resume_pays_each_call_once(tmp_path, started):
    with FaultServer(latency_s=0.15, responder=judge_responder) as server:
        paths = _write_inputs(tmp_path, server)
        proc = _start_and_wait(paths, 6, started)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert not paths["out"].exists(), "killed before the end: no annotations yet"
        done = EvalCalls(paths["calls"]).records
        assert 6 <= len(done) < N
        sent_before = len(server.requests)

        # The estimate counts exactly what is missing and sends nothing.
        estimate = _run(paths, "--estimate")
        assert len(server.requests) == sent_before
        assert estimate["items"] == N and estimate["cached"] == len(done)
        assert estimate["calls"] == N - len(done)
        assert estimate["max_completion_tokens"] == N - len(done)  # max_tokens 1
        assert estimate["max_cost_usd"] > 0

        resumed = _run(paths)
        assert resumed["calls_reused"] == len(done)
        assert resumed["calls_made"] == N - len(done)
        assert resumed["n_judged"] == N
        # Every stored call was requested once; only the calls in flight at the kill (at most
        # max_concurrency, answered but never stored) were requested again.
        stored_calls = {r["call"] for r in server.requests[:sent_before]}
        assert len(server.counts) == N
        repeated = [c for c, k in server.counts.items() if k > 1]
        assert len(repeated) <= CONCURRENCY
        assert len(server.requests) == N + sum(server.counts[c] - 1 for c in repeated)
        assert len(stored_calls) == sent_before
        first = paths["out"].read_bytes()

        # A second re-run sends nothing and writes the same annotations.
        sent = len(server.requests)
        again = _run(paths)
        assert len(server.requests) == sent
        assert again["calls_made"] == 0 and again["calls_reused"] == N
        assert paths["out"].read_bytes() == first
    annotations = json.loads(first)
    assert len(annotations) == N
    assert all(a["preference"] == pytest.approx(1.75) for a in annotations)
    # One record per call in the store, no torn line.
    keys = [json.loads(line)["key"] for s in sorted(paths["calls"].glob("*.jsonl"))
            for line in s.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == N


@pytest.mark.timeout(180)
def test_ctrl_c_stores_calls_in_flight_and_the_rerun_repeats_nothing(tmp_path, started):
    with FaultServer(latency_s=0.4, responder=judge_responder) as server:
        paths = _write_inputs(tmp_path, server)
        proc = _start_and_wait(paths, 3, started)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("sp2dpo: error:")]
        assert len(lines) == 1 and "stopped by SIGINT" in lines[0], err[-3000:]
        stored = EvalCalls(paths["calls"]).records
        assert len(server.requests) == len(stored) < N  # every answered request is stored
        resumed = _run(paths)
        assert resumed["calls_made"] == N - len(stored)
    assert max(server.counts.values()) == 1 and len(server.counts) == N


# ------------------------------------------------------------------------------ bad input


def _config(paths: dict[str, Path]) -> EvalConfig:
    return build(EvalConfig, yaml.safe_load(paths["params"].read_text())["eval"], "eval")


def _judge(paths: dict[str, Path], **kwargs) -> dict:
    kwargs = {"out": paths["out"], "calls_path": paths["calls"], **kwargs}
    return judge_run.run_judge_file(_config(paths), paths["outputs"],
                                    reference_path=paths["reference"], **kwargs)


@pytest.mark.timeout(120)
def test_limit_must_be_a_positive_number_of_outputs(tmp_path):
    with FaultServer(responder=judge_responder) as server:
        paths = _write_inputs(tmp_path, server, 5)
        for limit in (-2, 0):
            with pytest.raises(ValueError) as refused:
                _judge(paths, limit=limit)
            assert str(refused.value) == f"limit must be a positive number of outputs, got {limit}"
        assert not server.requests and not paths["out"].exists() and not paths["calls"].exists()
        done = _judge(paths, limit=2)  # the first two outputs of the file
    assert done["n"] == done["n_judged"] == done["calls_made"] == 2 == len(server.counts)
    judged = {a["instruction"] for a in json.loads(paths["out"].read_text())}
    assert judged == {mod["instruction"] for _, mod in pairs(2)}


@pytest.mark.timeout(120)
def test_estimate_creates_nothing_on_disk_and_counts_what_is_missing(tmp_path):
    with FaultServer(responder=judge_responder) as server:
        paths = _write_inputs(tmp_path, server, 5)
        ecfg = _config(paths)
        before = sorted(tmp_path.rglob("*"))
        estimate = _judge(paths, estimate=True)
        assert sorted(tmp_path.rglob("*")) == before and not paths["calls"].exists()
        assert not server.requests
        seed = ecfg.alpaca_eval.seed
        prompt = J.PairwiseJudge(JudgeEngine(ecfg.judge), ecfg.judge_decoding, seed=seed).prompt
        tokens = 0
        for ref, mod in pairs(5):
            sides = (mod["output"], ref["output"])
            first, second = sides if J.model_on_first_side(ref["instruction"], seed) else sides[::-1]
            tokens += request_tokens(prompt.messages(ref["instruction"], first, second))
        assert estimate == {
            "judge": "fake-judge", "items": 5, "cached": 0, "calls": 5, "prompt_tokens": tokens,
            "max_completion_tokens": 5, "max_cost_usd": pytest.approx((tokens * 10 + 5 * 30) / 1e6),
        }

        # With a store: the cached calls are counted, and the store is read, not written.
        _judge(paths, limit=2)
        stored = {p: p.read_bytes() for p in paths["calls"].rglob("*")}
        sent = len(server.requests)
        again = _judge(paths, estimate=True)
        assert {p: p.read_bytes() for p in paths["calls"].rglob("*")} == stored
        assert len(server.requests) == sent
    assert (again["items"], again["cached"], again["calls"]) == (5, 2, 3)
    assert again["max_completion_tokens"] == 3 and 0 < again["prompt_tokens"] < tokens


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["outputs", "reference", "calls"])
def test_out_that_is_an_input_is_refused_before_anything_runs(tmp_path, which):
    with FaultServer(responder=judge_responder) as server:
        paths = _write_inputs(tmp_path, server, 3)
        if which == "calls":  # a one-file call store
            paths["calls"] = tmp_path / "calls.jsonl"
            with EvalCalls(paths["calls"]) as calls:
                calls.put("k", "judge", {"status": "ok"})
        target = paths[which]
        original = target.read_bytes()
        spelled = tmp_path / ".." / tmp_path.name / target.name  # the same file, spelled otherwise
        for estimate in (False, True):
            with pytest.raises(OutputPathError) as refused:
                _judge(paths, out=spelled, estimate=estimate)
            assert str(refused.value) == f"--out {spelled}: is the input {target}; write elsewhere"
        assert not server.requests
    assert target.read_bytes() == original
    assert which == "calls" or not paths["calls"].exists()


@pytest.mark.timeout(120)
def test_out_that_is_a_folder_or_under_a_file_is_refused_before_anything_runs(tmp_path):
    with FaultServer(responder=judge_responder) as server:
        paths = _write_inputs(tmp_path, server, 3)
        folder = tmp_path / "annotations"
        folder.mkdir()
        under = paths["outputs"] / "annotations.json"
        for out, reason in ((folder, "is a folder; give a file path"),
                            (under, f"cannot be created, {paths['outputs']} is a file")):
            with pytest.raises(OutputPathError, match=f"^--out {re.escape(str(out))}: {re.escape(reason)}$"):
                _judge(paths, out=out)
        assert not server.requests and not paths["calls"].exists()
    assert not any(folder.iterdir())
