"""Unit tests of the APO outer loop (sp2dpo.sweep): the spec, the `dvc exp run -S` overrides,
reading `dvc exp show --json`, the selection, the report, and the MLflow parent/child runs.
The whole loop through DVC's queue is tests/integration/test_sweep_dvc.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sp2dpo import sweep, tracking
from sp2dpo.core.config import ConfigError, SweepConfig
from sp2dpo.sweep import queue, track

BIN = Path(sys.executable).parent


def _cfg(**kw) -> SweepConfig:
    base = {"name": "env", "variables": {"beta.max": [0.1, 0.3, 1.0, 3.0]}, "metric": "prefeval.accuracy"}
    return SweepConfig(**{**base, **kw})


def _exp(name: str, beta_max, metrics: dict | None, *, state="success", methods=("sp2dpo",), error=None):
    """One experiment as `dvc exp show --json` lists it (the layout of DVC 3)."""
    params = {"beta": {"max": beta_max, "min": 0.03}, "matrix": {"students": ["smollm2"], "methods": list(methods)}}
    data = {"rev": f"{abs(hash(name)):040x}"[:40], "params": {"params.yaml": {"data": params}},
            "metrics": {} if metrics is None else {"reports/eval/smollm2.json": {"data": {"methods": metrics}}}}
    return {"revs": [{"rev": data["rev"], "name": name, "data": data, "error": error, "experiments": None}],
            "executor": {"state": state, "name": "dvc-task", "local": None}, "name": name}


def _pe(acc, ci):
    return {"sp2dpo": {"prefeval": {"accuracy": acc, "accuracy_ci": ci, "mean_margin": acc - 0.5}}}


def _show(*experiments) -> list[dict]:
    return [{"rev": "workspace", "name": None, "data": {}, "error": None, "experiments": None},
            {"rev": "a" * 40, "name": "main", "data": {}, "error": None, "experiments": list(experiments)}]


# ------------------------------------------------------------------------------ spec


def test_grid_in_order_and_spec_errors():
    cfg = SweepConfig(name="g", variables={"beta.max": [0.1, 0.3], "matrix.methods": [["dpo"], ["sp2dpo"]]})
    assert cfg.settings() == [
        {"beta.max": 0.1, "matrix.methods": ["dpo"]}, {"beta.max": 0.1, "matrix.methods": ["sp2dpo"]},
        {"beta.max": 0.3, "matrix.methods": ["dpo"]}, {"beta.max": 0.3, "matrix.methods": ["sp2dpo"]},
    ]
    assert queue.experiment_names(cfg) == ["g-1", "g-2", "g-3", "g-4"]
    with pytest.raises(ConfigError, match=r"more than sweep\.budget=3"):
        SweepConfig(variables={"beta.max": [1, 2], "beta.min": [0.01, 0.02]}, budget=3)
    with pytest.raises(ConfigError, match="not a valid experiment name"):
        SweepConfig(name="bad name")
    with pytest.raises(ConfigError, match="not a params key"):
        SweepConfig(variables={"beta": [1]})
    with pytest.raises(ConfigError, match="not a sweep"):
        SweepConfig(variables={"sweep.jobs": [1]})
    with pytest.raises(ConfigError, match="at least one value"):
        SweepConfig(variables={"beta.max": []})
    with pytest.raises(ConfigError, match=r"sweep\.set"):
        SweepConfig(variables={"beta.max": [1]}, set={"beta.max": 2})


def test_overrides_are_what_dvc_exp_run_parses():
    cfg = _cfg(profile="apo-smoke", set={"train.max_steps": 2, "eval.judge.model": "gpt 4"})
    args = queue.overrides(cfg, {"beta.max": 0.3, "matrix.methods": ["dpo", "sp2dpo"], "x.y": None, "x.z": True})
    assert args == ["-S", "+profiles=apo-smoke", "-S", "train.max_steps=2", "-S", "eval.judge.model='gpt 4'",
                    "-S", "beta.max=0.3", "-S", "matrix.methods=['dpo','sp2dpo']", "-S", "x.y=null",
                    "-S", "x.z=true"]


def test_a_swept_key_that_params_yaml_lacks_is_refused_with_a_suggestion(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"learning_rate": 1e-4, "lora": {"r": 4}}}))
    queue.check_keys(SweepConfig(variables={"train.lora": [{"r": 8}], "train.learning_rate": [1e-3]}),
                     tmp_path / "params.yaml")
    with pytest.raises(sweep.SweepError, match=r"'train.learning_rat' is not a key.*did you mean train.learning_rate"):
        queue.check_keys(SweepConfig(variables={"train.learning_rat": [1e-3]}), tmp_path / "params.yaml")


# ------------------------------------------------------------------------------ selection


def test_read_trials_scores_and_explains_what_has_no_score():
    cfg = _cfg(variables={"beta.max": [0.1, 0.3, 1.0, 3.0, 5.0, 9.0]})
    show = _show(
        _exp("env-3", 1.0, _pe(0.70, [0.6, 0.8])),
        _exp("env-1", 0.1, _pe(0.55, [0.45, 0.65])),
        _exp("env-2", 0.3, _pe(0.62, [0.52, 0.72])),
        _exp("env-4", 3.0, None, state="failed"),
        _exp("env-5", 5.0, {"dpo": {}}),
        _exp("env-6", 9.0, _pe(0.9, [0.8, 1.0]), methods=("dpo", "sp2dpo")),
        _exp("other-1", 0.2, _pe(0.99, [0.9, 1.0])),  # not this sweep
    )
    trials = sweep.read_trials(show, cfg)
    assert [t.name for t in trials] == [f"env-{i}" for i in range(1, 7)]
    by = {t.name: t for t in trials}
    assert by["env-3"].value == 0.70 and by["env-3"].ci == (0.6, 0.8) and by["env-3"].setting == {"beta.max": 1.0}
    assert by["env-4"].value is None and "failed" in by["env-4"].problem
    assert "methods.sp2dpo.prefeval.accuracy not in" in by["env-5"].problem
    assert "2 methods trained: set sweep.method" in by["env-6"].problem
    # naming the method makes the two-method experiment count
    assert {t.name: t.value for t in sweep.read_trials(show, _cfg(method="sp2dpo",
            variables={"beta.max": [0.1] * 6}))}["env-6"] == 0.9
    # `dvc exp show` drops list values: the intervals come from the committed report
    bare = _show(_exp("env-1", 0.1, {"sp2dpo": {"prefeval": {"accuracy": 0.55}}}))
    assert sweep.read_trials(bare, cfg)[0].ci is None
    whole = {"methods": _pe(0.55, [0.45, 0.65])}
    reader = lambda rev, path: whole if path == "reports/eval/smollm2.json" and len(rev) == 40 else None  # noqa: E731
    assert sweep.read_trials(bare, cfg, reader)[0].ci == (0.45, 0.65)
    with pytest.raises(sweep.SweepError, match="no experiment named nope-<n>"):
        sweep.read_trials(show, _cfg(name="nope"))


def test_select_maximize_minimize_ties_and_distinguishability():
    cfg = _cfg()
    t = lambda n, v, ci: sweep.Trial(name=f"env-{n}", rev="r", index=n, state="success",  # noqa: E731
                                     setting={"beta.max": n}, value=v, ci=ci)
    overlapping = [t(1, 0.6, (0.5, 0.7)), t(2, 0.65, (0.55, 0.75)), t(3, None, None)]
    sel = sweep.select(overlapping, cfg)
    assert sel.best.name == "env-2" and sel.runner_up.name == "env-1" and sel.distinguishable is False
    apart = [t(1, 0.6, (0.55, 0.65)), t(2, 0.8, (0.7, 0.9))]
    assert sweep.select(apart, cfg).distinguishable is True
    low = sweep.select(apart, _cfg(direction="minimize"))
    assert low.best.name == "env-1" and low.distinguishable is True
    tied = sweep.select([t(1, 0.6, None), t(2, 0.6, None)], cfg)
    assert tied.best.name == "env-1" and tied.distinguishable is None  # earlier in the grid; no intervals
    assert sweep.select([t(1, None, None)], cfg).best is None


def test_report_files(tmp_path):
    cfg = _cfg(variables={"beta.max": [0.1, 0.3, 1.0], "aggregate.prompt_operator": ["median", "mean"]})
    trials = [sweep.Trial(name=f"env-{i}", rev="r", index=i, state="success",
                          setting={"beta.max": b, "aggregate.prompt_operator": op}, method="sp2dpo",
                          value=0.5 + 0.05 * i, ci=(0.45 + 0.05 * i, 0.55 + 0.05 * i))
              for i, (b, op) in enumerate([(0.1, "median"), (0.3, "mean"), (1.0, "median")], start=1)]
    written = sweep.write_report(sweep.select(trials, cfg), tmp_path)
    assert [p.name for p in written] == ["selection.json", "selection.md", "beta.max.png",
                                         "aggregate.prompt_operator.png"]
    sel = json.loads((tmp_path / "selection.json").read_text())
    assert sel["lambda_star"] == {"beta.max": 1.0, "aggregate.prompt_operator": "median"}
    assert sel["best"]["ci"] == pytest.approx([0.6, 0.7]) and sel["distinguishable"] is False
    md = (tmp_path / "selection.md").read_text()
    assert "**lambda\\* = `beta.max` = `1.0`, `aggregate.prompt_operator` = `median`** (experiment `env-3`)" in md
    assert "**not distinguishable**" in md and "| `env-3` (lambda*) | `1.0` | `median` | sp2dpo | 0.6500 |" in md
    for png in written[2:]:
        assert png.read_bytes()[:4] == b"\x89PNG"
    before = [p.read_bytes() for p in written]
    sweep.write_report(sweep.select(trials, cfg), tmp_path)
    assert [p.read_bytes() for p in written] == before  # byte-identical on re-run


# ------------------------------------------------------------------------------ MLflow


def test_mlflow_parent_and_children_with_the_training_runs_datasets(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    # The training runs the experiments' stages logged (tag dvc_exp, datasets).
    for name, sha in (("env-1", "1" * 64), ("env-2", "2" * 64)):
        monkeypatch.setenv("DVC_EXP_NAME", name)
        with tracking.start_run("smollm2-sp2dpo", {}, {"method": "sp2dpo"}, root=tmp_path) as tr:
            tr.log_datasets([tracking.DatasetRef("pairs", "data/pairs/filtered.parquet",
                                                 pd.DataFrame({"a": [1]}), "f" * 64),
                             tracking.DatasetRef("beta", "data/beta/beta.csv", pd.DataFrame({"b": [2]}), sha)])
    monkeypatch.delenv("DVC_EXP_NAME")
    cfg = _cfg()
    pairs_1 = {f"p{i}": 0.6 + (0.1 if i % 2 else -0.1) for i in range(10)}
    pairs_2 = {k: v + 0.1 for k, v in pairs_1.items()}
    trials = [sweep.Trial(name="env-1", rev="r1", index=1, state="success", setting={"beta.max": 0.1},
                          method="sp2dpo", value=0.6, ci=(0.5, 0.7), pairs=pairs_1),
              sweep.Trial(name="env-2", rev="r2", index=2, state="success", setting={"beta.max": 0.3},
                          method="sp2dpo", value=0.7, ci=(0.6, 0.8), pairs=pairs_2),
              sweep.Trial(name="env-3", rev="r3", index=3, state="failed", setting={"beta.max": 1.0},
                          problem="DVC state failed")]
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "selection.md").write_text("x")
    first = track.log_sweep(sweep.select(trials, cfg), root=tmp_path, report=tmp_path / "rep")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(track.SWEEP_EXPERIMENT)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    parent = client.get_run(first["parent"])
    assert parent.info.run_name == "env" and parent.data.tags["best_experiment"] == "env-2"
    assert json.loads(parent.data.tags["lambda_star"]) == {"beta.max": 0.3}
    assert parent.data.metrics["best/prefeval.accuracy"] == 0.7
    assert [a.path for a in client.list_artifacts(first["parent"], "selection")] == ["selection/selection.md"]
    children = {n: client.get_run(i) for n, i in first["children"].items()}
    assert set(children) == {"env-1", "env-2", "env-3"}
    for name, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == first["parent"]
        assert child.data.tags["selected"] == str(name == "env-2").lower()
    assert children["env-2"].data.params == {"beta.max": "0.3", "method": "sp2dpo"}
    assert children["env-2"].data.metrics["prefeval.accuracy_ci_high"] == 0.8
    # the paired difference best - this experiment on the runner-up, the criterion on the parent
    assert children["env-1"].data.metrics["best_minus_this/prefeval.accuracy"] == pytest.approx(0.1)
    assert children["env-1"].data.metrics["best_minus_this/prefeval.accuracy_ci_low"] == pytest.approx(0.1)
    assert "best_minus_this/prefeval.accuracy" not in children["env-2"].data.metrics
    assert "paired per-pair difference" in parent.data.tags["criterion"]
    assert parent.data.tags["distinguishable"] == "true"
    beta = {i.dataset.name: i.dataset.digest for i in children["env-2"].inputs.dataset_inputs}
    assert beta == {"pairs": "f" * 16, "beta": "2" * 16}
    assert children["env-3"].info.status == "FAILED" and not children["env-3"].inputs.dataset_inputs
    # A second select finds every run again: nothing duplicated, the outcome updated.
    trials[0] = sweep.Trial(**{**trials[0].__dict__, "value": 0.9, "ci": (0.85, 0.95)})
    trials[0] = sweep.Trial(**{**trials[0].__dict__, "rev": "r1b"})  # env-1 was re-run
    again = track.log_sweep(sweep.select(trials, cfg), root=tmp_path)
    assert again["parent"] == first["parent"]
    assert again["children"]["env-2"] == first["children"]["env-2"]
    assert again["children"]["env-1"] != first["children"]["env-1"]  # a new commit is a new child
    assert len(client.search_runs([exp.experiment_id])) == 5
    assert client.get_run(first["parent"]).data.tags["best_experiment"] == "env-1"
    assert client.get_run(first["children"]["env-2"]).data.tags["selected"] == "false"
    mlflow.set_tracking_uri(None)


# ------------------------------------------------------------------------------ command line


def test_sweep_run_refuses_an_empty_grid_and_names_the_problem(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"sweep": {"name": "x"}}))
    done = subprocess.run([str(BIN / "sp2dpo"), "sweep", "run", "--params", str(tmp_path / "p.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "sweep.variables` is empty" in done.stderr
    (tmp_path / "q.yaml").write_text(yaml.safe_dump({"sweep": {"variables": {"beta.max": [1] * 20}}}))
    done = subprocess.run([str(BIN / "sp2dpo"), "sweep", "select", "--params", str(tmp_path / "q.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "q.yaml: sweep: the grid has 20 settings, more than sweep.budget=16" in done.stderr


def test_workers_share_the_call_stores_and_split_the_cores(tmp_path, monkeypatch):
    env = queue.worker_env(tmp_path, {"PATH": "/bin"})
    assert env["SP2DPO_SHARED_CALLS"] == str((tmp_path / queue.SHARED_CALLS).resolve())
    assert env["SP2DPO_SHARED_EVAL_CALLS"] == str((tmp_path / queue.SHARED_EVAL_CALLS).resolve())
    assert queue.worker_env(tmp_path, {"SP2DPO_SHARED_CALLS": "/nfs/calls"})["SP2DPO_SHARED_CALLS"] == "/nfs/calls"
    monkeypatch.setattr(queue.os, "cpu_count", lambda: 8)
    queue.cpu_threads(env, 2)
    assert env["OMP_NUM_THREADS"] == "4"
    mine = {"OMP_NUM_THREADS": "1"}
    queue.cpu_threads(mine, 2)
    assert mine["OMP_NUM_THREADS"] == "1"


# ------------------------------------------------------------------------------ the paired test


def _paired_trials(shift_runner: float, noise: float = 0.3, n: int = 100):
    """Two settings scored on the same n pairs: a shared per-pair effect (large, as held-out pairs
    differ much more from each other than two nearby settings do) plus a small per-setting
    jitter; the best is ahead of the runner-up by ``shift_runner`` on every pair on average."""
    import numpy as np

    rng = np.random.default_rng(0)
    common = rng.normal(0.0, 1.0, n)
    ids = [f"p{i:03d}" for i in range(n)]
    best = common + 0.2 + rng.normal(0, noise * 0.1, n)
    runner = common + 0.2 - shift_runner + rng.normal(0, noise * 0.1, n)
    return ids, best, runner


def test_distinguishable_is_decided_by_a_paired_bootstrap_of_the_per_pair_difference():
    """Shared pairs make the two settings' errors correlated: marginal intervals of width ~0.4
    overlap although the best is ahead on nearly every pair; the paired interval of the
    difference sees it. Without per-pair data the marginal criterion is kept, and said."""
    import numpy as np

    from sp2dpo.sweep import paired

    cfg = _cfg(metric="prefeval.mean_margin")
    ids, best, runner = _paired_trials(shift_runner=0.05)

    def trial(n, values, pairs=True):
        mean = float(np.mean(values))
        return sweep.Trial(name=f"env-{n}", rev="r", index=n, state="success", setting={"beta.max": n},
                           method="sp2dpo", value=mean, ci=(mean - 0.2, mean + 0.2),
                           pairs=dict(zip(ids, map(float, values), strict=True)) if pairs else None)

    sel = sweep.select([trial(1, runner), trial(2, best)], cfg)
    assert sel.best.name == "env-2" and sel.runner_up.name == "env-1"
    found = sel.paired["env-1"]
    assert found["n"] == 100 and found["diff"] == pytest.approx(float(np.mean(best - runner)))
    assert 0 < found["ci"][0] < found["diff"] < found["ci"][1]
    assert sel.distinguishable is True and sel.criterion == sweep.select.__globals__["PAIRED_CRITERION"]
    # the same numbers without per-pair values: the marginal intervals overlap
    marginal = sweep.select([trial(1, runner, False), trial(2, best, False)], cfg)
    assert marginal.distinguishable is False and "do not overlap" in marginal.criterion
    # no real difference: the paired interval covers 0
    ids, best, runner = _paired_trials(shift_runner=0.0)
    tied = sweep.select([trial(1, runner), trial(2, best)], cfg)
    low, high = tied.paired[tied.runner_up.name]["ci"]
    assert low < 0 < high and tied.distinguishable is False
    # minimize: the best is the lower one, distinguishable when best - runner-up is below 0
    ids, best, runner = _paired_trials(shift_runner=0.05)
    low_sel = sweep.select([trial(1, runner), trial(2, best)], _cfg(metric="prefeval.mean_margin", direction="minimize"))
    assert low_sel.best.name == "env-1" and low_sel.paired["env-2"]["ci"][1] < 0 and low_sel.distinguishable is True
    # seeded: the same interval again
    assert sweep.select([trial(1, runner), trial(2, best)], cfg).paired == sel.paired
    # the per-pair values are the report's metric: their mean is the held-out mean
    records = [{"prompt_id": "a", "margin": 0.5, "chosen_logratio": 0.3, "rejected_logratio": -0.2,
                "policy_chosen_logp": -10.0, "policy_rejected_logp": -12.0},
               {"prompt_id": "b", "margin": 0.0, "chosen_logratio": 0.0, "rejected_logratio": 0.0,
                "policy_chosen_logp": -9.0, "policy_rejected_logp": -8.0}]
    assert paired.values(records, "prefeval.accuracy") == {"a": 1.0, "b": 0.5}
    assert paired.values(records, "prefeval.likelihood_accuracy") == {"a": 1.0, "b": 0.0}
    assert paired.values(records, "alpaca_eval.win_rate") is None


def test_read_trials_reads_each_experiments_per_pair_file_and_the_report_states_the_test(tmp_path):
    cfg = _cfg(metric="prefeval.accuracy")
    show = _show(_exp("env-1", 0.1, _pe(0.55, [0.45, 0.65])), _exp("env-2", 0.3, _pe(0.60, [0.5, 0.7])))
    asked = []

    def read_pairs(rev, path):
        asked.append(path)
        win = 1 if rev == show[1]["experiments"][1]["revs"][0]["rev"] else 0
        return [{"prompt_id": f"p{i}", "margin": (win if i % 4 else 1) - 0.5} for i in range(40)]

    trials = sweep.read_trials(show, cfg, None, read_pairs)
    assert asked == ["data/eval/smollm2/sp2dpo/prefeval.jsonl"] * 2
    assert trials[1].pairs["p1"] == 1.0 and trials[0].pairs["p1"] == 0.0 and trials[0].pairs["p0"] == 1.0
    sel = sweep.select(trials, cfg)
    sweep.write_report(sel, tmp_path)
    md = (tmp_path / "selection.md").read_text()
    assert "paired over the 40 held-out pairs both scored: best - runner-up = 0.7500" in md
    assert "| `env-1` | `0.1` | sp2dpo | 0.5500 | [0.4500, 0.6500] | 0.7500 [" in md
    saved = json.loads((tmp_path / "selection.json").read_text())
    assert saved["paired_vs_best"]["env-1"]["n"] == 40 and saved["distinguishable"] is True
    assert "paired per-pair difference" in saved["criterion"]
