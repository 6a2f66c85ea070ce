"""The APO outer loop end to end: `sp2dpo sweep run` queues four settings of a downstream
variable (the envelope's beta_max) as DVC experiments, two DVC queue workers run them on the
reduced `apo-smoke` profile (one method, two steps, the held-out metric only), and
`sp2dpo sweep select` names lambda* with its interval, plots the metric over beta_max and logs a
parent MLflow run with one child per experiment. Teachers are an HTTP fault-injection server that
no stage has asked before the sweep: both parallel workers need the same calls at the same time,
and the shared call store's claims make every call exactly once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import copy_project, find_chromium, run
from tests.fault_server import FaultServer, teacher, varied_reply
from tests.mlflow_ui import mlflow_server, render_runs_table

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
SP2DPO = str(BIN / "sp2dpo")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
NAMES = [f"apo-smoke-{i}" for i in range(1, 5)]
VALUES = [0.1, 0.2, 0.4, 0.8]


def _margins(repo: Path, rev: str) -> dict[str, float]:
    """``prompt_id -> margin`` of the per-pair held-out records of the experiment at ``rev``."""
    from dvc.api import DVCFileSystem

    text = DVCFileSystem(str(repo), rev=rev).read_text("data/eval/smollm2/sp2dpo/prefeval.jsonl")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {r["prompt_id"]: r["margin"] for r in records}


def _experiments(repo: Path) -> dict[str, dict]:
    show = json.loads(run([DVC, "exp", "show", "--json"], cwd=repo).stdout)
    return {rev["name"]: {**rev, "state": (group.get("executor") or {}).get("state")}
            for baseline in show for group in baseline.get("experiments") or []
            for rev in group["revs"] if rev.get("name")}


@pytest.mark.slow
@pytest.mark.requires_chromium
@pytest.mark.timeout(2400)
def test_sweep_runs_through_the_dvc_queue_and_selects_lambda_star(tmp_path):
    repo = copy_project(tmp_path / "repo")
    run([DVC, "pull", "-q"], cwd=repo, timeout=600)
    with FaultServer(responder=varied_reply, latency_s=0.2) as server:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["teachers"] = [teacher(server, id="api", max_concurrency=2)]
        params["annotate"].update(max_pairs=4, progress=False)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run([*GIT, "add", "-A"], cwd=repo)
        run([*GIT, "commit", "-qm", "an HTTP teacher no stage has called yet"], cwd=repo)

        out = run([SP2DPO, "sweep", "run", "--params", "profiles/apo-smoke.yaml", "--timeout", "2000"],
                  cwd=repo, timeout=2200).stdout
        # Every experiment annotated (the baseline never did), two of them at the same time:
        # 4 pairs x 1 teacher x 3 variants, each requested exactly once across the sweep.
        assert len(server.counts) == 12, server.counts
        assert set(server.counts.values()) == {1}, server.counts
    for name, value in zip(NAMES, VALUES, strict=True):
        assert f"queued {name}: beta.max={value}" in out

    # DVC owns the experiments: `dvc exp show` lists the four, each with its setting and metrics.
    exps = _experiments(repo)
    assert set(NAMES) <= set(exps), sorted(exps)
    scores = {}
    for name, value in zip(NAMES, VALUES, strict=True):
        data = exps[name]["data"]
        assert exps[name]["state"] == "success"
        assert data["params"]["params.yaml"]["data"]["beta"]["max"] == value
        assert data["params"]["params.yaml"]["data"]["matrix"]["methods"] == ["sp2dpo"]
        shown = data["metrics"]["reports/eval/smollm2.json"]["data"]["methods"]["sp2dpo"]["prefeval"]
        # the whole report (intervals too: `dvc exp show` lists only numbers) is in the commit
        committed = json.loads(run(["git", "show", f"{exps[name]['rev']}:reports/eval/smollm2.json"],
                                   cwd=repo).stdout)["methods"]["sp2dpo"]["prefeval"]
        assert committed["n"] == shown["n"] == 4 and committed["mean_margin"] == shown["mean_margin"]
        scores[name] = (committed["mean_margin"], committed["mean_margin_ci"])
        # each experiment's beta schedule lies in its own envelope
        lock = yaml.safe_load(run(["git", "show", f"{exps[name]['rev']}:dvc.lock"], cwd=repo).stdout)
        assert lock["stages"]["aggregate"]["params"]["params.yaml"]["beta"]["max"] == value

    # The selection report: lambda* is the best mean margin, with its interval, side by side.
    report = repo / "reports/sweep/apo-smoke"
    sel = json.loads((report / "selection.json").read_text())
    best = max(NAMES, key=lambda n: (scores[n][0], -NAMES.index(n)))
    assert sel["best"]["name"] == best
    assert sel["lambda_star"] == {"beta.max": VALUES[NAMES.index(best)]}
    assert sel["best"]["value"] == pytest.approx(scores[best][0])
    assert sel["best"]["ci"] == pytest.approx(scores[best][1])
    assert [t["name"] for t in sel["trials"]] == NAMES
    # "distinguishable", from the numbers behind it, recomputed here: each experiment's per-pair
    # margins (a DVC output of its commit), the paired difference best - other over the shared
    # held-out pairs, and the seeded percentile bootstrap of its mean the report names.
    runner = sorted(NAMES, key=lambda n: (-scores[n][0], NAMES.index(n)))[1]
    assert sel["runner_up"]["name"] == runner
    assert sel["criterion"].startswith("the 95% interval of the paired per-pair difference")
    margins = {name: _margins(repo, exps[name]["rev"]) for name in NAMES}
    assert sorted(sel["paired_vs_best"]) == sorted(n for n in NAMES if n != best)
    for name, found in sel["paired_vs_best"].items():
        assert set(margins[name]) == set(margins[best]) and len(margins[best]) == 4
        d = np.array([margins[best][k] - margins[name][k] for k in sorted(margins[best])])
        assert found["n"] == 4 and found["diff"] == pytest.approx(d.mean(), abs=1e-12)
        rng = np.random.default_rng(found["seed"])
        means = [d[rng.integers(0, len(d), size=len(d))].mean() for _ in range(found["rounds"])]
        assert (found["rounds"], found["seed"]) == (1000, 42)
        assert found["ci"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])), abs=1e-12)
    assert np.mean(list(margins[best].values())) == pytest.approx(scores[best][0])
    low = sel["paired_vs_best"][runner]["ci"][0]
    assert sel["distinguishable"] is bool(low > 0)  # maximize: the interval lies above 0
    md = (report / "selection.md").read_text()
    assert f"(experiment `{best}`)" in md and "lambda\\*" in md
    assert all(f"`{n}`" in md for n in NAMES)
    assert (report / "beta.max.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # MLflow: the workers' training runs reached the workspace's store (DVC_ROOT), and the
    # sweep is a parent run with one child per experiment carrying the training run's datasets.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    train_exp = client.get_experiment_by_name("sp2dpo-train")
    trained = client.search_runs([train_exp.experiment_id], "tags.dvc_exp LIKE 'apo-smoke-%'")
    assert sorted(r.data.tags["dvc_exp"] for r in trained) == NAMES
    sweep_exp = client.get_experiment_by_name("sp2dpo-sweep")
    assert sweep_exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([sweep_exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_name for p in parents] == ["apo-smoke"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
    assert sorted(children) == NAMES
    for name, child in children.items():
        assert child.data.params["beta.max"] == str(VALUES[NAMES.index(name)])
        assert child.data.metrics["prefeval.mean_margin"] == pytest.approx(scores[name][0])
        assert child.data.tags["selected"] == str(name == best).lower()
        inputs = {i.dataset.name: i.dataset.digest for i in child.inputs.dataset_inputs}
        assert set(inputs) == {"pairs", "beta"}
    assert parents[0].data.tags["best_experiment"] == best

    # Selecting again updates, never duplicates; --apply puts lambda* into the workspace.
    run([SP2DPO, "sweep", "select", "--params", "profiles/apo-smoke.yaml", "--apply"], cwd=repo)
    assert len(client.search_runs([sweep_exp.experiment_id])) == 5
    applied = yaml.safe_load((repo / "params.yaml").read_text())
    assert applied["beta"]["max"] == VALUES[NAMES.index(best)]

    # The MLflow UI, as a user opens it: the sweep's parent with its four children nested under
    # it, each child's dataset cell naming the pairs table and the beta artifact by digest; the
    # workers' training runs show their datasets too.
    chromium = find_chromium()
    assert chromium, "requires_chromium: the capability check found Chromium"
    with mlflow_server(repo / "mlflow.db", repo / "mlartifacts") as base:
        table = render_runs_table(chromium, base, sweep_exp.experiment_id)
        training = render_runs_table(chromium, base, train_exp.experiment_id)
    assert f"/experiments/{sweep_exp.experiment_id}/runs?" in table.url
    parent_row = table.row("apo-smoke")
    assert parent_row.expandable and parent_row.datasets == "-"
    shown = table.children("apo-smoke")
    assert sorted(row.name for row in shown) == NAMES
    assert all(row.indent > parent_row.indent for row in shown)
    for row in shown:
        digests = {i.dataset.name: i.dataset.digest for i in children[row.name].inputs.dataset_inputs}
        assert f"pairs ({digests['pairs']}) Training" in row.datasets, row.datasets
        assert f"beta ({digests['beta']}) Training" in row.datasets, row.datasets
    assert len({row.datasets for row in shown}) == 4  # each setting trained on its own beta artifact
    trained_rows = [row for row in training.rows if row.name == "smollm2-sp2dpo"]
    assert len(trained_rows) == 4 and all("beta (" in row.datasets for row in trained_rows)
