"""The `annotate` stage under DVC, from a fresh copy of the project, with an HTTP teacher on a
loopback server: repro, no-op re-run, downstream params ignored, cache kept across re-runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import copy_project, run
from tests.fault_server import FaultServer, teacher

DVC = str(Path(sys.executable).parent / "dvc")


@pytest.mark.slow
def test_dvc_annotate_stage(tmp_path):
    repo = copy_project(tmp_path / "repo")
    run([DVC, "pull", "-q", "data.dvc"], cwd=repo)
    params_path = repo / "params.yaml"
    with FaultServer() as server:
        raw = yaml.safe_load(params_path.read_text())
        raw["teachers"] = [teacher(server, id="fault")]
        raw["annotate"].update(max_pairs=3, progress=False)
        params_path.write_text(yaml.safe_dump(raw, sort_keys=False))

        first = run([DVC, "repro", "annotate"], cwd=repo).stdout
        assert "Running stage 'annotate'" in first
        assert len(server.requests) == 9
        table = pd.read_parquet(repo / "data/annotate/calls.parquet")
        assert len(table) == 9 and (table["status"] == "ok").all()
        report = (repo / "reports/annotate.json").read_bytes()
        assert json.loads(report)["calls"] == 9 and "calls_made" not in json.loads(report)

        # Unchanged params and code: nothing runs.
        second = run([DVC, "repro", "annotate"], cwd=repo).stdout
        assert "Running stage" not in second
        assert "Data and pipelines are up to date." in run([DVC, "status", "annotate"], cwd=repo).stdout

        # A param of a downstream stage does not touch annotate.
        downstream = next((s for s in ("beta", "aggregate", "train") if isinstance(raw.get(s), dict)
                           and "seed" in raw[s]), None)
        if downstream is not None:
            raw[downstream]["seed"] = raw[downstream]["seed"] + 1
            params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
            assert "Running stage 'annotate'" not in run([DVC, "repro", "annotate"], cwd=repo).stdout

        # An annotate param that changes no call re-runs the stage, but the call log (persist)
        # answers every call: no request is made.
        raw["decoding"]["timeout_s"] = 30
        params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        third = run([DVC, "repro", "annotate"], cwd=repo).stdout
        assert "Running stage 'annotate'" in third and len(server.requests) == 9
        # Same calls, same table: the metrics file is byte-identical to the first run's.
        assert (repo / "reports/annotate.json").read_bytes() == report

        # An experiment with one more pair calls only that pair's three variants.
        run([DVC, "exp", "run", "-S", "annotate.max_pairs=4", "annotate"], cwd=repo)
        assert len(server.requests) == 12
        assert len(pd.read_parquet(repo / "data/annotate/calls.parquet")) == 12
    store = repo / "data/annotate/calls"
    log_lines = [line for s in sorted(store.iterdir()) for line in s.read_text().splitlines()]
    assert len(log_lines) == 12 and len(list(store.iterdir())) == 2  # one segment per run that made calls
