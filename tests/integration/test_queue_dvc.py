"""Queued experiments never pay for a teacher call again: after a full run with an HTTP teacher,
two downstream settings queued with `dvc exp run --queue` and run by `dvc queue start -j 2` make
zero teacher requests, and each experiment's beta artifact is the one its settings give."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project, run
from tests.fault_server import FaultServer, teacher, varied_reply

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def _wait_for_queue(repo: Path, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = run([DVC, "queue", "status"], cwd=repo).stdout
        if not any(word in status for word in ("Queued", "Running")):
            return
        assert time.monotonic() < deadline, status
        time.sleep(2)


@pytest.mark.slow
def test_queued_downstream_experiments_make_no_teacher_call(tmp_path):
    repo = copy_project(tmp_path / "repo")
    run([DVC, "pull", "-q", "data.dvc"], cwd=repo)
    with FaultServer(responder=varied_reply) as server:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["teachers"] = [teacher(server, id="api", max_concurrency=4)]
        params["annotate"].update(max_pairs=4, progress=False)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run([DVC, "repro", "aggregate"], cwd=repo)
        made = len(server.requests)
        assert made == 4 * 3
        run([*GIT, "add", "-A"], cwd=repo)
        run([*GIT, "commit", "-qm", "baseline with an HTTP teacher"], cwd=repo)

        settings = {"operator": "aggregate.prompt_operator=weighted_mean", "damped": "aggregate.damping=exp"}
        for name, setting in settings.items():
            run([DVC, "exp", "run", "--queue", "-n", name, "-S", setting, "aggregate"], cwd=repo)
        run([DVC, "queue", "start", "-j", "2"], cwd=repo)
        _wait_for_queue(repo)
        assert len(server.requests) == made  # no teacher call in either experiment
    logs = {name: run([DVC, "queue", "logs", name], cwd=repo).stdout for name in settings}
    for name, text in logs.items():
        assert "Stage 'annotate' didn't change, skipping" in text, (name, text[-2000:])

    # Each experiment's artifact is what `sp2dpo aggregate` gives for its settings.
    show = json.loads(run([DVC, "exp", "show", "--json"], cwd=repo).stdout)
    revs = {r["name"]: r["rev"] for e in show for x in (e.get("experiments") or []) for r in x["revs"]}
    for name, setting in settings.items():
        lock = yaml.safe_load(run(["git", "show", f"{revs[name]}:dvc.lock"], cwd=repo).stdout)
        got = next(o["md5"] for o in lock["stages"]["aggregate"]["outs"] if o["path"] == "data/beta/beta.csv")
        key, value = setting.split("=")
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["aggregate"][key.split(".")[1]] = value
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(params))
        out = tmp_path / f"{name}.csv"
        run([str(BIN / "sp2dpo"), "aggregate", "--params", str(tmp_path / f"{name}.yaml"),
             "--calls", "data/annotate/calls.parquet", "--out", str(out)], cwd=repo)
        assert got == hashlib.md5(out.read_bytes()).hexdigest(), name
    assert len({hashlib.md5((tmp_path / f"{n}.csv").read_bytes()).hexdigest() for n in settings}) == 2
