"""The DVC pipeline from a fresh copy of the project: repro, no-op re-run, clean status, exp run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_project, run

DVC = str(Path(sys.executable).parent / "dvc")


@pytest.mark.slow
def test_fetch_filter_repro_is_reproducible_and_exp_run_works(tmp_path):
    repo = copy_project(tmp_path / "repo")
    run([DVC, "pull", "-q", "data.dvc"], cwd=repo)

    first = run([DVC, "repro", "filter"], cwd=repo).stdout
    assert "Running stage 'fetch'" in first and "Running stage 'filter'" in first
    report = json.loads((repo / "reports/filter.json").read_text())
    assert (report["raw"], report["dropped"], report["kept"]) == (500, 2, 498)
    parquet = (repo / "data/pairs/filtered.parquet").read_bytes()

    second = run([DVC, "repro", "filter"], cwd=repo).stdout
    assert "Running stage" not in second
    assert "didn't change, skipping" in second
    status = run([DVC, "status", "filter"], cwd=repo).stdout
    assert "Data and pipelines are up to date." in status

    # A changed default in core (a dep of every stage) is seen by `dvc status`, never "up to date".
    config_file = repo / "src/sp2dpo/core/config/data.py"
    original = config_file.read_text()
    config_file.write_text(original.replace('seed: int = field(42, "Seed of the `limit` subsample.")',
                                            'seed: int = field(7, "Seed of the `limit` subsample.")'))
    assert config_file.read_text() != original
    changed = json.loads(run([DVC, "status", "--json", "fetch", "filter"], cwd=repo).stdout)
    for stage in ("fetch", "filter"):
        deps = {d for e in changed[stage] if isinstance(e, dict) for d in e.get("changed deps", {})}
        assert deps == {"src/sp2dpo/core"}, (stage, changed)
    config_file.write_text(original)
    assert "Data and pipelines are up to date." in run([DVC, "status", "filter"], cwd=repo).stdout

    # Forcing a re-run reproduces the same bytes (deterministic outputs).
    run([DVC, "repro", "-f", "filter"], cwd=repo)
    assert (repo / "data/pairs/filtered.parquet").read_bytes() == parquet

    # A filter-only param change does not re-fetch.
    changed = run([DVC, "exp", "run", "-S", "filter.drop_identical=true", "filter"], cwd=repo).stdout
    assert "Running stage 'filter'" in changed and "Running stage 'fetch'" not in changed
    assert json.loads((repo / "reports/filter.json").read_text())["kept"] == 497

    exp = run([DVC, "exp", "run", "-S", "data.limit=100", "-S", "filter.drop_identical=false", "filter"], cwd=repo).stdout
    assert "Running stage 'fetch'" in exp
    assert json.loads((repo / "reports/filter.json").read_text())["raw"] == 100
    shown = run([DVC, "exp", "show", "--json"], cwd=repo).stdout
    assert "data.limit" in shown or '"limit": 100' in shown


@pytest.mark.slow
def test_a_snapshot_outside_data_raw_is_a_dep_of_fetch(tmp_path):
    """`data.path` is a params-templated dep: editing a snapshot that lives elsewhere is seen."""
    import gzip

    import yaml

    repo = copy_project(tmp_path / "repo")
    run([DVC, "pull", "-q", "data.dvc"], cwd=repo)
    lines = gzip.decompress((repo / "data/raw/uf_binarized_h4_train_prefs_500.jsonl.gz").read_bytes()).splitlines()
    snapshot = repo / "external" / "snap.jsonl"
    snapshot.parent.mkdir()
    snapshot.write_bytes(b"\n".join(lines[:50]) + b"\n")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["path"] = "external/snap.jsonl"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([DVC, "repro", "fetch"], cwd=repo)
    assert json.loads((repo / "reports/fetch.json").read_text())["rows"] == 50
    assert "Data and pipelines are up to date." in run([DVC, "status", "fetch"], cwd=repo).stdout

    snapshot.write_bytes(b"\n".join(lines[:60]) + b"\n")
    status = json.loads(run([DVC, "status", "--json", "fetch"], cwd=repo).stdout)
    deps = {d for e in status["fetch"] if isinstance(e, dict) for d in e.get("changed deps", {})}
    assert deps == {"external/snap.jsonl"}
    assert "Running stage 'fetch'" in run([DVC, "repro", "fetch"], cwd=repo).stdout
    assert json.loads((repo / "reports/fetch.json").read_text())["rows"] == 60
