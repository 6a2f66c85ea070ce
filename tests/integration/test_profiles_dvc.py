"""The paper's GPU run is one `dvc exp run` command: DVC composes the profile into params.yaml, and
`dvc params diff` and the resolved stage commands show every GPU setting (the run itself needs
GPUs, the Hub and API keys, so here it is queued and its commands dry-run, never executed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_project, run

DVC = str(Path(sys.executable).parent / "dvc")


@pytest.mark.slow
def test_paper_gpu_profile_through_dvc_exp_run(tmp_path):
    repo = copy_project(tmp_path / "repo")
    run([DVC, "pull", "-q", "data.dvc"], cwd=repo)
    params_before = (repo / "params.yaml").read_bytes()

    # The one command, queued: DVC composes params.yaml with the profile into the experiment.
    queued = run([DVC, "exp", "run", "--queue", "-S", "+profiles=paper-gpu"], cwd=repo).stdout
    assert "Queued experiment" in queued
    assert (repo / "params.yaml").read_bytes() == params_before  # the workspace is untouched
    show = json.loads(run([DVC, "exp", "show", "--json"], cwd=repo).stdout)
    rev = next(e for e in show if e.get("experiments"))["experiments"][0]["revs"][0]["rev"]
    diff = json.loads(run([DVC, "params", "diff", "HEAD", rev, "--json"], cwd=repo).stdout)["params.yaml"]
    new = {key: change["new"] for key, change in diff.items()}
    assert new["train.launcher"] == "accelerate launch --config_file configs/accelerate/ddp-4gpu.yaml"
    # (DVC prints list values in their Python form)
    assert new["matrix.students"] == str(["qwen3_4b", "gemma3_4b", "mistral7b", "llama31_8b"])
    assert new["matrix.methods"] == str(["dpo_b01", "dpo_b03", "dpo_b05", "sp2dpo", "rand_beta"])
    assert new["train.precision"] == "bf16" and new["train.max_length"] == 2048
    assert new["data.source"] == "hub" and new["eval.judge.model"] == "gpt-4-1106-preview"
    assert all(f"'id': '{t}'" in new["teachers"] for t in ("qwen", "openai", "gemini"))
    assert new["eval.allow_teacher_judge"] is False

    # The stages that experiment runs, with their commands: 4 students x 5 methods on accelerate.
    composed = run(["git", "show", f"{rev}:params.yaml"], cwd=repo).stdout
    (repo / "params.yaml").write_text(composed)
    listing = "from dvc.repo import Repo\nfor s in Repo('.').index.stages:\n    print(s.addressing, '|', s.cmd)\n"
    stages = dict(line.split(" | ", 1) for line in run([sys.executable, "-c", listing], cwd=repo).stdout.splitlines())
    train = {name: cmd for name, cmd in stages.items() if name.startswith("train@")}
    assert len(train) == 20
    assert all(cmd.startswith("accelerate launch --config_file configs/accelerate/ddp-4gpu.yaml stages/train.py ")
               for cmd in train.values())
    assert train["train@llama31_8b-sp2dpo"].endswith("stages/train.py llama31_8b sp2dpo")
    assert {n for n in stages if n.startswith("eval@")} == {
        "eval@qwen3_4b", "eval@gemma3_4b", "eval@mistral7b", "eval@llama31_8b"}
    run([DVC, "queue", "remove", "--all"], cwd=repo)
