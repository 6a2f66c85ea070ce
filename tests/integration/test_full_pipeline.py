"""The whole offline DAG from a fresh copy: fetch -> ... -> eval -> report, then `dvc exp run -S` on
an aggregation parameter (re-runs aggregate and what follows it, never annotate), and `sp2dpo
verify` on a commit that changes that parameter without re-running: its from-scratch re-run in a
clone gives every output byte for byte as the two runs made it (the ones the parameter leaves
alone as the first run, the others as the experiment), so it names exactly the outputs the change
moves. (`verify` of an unchanged commit, exit 0 and its text output, is tests/test_audit_verify.py's
tiny project: a second from-scratch run of this DAG would prove nothing more.)"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest
import yaml

from sp2dpo.core import artifacts
from tests.conftest import copy_project, run

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
METHODS = ("base", "dpo", "sp2dpo")
EVAL_CALLS = "data/eval_calls/smollm2"


def _out_md5s(lock_text: str) -> dict[str, str | None]:
    """Every output of a dvc.lock (cached or not) by path -> md5."""
    stages = (yaml.safe_load(lock_text) or {}).get("stages", {})
    return {o["path"]: o.get("md5") for entry in stages.values() for o in entry.get("outs", [])}


def _verify(repo: Path, work: Path, *extra: str):
    proc = run([str(BIN / "sp2dpo"), "verify", "HEAD", "--workdir", str(work), *extra], cwd=repo,
               check=False, timeout=1500)
    assert proc.returncode in (0, 1, 4), f"verify failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc


def _stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def _changed_by_code(repo: Path, path: str, old: str, new: str) -> dict[str, set[str]]:
    """Edit a source file, ask `dvc status` which stages changed (and which deps), restore it."""
    source = repo / path
    original = source.read_bytes()
    text = original.decode()
    assert old in text, f"{path} no longer contains {old!r}"
    source.write_text(text.replace(old, new, 1))
    try:
        status = json.loads(run([DVC, "status", "--json"], cwd=repo).stdout)
    finally:
        source.write_bytes(original)
    changed = {}
    for stage, entries in status.items():
        deps = {d for e in entries if isinstance(e, dict) for d in e.get("changed deps", {})}
        if deps:
            changed[stage] = deps
    return changed


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_offline_dag_end_to_end_then_exp_run_and_verify_on_an_aggregation_param(tmp_path):
    repo = copy_project(tmp_path / "repo")
    run([DVC, "pull", "-q", "data.dvc", "evalsets.dvc"], cwd=repo)
    # The recorded teacher calls, as the README's run pulls them: the four pairs below are among
    # the default's eight (a larger max_pairs keeps every smaller subset), so annotate answers
    # from the store (tests/test_annotate_dvc.py runs the local teachers through DVC).
    run([DVC, "pull", "-q", "data/annotate/calls"], cwd=repo)
    # The default code path with smaller numbers (2 CPU cores), and two of its three methods:
    # the global beta and beta_i (rand_beta is one more adapter through the same code, trained
    # and evaluated in every run of the DAG here; the README's run, tests/integration/
    # test_reproduce.py, trains and evaluates all three).
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["matrix"]["methods"] = ["dpo", "sp2dpo"]
    params["annotate"]["max_pairs"] = 4
    params["train"].update({"max_steps": 2, "max_length": 48, "max_prompt_length": 24})
    params["eval"]["alpaca_eval"]["limit"] = 3
    params["eval"]["ifeval"].update({"limit": 3, "max_new_tokens": 24})
    params["eval"]["generation"]["max_new_tokens"] = 24
    params["eval"]["mt_bench"].update({"limit": 2, "max_new_tokens": 24})
    params["eval"]["arena_hard"].update({"limit": 2, "max_new_tokens": 24, "bootstrap_rounds": 20})
    params["eval"]["prefeval"].update({"limit": 4, "max_length": 128, "max_prompt_length": 64})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run([*git, "commit", "-qam", "small"], cwd=repo)

    first = run([DVC, "repro"], cwd=repo, timeout=1800).stdout
    assert _stages_run(first) == {
        "fetch", "filter", "annotate", "aggregate", "train@smollm2-dpo", "train@smollm2-sp2dpo",
        "eval@smollm2", "report",
    }

    curve = (repo / "reports/train/smollm2-sp2dpo_loss.csv").read_text().splitlines()
    assert curve[0] == "step,loss,rewards_margins,rewards_accuracies"
    assert [line.split(",")[0] for line in curve[1:]] == ["1", "2"]  # one row per optimizer step

    reference = json.loads(gzip.decompress((repo / "data/evalsets/alpaca_eval/gpt4_1106_preview.json.gz").read_bytes()))
    ref_by_instruction = {r["instruction"]: r["output"] for r in reference}
    for method in METHODS:
        folder = repo / "data/eval/smollm2" / method
        outputs = json.loads((folder / "model_outputs.json").read_text())
        assert len(outputs) == 3
        assert {o["generator"] for o in outputs} == {f"smollm2-{method}"}
        assert all(o["instruction"] in ref_by_instruction and o["output"] for o in outputs)
        annotations = json.loads((folder / "annotations.json").read_text())
        assert len(annotations) == 3
        for a in annotations:
            assert a["generator_1"] == "gpt4_1106_preview" and a["generator_2"] == f"smollm2-{method}"
            assert a["output_1"] == ref_by_instruction[a["instruction"]]
            assert 1.0 <= a["preference"] <= 2.0
            assert "time_per_example" not in a  # measured times go to MLflow and logs/, not here
        assert len((folder / "ifeval.jsonl").read_text().splitlines()) == 3

    report = json.loads((repo / "reports/eval/smollm2.json").read_text())
    assert set(report["methods"]) == set(METHODS)
    for method in METHODS:
        ae = report["methods"][method]["alpaca_eval"]
        assert 0.0 <= ae["win_rate"] <= 100.0 and ae["n_total"] == 3
        assert ae["lc_is_offline_estimate"] is True
        assert 0.0 <= report["methods"][method]["ifeval"]["prompt_level_strict_acc"] <= 1.0
    # All four suites ran, reported in the paper's order, and each re-scores from its files.
    assert report["suites"] == ["alpaca_eval", "mt_bench", "ifeval", "arena_hard"]
    for method in METHODS:
        entry = report["methods"][method]
        assert {"alpaca_eval", "mt_bench", "ifeval", "arena_hard"} <= set(entry)
        mt = entry["mt_bench"]
        assert mt["n"] == 4 and 1.0 <= mt["score"] <= 10.0 and mt["n_failed"] == 0
        ah = entry["arena_hard"]
        assert sum(ah["verdicts"].values()) == 4 and 0.0 <= ah["score"] <= 100.0
        assert ah["ci"][0] <= ah["score"] <= ah["ci"][1]
    # The held-out preference accuracy: the base model is its own reference (0.5, zero margins).
    assert report["methods"]["base"]["prefeval"]["accuracy"] == 0.5
    assert report["methods"]["base"]["prefeval"]["mean_margin"] == 0.0
    assert all(report["methods"][m]["prefeval"]["n"] == 4 for m in METHODS)
    mt_cli = json.loads(run([str(BIN / "sp2dpo"), "mtbench", "--json", "--judgments",
                             "data/eval/smollm2/sp2dpo/mt_bench_judgments.jsonl"], cwd=repo).stdout)
    assert mt_cli["smollm2-sp2dpo"]["score"] == pytest.approx(report["methods"]["sp2dpo"]["mt_bench"]["score"])
    ah_cli = json.loads(run([str(BIN / "sp2dpo"), "arenahard", "--json", "--rounds", "20", "--judgments",
                             *[f"data/eval/smollm2/{m}/arena_hard_judgments.jsonl" for m in METHODS]],
                            cwd=repo).stdout)
    assert ah_cli["smollm2-dpo"]["score"] == pytest.approx(report["methods"]["dpo"]["arena_hard"]["score"])
    # Every answer and judge call is in the eval call store once; the estimate finds nothing left.
    estimate = json.loads(run([str(BIN / "sp2dpo"), "eval", "smollm2", "--estimate"], cwd=repo).stdout)
    assert estimate["answers_to_generate"] == 0 and estimate["total"]["calls"] == 0
    # The pinned command recomputes the stage's numbers from the saved annotations.
    again = json.loads(run([str(BIN / "sp2dpo"), "winrate", "--json", "--annotations",
                            "data/eval/smollm2/sp2dpo/annotations.json"], cwd=repo).stdout)
    assert again["win_rate"] == pytest.approx(report["methods"]["sp2dpo"]["alpaca_eval"]["win_rate"], abs=1e-9)

    table = (repo / "reports/eval.md").read_text()
    assert "| Method | smollm2 LC | smollm2 WR |" in table
    order = [table.index(h) for h in ("AlpacaEval 2.0", "MT-Bench", "IFEval", "Arena-Hard-Auto")]
    assert order == sorted(order)
    assert "| Base (instruction-tuned) |" in table and "| SP²DPO (JMAMP) |" in table
    assert "offline estimate" in table
    combined = json.loads((repo / "reports/eval.json").read_text())
    assert set(combined["smollm2"]["methods"]) == set(METHODS)
    index = (repo / "reports/index.md").read_text()
    assert "eval.md" in index and "aggregate/beta_distribution.png" in index

    # Eval metrics land in each adapter's MLflow training run (found by the adapter's hash).
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    train_exp = client.get_experiment_by_name("sp2dpo-train")
    for method in ("dpo", "sp2dpo"):
        sha = artifacts.sha256_file(repo / f"models/smollm2/{method}/adapter_model.safetensors")
        runs = client.search_runs([train_exp.experiment_id],
                                  f"tags.adapter_sha256 = '{sha}' and params.method = '{method}'")
        assert len(runs) == 1
        assert "eval/alpaca_eval/win_rate" in runs[0].data.metrics
        assert "eval/ifeval/prompt_level_strict_acc" in runs[0].data.metrics
        assert {"eval/mt_bench/score", "eval/arena_hard/score", "eval/arena_hard/ci_low",
                "eval/prefeval/accuracy", "eval/prefeval/accuracy_ci_low"} <= set(runs[0].data.metrics)
        assert runs[0].data.params["method.loss"] == "sigmoid"
    # beta_i reached the weights: the per-pair and the global-beta adapters differ
    from safetensors.torch import load_file

    sp, dpo = (load_file(repo / f"models/smollm2/{m}/adapter_model.safetensors") for m in ("sp2dpo", "dpo"))
    assert sp.keys() == dpo.keys()
    assert max(float((sp[k] - dpo[k]).abs().max()) for k in sp) > 0
    base_runs = client.search_runs([client.get_experiment_by_name("sp2dpo-eval").experiment_id])
    assert [r.info.run_name for r in base_runs] == ["smollm2-base"]

    # Re-running changes nothing; the pipeline is clean.
    assert _stages_run(run([DVC, "repro"], cwd=repo).stdout) == set()
    run([DVC, "push", "-q"], cwd=repo)  # the outputs in the bundled remote, committed with them
    run([*git, "add", "-A"], cwd=repo)
    run([*git, "commit", "-qm", "baseline run"], cwd=repo)
    assert json.loads(run([DVC, "status", "--json"], cwd=repo).stdout) == {}
    baseline = _out_md5s((repo / "dvc.lock").read_text())

    # Code changes mark exactly the stages that run the code: a core default reaches every stage
    # (all read their params through it), the HTTP client only the two stages that call LLMs,
    # the judge only eval, and nothing stays silently up to date.
    every = {"fetch", "filter", "annotate", "aggregate", "train@smollm2-dpo", "train@smollm2-sp2dpo",
             "eval@smollm2", "report"}
    core = _changed_by_code(repo, "src/sp2dpo/core/config/aggregate.py",
                            "huber_delta: float = field(\n        0.05,", "huber_delta: float = field(\n        0.06,")
    assert set(core) == every and all("src/sp2dpo/core" in deps for deps in core.values())
    client = _changed_by_code(repo, "src/sp2dpo/llm/client.py", "MAX_RAW_CHARS = 8000", "MAX_RAW_CHARS = 9000")
    assert set(client) == {"annotate", "eval@smollm2"}
    judge = _changed_by_code(repo, "src/sp2dpo/evaluate/judges/pairwise.py", "DRAW = 1.5", "DRAW = 1.25")
    assert judge == {"eval@smollm2": {"src/sp2dpo/evaluate"}}
    losses = _changed_by_code(repo, "src/sp2dpo/train/losses.py", "import torch\n", "import torch  # x\n")
    assert set(losses) == {"train@smollm2-dpo", "train@smollm2-sp2dpo"}
    assert json.loads(run([DVC, "status", "--json"], cwd=repo).stdout) == {}
    beta_before = (repo / "data/beta/beta.csv").read_bytes()

    # An aggregation parameter: aggregate and everything after it re-run; annotate does not.
    exp = run([DVC, "exp", "run", "-S", "aggregate.prompt_operator=weighted_mean"], cwd=repo,
              timeout=1800).stdout
    ran = _stages_run(exp)
    assert "annotate" not in ran and "fetch" not in ran and "filter" not in ran
    assert "aggregate" in ran
    assert (repo / "data/beta/beta.csv").read_bytes() != beta_before  # the schedule changed ...
    assert {"train@smollm2-sp2dpo", "eval@smollm2", "report"} <= ran
    # ... and the comparison tools see it.
    params_diff = run([DVC, "params", "diff", "--json"], cwd=repo).stdout
    assert "aggregate.prompt_operator" in params_diff
    metrics_diff = json.loads(run([DVC, "metrics", "diff", "--json"], cwd=repo).stdout)
    assert "reports/aggregate.json" in metrics_diff
    audit = json.loads(run([str(BIN / "sp2dpo"), "audit", "diff", "HEAD:data/beta/beta.csv",
                            "data/beta/beta.csv", "--json"], cwd=repo).stdout)
    assert audit["common"] == audit["n_old"] == audit["n_new"] and audit["max_abs_change"] > 0

    # A commit that changes the param without re-running (its dvc.lock still records the old
    # outputs): verify fails and names exactly the outputs the experiment above moved.
    after = _out_md5s((repo / "dvc.lock").read_text())
    moved = {path for path, md5 in baseline.items() if after.get(path) != md5}
    assert {"data/beta/beta.csv", "reports/aggregate.json", "models/smollm2/sp2dpo"} <= moved
    assert "data/annotate/calls.parquet" not in moved and "models/smollm2/dpo" not in moved
    run(["git", "checkout", "HEAD", "--", "dvc.lock"], cwd=repo)
    run([*git, "commit", "-qm", "weighted_mean, not re-run", "--", "params.yaml", "dvc.lock"], cwd=repo)
    # An auditor re-runs that commit from scratch in a clone.
    work = tmp_path / "verify"
    status_before = run(["git", "status", "--porcelain"], cwd=repo).stdout
    changed = _verify(repo, work, "--json")
    assert changed.returncode == 1
    assert list(work.iterdir()) == []  # the clone is gone
    assert run(["git", "status", "--porcelain"], cwd=repo).stdout == status_before  # nothing written here
    result = json.loads(changed.stdout)
    assert result["identical"] is False and [o["path"] for o in result["outputs"]] == sorted(baseline)
    # Every output of the re-run is the same bytes as one of the runs above made it: the ones the
    # parameter leaves alone as the first run (identical to the commit's lock), the others as
    # the experiment; so verify names exactly the outputs the experiment moved. (Not the eval
    # call store: the workspace's kept the first run's calls beside the experiment's, the
    # clone's holds its own run's only.)
    reran = {o["path"]: o["actual_md5"] for o in result["outputs"]}
    assert reran.pop(EVAL_CALLS) != after.pop(EVAL_CALLS)
    assert reran == after
    assert {o["path"] for o in result["outputs"] if o["status"] != "identical"} == moved
    assert result["verdict"] == "differs"
    by_path = {o["path"]: o for o in result["outputs"]}
    beta = by_path["data/beta/beta.csv"]
    assert beta["stage"] == "aggregate" and beta["expected_md5"] == baseline["data/beta/beta.csv"]
    assert beta["actual_md5"] == after["data/beta/beta.csv"]  # the re-run at REV = the experiment
    assert beta["detail"].startswith("beta artifact: pairs 4 -> 4 (+0 -0), ")
    assert "adapter_model.safetensors" in by_path["models/smollm2/sp2dpo"]["detail"]
