"""`sp2dpo rehearse`: the paper's configuration end to end at 1/500 of its size, twice in one
scratch folder (the second sends no request), nothing written into the workspace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sp2dpo.rehearse import run as rehearse_run
from tests.conftest import ROOT, run

PAPER_STUDENTS = ("qwen3_4b", "gemma3_4b", "mistral7b", "llama31_8b")
PAPER_METHODS = ("dpo_b01", "dpo_b03", "dpo_b05", "sp2dpo", "rand_beta")
#: 1/500 of the paper's sizes (1/100 until the suite had to fit 25 minutes on 2 cores: the
#: benchmark, `make bench`, still rehearses at 1/100). What this test proves does not depend on
#: the size: all 29 stages run; the filter still keeps over a hundred pairs, so annotate still sends
#: about a thousand requests at the configured concurrency into the servers' faults; every eval
#: suite still answers and judges at least one item per model (its limit is max(1, size x
#: scale)); the second rehearsal must still send no request. What shrinks is only the part of
#: annotate and eval that grows with the sizes (run three times per eval stage: the first run,
#: the forced re-run of each rehearsal), about a third of the test's time at 1/100.
SCALE = 0.002
#: Pairs each training run sees: eight is every student's two optimizer steps (one pair per
#: device batch, gradient accumulation 2 to 4) without a second epoch; the default 16 only
#: doubles the reference log-prob pass of each of the 20 runs.
TRAIN_PAIRS = 8
#: Sequences of at most 256 tokens (prompt 128) instead of the paper's 2048 (1536): training the
#: twenty tiny students (vocabularies of up to 262k tokens) is most of the rehearsal's time, and
#: how long their sequences are proves nothing here; the same overrides on both rehearsals.
SHORT = ("-S", "train.max_length=256", "-S", "train.max_prompt_length=128")


def _workspace_state() -> str:
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    mlflow = ROOT / "mlflow.db"
    return status + (str(mlflow.stat().st_mtime_ns) if mlflow.exists() else "")


def _rehearse(workdir: Path, *extra: str) -> dict:
    done = run([sys.executable, "-m", "sp2dpo.cli", "rehearse", "--scale", str(SCALE), "--train-pairs",
                str(TRAIN_PAIRS), *SHORT, "--workdir", str(workdir), "--json", *extra], cwd=ROOT,
               timeout=1500)
    return json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.timeout(3200)
def test_rehearsal_at_one_five_hundredth_then_again_without_a_request(tmp_path: Path) -> None:
    before = _workspace_state()
    first = _rehearse(tmp_path / "w")

    stages = first["stages"]
    expected = {"fetch", "filter", "annotate", "aggregate", "report"}
    expected |= {f"train@{s}-{m}" for s in PAPER_STUDENTS for m in PAPER_METHODS}
    expected |= {f"eval@{s}" for s in PAPER_STUDENTS}
    assert set(stages) == expected
    for name, s in stages.items():
        assert s["wall_s"] > 0 and s["peak_rss_mib"] > 50, (name, s)
        assert s["disk_mib"] > 0 and s["files"] > 0, (name, s)

    # Sizes: 1/500 of UltraFeedback's 61,135 rows, through the paper's filter; every filtered pair
    # asked of 3 teachers x 3 variants (retries after the servers' faults come on top).
    repo = tmp_path / "w" / "repo"
    fetched = json.loads((repo / "reports" / "fetch.json").read_text())
    assert fetched["rows"] == rehearse_run.scaled(61_135, SCALE) == 122
    annotated = json.loads((repo / "reports" / "annotate.json").read_text())
    calls = annotated["calls"]
    teacher_requests = {k: v for k, v in first["servers"].items() if k.startswith("teacher-")}
    assert set(teacher_requests) == {"teacher-qwen", "teacher-openai", "teacher-gemini"}
    assert sum(teacher_requests.values()) >= calls >= 9 * 100
    assert stages["annotate"]["requests"] == {**teacher_requests, "judge": 0, "student": 0}
    # Answers and judgments only in the eval stages, at every suite's scaled size, for the base
    # model and each of the five methods (distinct adapters: two steps, the first at lr 0), every
    # student: 2 AlpacaEval + 1 MT-Bench x 2 turns + 1 IFEval + 1 Arena-Hard answers per model
    # (retries after the servers' faults on top); the judge grades all but IFEval (Arena-Hard twice,
    # both orders).
    size = {s: rehearse_run.scaled(full, SCALE) for s, full in rehearse_run.FULL_SIZES.items()}
    per_model = size["alpaca_eval"] + 2 * size["mt_bench"] + size["ifeval"] + size["arena_hard"]
    assert per_model == 2 + 2 + 1 + 1
    assert first["servers"]["student"] >= 4 * 6 * per_model
    assert first["servers"]["judge"] >= 4 * 6 * (size["alpaca_eval"] + 2 * size["mt_bench"] + 2 * size["arena_hard"])
    assert sum(s["requests"]["student"] for n, s in stages.items() if n.startswith("eval@")) == \
        first["servers"]["student"]
    params = (repo / "params.yaml").read_text()
    for suite, full in rehearse_run.FULL_SIZES.items():
        if suite != "pairs":
            assert f"limit: {rehearse_run.scaled(full, SCALE)}" in params, suite

    # Forced re-runs with every call stored make no request.
    assert set(first["rerun"]) == {"annotate"} | {f"eval@{s}" for s in PAPER_STUDENTS}
    assert all(r["requests"] == 0 for r in first["rerun"].values())
    assert first["annotate"]["calls_per_s"] > 0 and first["annotate"]["bound_calls_per_s"] > 0
    assert set(first["dvc"]) == {"status", "push", "pull"}
    assert first["disk"]["teacher_calls"]["files"] >= 1 and first["disk"]["remote"]["mib"] > 0

    # The second rehearsal in the same folder: every stage up to date, no request at all. (Its
    # forced re-runs would repeat what the first one's showed above: skipped.)
    second = _rehearse(tmp_path / "w", "--no-reruns")
    assert set(second["stages"]) == expected and second["rerun"] == {}
    assert second["servers"] == {k: 0 for k in first["servers"]}, second["servers"]

    assert _workspace_state() == before  # nothing landed in the workspace or its MLflow


# ------------------------------------------------------------------------------ the replacements


def _paper_config(tmp_path: Path) -> dict:
    return rehearse_run.prepare(rehearse_run.Options(project=ROOT), tmp_path)[1]


def test_the_paper_configuration_with_every_paid_part_replaced(tmp_path: Path) -> None:
    cfg = _paper_config(tmp_path)
    urls = {f"teacher-{t['id']}": f"http://127.0.0.1:{9000 + i}/v1" for i, t in enumerate(cfg["teachers"])}
    urls.update(student="http://127.0.0.1:9100/v1", judge="http://127.0.0.1:9200/v1")
    dirs = {name: f"rehearse-inputs/students/{name}" for name in PAPER_STUDENTS}
    out = rehearse_run.rehearsal_params(cfg, 0.1, urls, dirs, max_steps=1, train_pairs=16)

    assert out["data"]["source"] == "local" and out["data"]["path"] == rehearse_run.SNAPSHOT
    assert [t["base_url"] for t in out["teachers"]] == [urls[f"teacher-{t['id']}"] for t in cfg["teachers"]]
    assert all(t["rpm"] is None and t["tpm"] is None for t in out["teachers"])
    # what the teachers are asked is the configuration's: presets, models, concurrency, keys' names
    for mine, theirs in zip(out["teachers"], cfg["teachers"], strict=True):
        for key in ("preset", "model", "max_concurrency", "api_key_env", "structured_output"):
            assert mine.get(key) == theirs.get(key), key
    assert out["decoding"]["timeout_s"] < 6.0  # below the servers' hang, so a hang is a timeout
    assert [s["model"] for s in out["train"]["students"]] == [dirs[n] for n in PAPER_STUDENTS]
    assert out["train"]["optim"] == "adamw_torch" and out["train"]["precision"] == "fp32"
    assert out["train"]["launcher"] == "python" and out["train"]["limit"] == 16
    assert out["train"]["lora"] == cfg["train"]["lora"]
    assert out["train"]["max_length"] == cfg["train"]["max_length"] == 2048
    assert out["eval"]["server"]["base_url"] == urls["student"]
    assert out["eval"]["judge"]["base_url"] == urls["judge"] and out["eval"]["judge"]["model"] == "gpt-4-1106-preview"
    assert {s: out["eval"][s]["limit"] for s in ("alpaca_eval", "mt_bench", "ifeval", "arena_hard", "prefeval")} == \
        {"alpaca_eval": 80, "mt_bench": 8, "ifeval": 54, "arena_hard": 50, "prefeval": 50}
    assert cfg["teachers"][0].get("base_url") != urls["teacher-qwen"]  # the input is not changed


def test_any_student_gets_the_tiny_model_of_its_architecture() -> None:
    assert rehearse_run.tiny_student_of("whatever", "gemma3_4b") == "gemma3_4b"
    assert rehearse_run.tiny_student_of("Qwen/Qwen2.5-7B-Instruct", "mine") == "qwen3_4b"
    assert rehearse_run.tiny_student_of("google/gemma-2-9b-it", "mine") == "gemma3_4b"
    assert rehearse_run.tiny_student_of("mistralai/Mixtral-8x7B", "mine") == "mistral7b"
    assert rehearse_run.tiny_student_of("local:smollm2-135m-instruct", "smollm2") == "llama31_8b"


def test_the_stages_environment_never_holds_a_real_key_or_the_users_stores(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    monkeypatch.setenv("SP2DPO_SHARED_CALLS", "/shared/calls")
    cfg = _paper_config(tmp_path)
    env = rehearse_run.stage_env(cfg, tmp_path)
    for name in ("QWEN_API_KEY", "OPENAI_API_KEY", "GEMINI_API_KEY"):
        assert env[name] == rehearse_run.DUMMY_KEY
    assert "sk-real-secret" not in env.values()
    assert "MLFLOW_TRACKING_URI" not in env and "SP2DPO_SHARED_CALLS" not in env
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_server_ports_are_kept_for_the_next_rehearsal(tmp_path: Path) -> None:
    first = rehearse_run.server_ports(tmp_path, ["a", "b"])
    assert first == rehearse_run.server_ports(tmp_path, ["a", "b"])
    assert len(set(first.values())) == 2
    assert rehearse_run.server_ports(tmp_path, ["a", "c"])["a"] == first["a"]


def test_bad_flags_and_configurations_are_refused_in_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for args, message in (
        (["--scale", "0"], "argument --scale: must be a number in (0, 1], got 0"),
        (["--scale", "nan"], "argument --scale: must be a number in (0, 1], got nan"),
        (["--workdir", str(afile)], f"--workdir {afile}: is a file, not a folder"),
        (["--params", str(tmp_path / "none.yaml"), "--workdir", str(tmp_path / "w")], "none.yaml: no such file"),
        (["-S", "nosuchkey.x=1", "--workdir", str(tmp_path / "w2")], "cannot compose the configuration"),
    ):
        done = run([sys.executable, "-m", "sp2dpo.cli", "rehearse", *args], cwd=ROOT, check=False, timeout=120)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
