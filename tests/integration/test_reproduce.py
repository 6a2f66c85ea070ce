"""A fresh clone reproduces the committed state: `dvc pull` restores every committed output
without running anything, and the README's run command re-runs the pipeline to the committed
dvc.lock byte for byte (`git status` stays clean) on any x86-64 CPU with AVX2: the run is pinned
to torch's AVX2 kernels (sp2dpo.numerics), whatever CPU made the lock."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, copy_project, run

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")


def _readme_run_command() -> str:
    """The README's quick-start run command (the one that sets up and runs the main job)."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^(make run)\s+#", readme, re.MULTILINE)
    assert match, "README.md no longer shows `make run` in its quick start"
    return match.group(1)


def test_dvc_pull_restores_the_committed_outputs_and_nothing_reruns(tmp_path):
    repo = copy_project(tmp_path / "clone")
    run([DVC, "pull", "-q"], cwd=repo, timeout=300)
    assert json.loads(run([DVC, "status", "--json"], cwd=repo, timeout=300).stdout) == {}
    repro = run([DVC, "repro"], cwd=repo, timeout=300).stdout
    assert "Running stage" not in repro, repro
    assert run(["git", "status", "--porcelain"], cwd=repo).stdout == ""
    # what was restored is what the lock records (the committed beta artifact, every adapter)
    assert (repo / "data/beta/beta.csv").is_file()
    assert sorted(p.name for p in (repo / "models/smollm2").iterdir()) == ["dpo", "rand_beta", "sp2dpo"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_run_command_on_a_fresh_clone_reproduces_the_committed_lock(tmp_path):
    repo = copy_project(tmp_path / "clone")
    assert not (repo / "data/beta/beta.csv").exists() and not (repo / "models").exists()
    # The README command with the environment this suite runs in (its setup step is done).
    venv = Path(sys.prefix)
    command = _readme_run_command().split()
    run([*command, f"VENV={venv}", "-o", f"{venv}/.installed"], cwd=repo, timeout=1700)
    status = run(["git", "status", "--porcelain"], cwd=repo).stdout
    assert status == "", f"the run changed committed files:\n{status}\n" + run(
        ["git", "diff", "--stat"], cwd=repo).stdout
    assert json.loads(run([DVC, "status", "--json"], cwd=repo, timeout=300).stdout) == {}
    # Wall-clock measurements went to the run logs (ignored), not into any DVC output.
    logs = sorted((repo / "logs").rglob("*.json"))
    assert {p.relative_to(repo / "logs").parts[0] for p in logs} == {"annotate", "eval"}
    eval_log = json.loads(next(p for p in logs if "eval" in p.parts).read_text())
    assert eval_log["timings"]["sp2dpo"]["timing/generation_s"] > 0
    # ... and the run was pinned: its models ran the AVX2 kernels the lock was made with.
    assert eval_log["numerics"]["mode"] == "pinned"
    assert eval_log["numerics"]["cpu_capability"] == "AVX2"
