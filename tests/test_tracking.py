"""Tests for sp2dpo.tracking, and the train stage end to end under DVC with its MLflow runs read
back through a real MLflow server on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sp2dpo import tracking
from sp2dpo.core import artifacts

from .conftest import copy_project, run, stop_process, tool_env

BIN = Path(sys.executable).parent


def test_scrub_redacts_secrets_but_keeps_env_names():
    env = {"OPENAI_API_KEY": "sk-live-0123456789abcdefXYZ", "OTHER": "x"}
    params = {
        "teachers.0.api_key_env": "OPENAI_API_KEY",
        "teachers.0.model": "gpt-5-mini",
        "leak.copy": "sk-live-0123456789abcdefXYZ",
        "x.api_key": "whatever",
        "y.token": "abc",
        "z.note": "hf_" + "a" * 30,
        "train.lora.r": 16,
        "train.beta_column": None,
    }
    out = tracking.scrub(params, env)
    assert out["teachers.0.api_key_env"] == "OPENAI_API_KEY"
    assert out["teachers.0.model"] == "gpt-5-mini"
    assert out["leak.copy"] == out["x.api_key"] == out["y.token"] == out["z.note"] == tracking.REDACTED
    assert out["train.lora.r"] == 16 and out["train.beta_column"] is None
    assert "sk-live" not in json.dumps(out)


def test_tracking_uri_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".git").mkdir()
    (tmp_path / "sub").mkdir()
    assert tracking.tracking_uri(tmp_path / "sub") == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:9"


def test_store_root_is_the_workspace_dvc_runs_the_experiment_from(tmp_path, monkeypatch):
    # A queued experiment runs in a temporary clone; DVC_ROOT names the originating workspace.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "temp" / ".git").mkdir(parents=True)
    (tmp_path / "workspace").mkdir()
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking.tracking_uri(tmp_path / "temp") == f"sqlite:///{(tmp_path / 'temp').resolve()}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "workspace"))
    assert tracking.tracking_uri(tmp_path / "temp") == f"sqlite:///{(tmp_path / 'workspace').resolve()}/mlflow.db"
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "gone"))  # not a folder: ignored
    assert tracking.store_root(tmp_path / "temp") == (tmp_path / "temp").resolve()


def test_experiment_kind_and_dataset_inputs(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    pairs = pd.DataFrame({"prompt_id": ["a", "b", "c"], "prompt": ["x", "y", "z"]})
    beta = pd.DataFrame({"prompt_id": ["a", "b"], "beta_annotators_mean_ens": [0.05, 0.3]})
    refs = [tracking.DatasetRef("pairs", "data/pairs/filtered.parquet", pairs, "1" * 64),
            tracking.DatasetRef("beta", "data/beta/beta.csv", beta, "ab" * 32)]
    with tracking.start_run("s-m", {}, {"method": "m"}, root=tmp_path, experiment="kind") as tr:
        tr.log_datasets(refs)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("kind")
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    inputs = {i.dataset.name: i for i in client.get_run(tr.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"pairs", "beta"}
    assert inputs["beta"].dataset.digest == ("ab" * 32)[: tracking.DIGEST_CHARS]
    tags = {t.key: t.value for t in inputs["beta"].tags}
    assert tags["sha256"] == "ab" * 32 and tags["mlflow.data.context"] == "training"
    assert json.loads(inputs["pairs"].dataset.profile)["num_rows"] == 3
    assert "data/pairs/filtered.parquet" in inputs["pairs"].dataset.source
    # An experiment made before kinds existed gets the kind on its next run.
    client.delete_experiment_tag(experiment.experiment_id, tracking.EXPERIMENT_KIND_TAG)
    with tracking.start_run("s-m", {}, {"method": "m"}, root=tmp_path, experiment="kind"):
        pass
    assert client.get_experiment_by_name("kind").tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    mlflow.set_tracking_uri(None)


_WRITER = """
import sys
from pathlib import Path
from sp2dpo import tracking
name, steps = sys.argv[1], int(sys.argv[2])
with tracking.start_run(name, {f"p{i}": i for i in range(20)}, {"method": name}, root=Path.cwd()) as tr:
    for step in range(steps):
        tr.log_metrics({"loss": step / steps, "other": float(step)}, step=step)
        tr.set_tags({"last_step": str(step)})
print(tr.run_id)
"""


@pytest.mark.timeout(300)
def test_parallel_writers_share_one_sqlite_store(tmp_path):
    # Two processes (as two DVC queue workers) create the store and log to it at once: each
    # run keeps every param, metric step and tag; neither sees "database is locked".
    (tmp_path / ".git").mkdir()
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {k: v for k, v in tool_env().items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    steps = 40
    procs = [subprocess.Popen([sys.executable, str(script), f"w{i}", str(steps)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for proc, (_, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for i, (out, _) in enumerate(outs):
        run_ = client.get_run(out.strip().splitlines()[-1])
        assert run_.info.run_name == f"w{i}" and run_.info.status == "FINISHED"
        assert len(run_.data.params) == 21 and run_.data.tags["last_step"] == str(steps - 1)
        history = client.get_metric_history(run_.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(steps))
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    assert len(client.search_runs([experiment.experiment_id])) == 2


def test_start_run_logs_pinned_params_and_tags(tmp_path, monkeypatch):
    import mlflow

    db = tmp_path / "m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-test")
    monkeypatch.setenv("MY_KEY", "sk-abcdefghijklmnopqrstu")
    flat = {"train.lora.r": 16, "teachers.0.api_key_env": "MY_KEY", "oops": "sk-abcdefghijklmnopqrstu"}
    pinned = {"method": "sp2dpo", "student": "smollm2", "beta_column": "beta_annotators_mean_ens",
              "beta_artifact_sha256": "ab" * 32}
    with tracking.start_run("smollm2-sp2dpo", flat, pinned, root=Path(__file__).parent,
                            experiment="t") as tr:
        tr.log_metrics({"loss": 0.69, "rewards/margins": 0.1}, step=1)
        tr.log_dict({"a": 1}, "config/x.json")
    got = mlflow.MlflowClient().get_run(tr.run_id)
    assert got.data.params["method"] == "sp2dpo" and got.data.params["train.lora.r"] == "16"
    assert got.data.params["beta_artifact_sha256"] == "ab" * 32
    assert got.data.params["oops"] == tracking.REDACTED
    assert got.data.tags["dvc_exp"] == "exp-test"
    assert len(got.data.tags["git_commit"]) in (40, len("unknown"))
    assert got.data.tags["numerics"] == "pinned"  # the suite runs pinned (importing sp2dpo)
    assert got.data.metrics["rewards/margins"] == pytest.approx(0.1)
    mlflow.set_tracking_uri(None)


def test_log_eval_finds_the_training_run_of_the_adapter(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-eval")
    root = Path(__file__).parent
    runs = {}
    # dpo and sp2dpo with the same adapter bytes (possible: beta_i constant = beta): the method
    # decides which run gets the metrics.
    for method in ("dpo", "sp2dpo"):
        with tracking.start_run(f"smollm2-{method}", {}, {"method": method, "student": "smollm2"},
                                root=root) as tr:
            tr.set_tags({"adapter_sha256": "cd" * 32})
        runs[method] = tr.run_id
    pinned = {"method": "sp2dpo", "student": "smollm2"}
    got = tracking.log_eval("smollm2-sp2dpo", {"alpaca_eval/win_rate": 12.5, "lc": None},
                            adapter_sha="cd" * 32, flat_params={"eval.alpaca_eval.limit": 8},
                            pinned=pinned, root=root)
    assert got == runs["sp2dpo"]
    run_data = mlflow.MlflowClient().get_run(got).data
    assert run_data.metrics["eval/alpaca_eval/win_rate"] == 12.5
    assert "eval/lc" not in run_data.metrics  # None is not logged
    assert run_data.tags["eval_dvc_exp"] == "exp-eval"
    assert "eval/alpaca_eval/win_rate" not in mlflow.MlflowClient().get_run(runs["dpo"]).data.metrics

    # The base student (no adapter) and an adapter whose run is not in the store: runs of their own.
    base = tracking.log_eval("smollm2-base", {"alpaca_eval/win_rate": 3.0}, adapter_sha=None,
                             flat_params={}, pinned={"method": "base", "student": "smollm2"}, root=root)
    other = tracking.log_eval("smollm2-dpo", {"alpaca_eval/win_rate": 4.0}, adapter_sha="ef" * 32,
                              flat_params={}, pinned={"method": "dpo", "student": "smollm2"}, root=root)
    client = mlflow.MlflowClient()
    eval_exp = client.get_experiment_by_name(tracking.EVAL_EXPERIMENT).experiment_id
    assert {client.get_run(r).info.experiment_id for r in (base, other)} == {eval_exp}
    assert client.get_run(base).data.params["method"] == "base"
    assert len({base, other, *runs.values()}) == 4
    mlflow.set_tracking_uri(None)


# --------------------------------------------------------------------------------------------
# end to end: dvc repro of the train matrix, then the MLflow server's REST API
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, endpoint: str, **query) -> dict:
    url = f"{base}{endpoint}?{urllib.parse.urlencode(query)}" if query else f"{base}{endpoint}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _post(base: str, endpoint: str, body: dict) -> dict:
    req = urllib.request.Request(f"{base}{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
@pytest.mark.timeout(1200)  # 56 s alone on 2 cores, 174 s while other jobs ran
def test_dvc_repro_trains_every_method_and_mlflow_server_shows_runs(tmp_path, h4_sample):
    proj = copy_project(tmp_path / "proj")
    run([str(BIN / "dvc"), "pull", "-q", "data.dvc"], cwd=proj)
    run([str(BIN / "dvc"), "repro", "-q", "filter"], cwd=proj)
    # Tiny run settings (the stage code path is the default one).
    params = yaml.safe_load((proj / "params.yaml").read_text())
    params["train"].update({"limit": 2, "max_steps": 2, "max_length": 48, "max_prompt_length": 24})
    params["train"]["students"][0]["per_device_train_batch_size"] = 1
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # A hand-made beta schedule (the annotate/aggregate stages need teachers; not run here).
    pairs = artifacts.read_table(proj / "data/pairs/filtered.parquet")
    ids = pairs["prompt_id"].head(8).tolist()
    beta = proj / "data/beta/beta.csv"
    beta.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"prompt_id": ids, "beta_annotators_mean_ens": [0.05, 0.3, 0.12, 0.2] * 2,
                  "beta_random": [0.25, 0.04, 0.1, 0.15] * 2}).to_csv(beta, index=False)
    stages = ["train@smollm2-dpo", "train@smollm2-sp2dpo", "train@smollm2-rand_beta"]
    run([str(BIN / "dvc"), "repro", "-s", *stages], cwd=proj)
    head = run(["git", "rev-parse", "HEAD"], cwd=proj).stdout.strip()
    sha = artifacts.sha256_file(beta)
    for method in ("dpo", "sp2dpo", "rand_beta"):
        report = json.loads((proj / f"reports/train/smollm2-{method}.json").read_text())
        assert report["global_step"] == 2 and report["n_pairs"] == 2
        assert (proj / f"models/smollm2/{method}/adapter_model.safetensors").exists()
    assert "train@smollm2-sp2dpo" in (proj / "dvc.lock").read_text()

    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{proj / 'mlflow.db'}", "--workers", "1"],
        cwd=proj, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # stop_process also ends its uvicorn workers
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5):
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise AssertionError("mlflow server did not come up") from None
                time.sleep(1)
        exp = _get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=tracking.EXPERIMENT)
        found = _post(base, "/api/2.0/mlflow/runs/search",
                      {"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 50})
        runs = {}
        for r in found["runs"]:
            params_ = {p["key"]: p["value"] for p in r["data"]["params"]}
            tags = {t["key"]: t["value"] for t in r["data"]["tags"]}
            runs[params_["method"]] = (r, params_, tags)
        assert set(runs) == {"dpo", "sp2dpo", "rand_beta"}
        expected_column = {"dpo": "", "sp2dpo": "beta_annotators_mean_ens", "rand_beta": "beta_random"}
        for method, (r, params_, tags) in runs.items():
            assert params_["student"] == "smollm2"
            assert params_.get("beta_column", "") == expected_column[method]
            assert params_["beta_artifact_sha256"] == sha
            assert params_["train.max_steps"] == "2" and "data.revision" in params_
            assert tags["git_commit"] == head
            run_id = r["info"]["run_id"]
            hist = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="loss")
            assert [m["step"] for m in hist["metrics"]] == [1, 2]
            keys = {m["key"] for m in r["data"]["metrics"]}
            assert {"rewards/margins", "rewards/accuracies", "beta/mean", "beta/std"} <= keys
            listed = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=run_id)
            top = {f["path"] for f in listed.get("files", [])}
            assert {"adapter", "config", "beta"} <= top
            adapter = _get(base, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="adapter")
            assert any(f["path"].endswith("adapter_model.safetensors") for f in adapter["files"])
        sp = runs["sp2dpo"][0]
        beta_mean = next(m["value"] for m in sp["data"]["metrics"] if m["key"] == "beta/mean")
        assert 0.05 - 1e-6 <= beta_mean <= 0.3 + 1e-6  # float32 batch statistics
    finally:
        stop_process(server, timeout=30)
