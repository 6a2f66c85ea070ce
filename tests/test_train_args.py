"""Tests for a method's own training settings (``train.methods[].train_args``): the checks that
name the key, the precedence over the student's batch shape and the global keys in the TRL config
the trainer builds, what a run logs to MLflow and writes to its report, and the related papers'
settings in the paper-students profile."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sp2dpo import train
from sp2dpo.core import config
from sp2dpo.core.config import ConfigError
from tests.conftest import PAIRS, SHORT_TEMPLATE, compose_params, pairs_frame

ROOT = Path(__file__).resolve().parents[1]

#: Every key a method may override, each set to a value no default has.
OVERRIDES = {"learning_rate": 1e-6, "warmup_ratio": 0.03, "weight_decay": 0.05,
             "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8,
             "num_train_epochs": 2.0, "seed": 0}


def _params_with(tmp_path: Path, train_args: object, index: int = 1) -> Path:
    """params.yaml with ``train_args`` on ``train.methods[index]`` (sp2dpo in the default)."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["methods"][index]["train_args"] = train_args
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --------------------------------------------------------------------------------------------
# config: keys, types and ranges, each error naming train.methods[i].train_args.KEY
# --------------------------------------------------------------------------------------------


def test_train_args_load_and_default_to_none(tmp_path):
    params = config.load(_params_with(tmp_path, OVERRIDES))
    method = params.train.method("sp2dpo")
    assert method.train_args.overrides() == OVERRIDES
    assert isinstance(method.train_args.num_train_epochs, float)
    assert params.train.method("dpo").train_args.overrides() == {}
    assert config.TRAIN_ARG_KEYS == tuple(OVERRIDES)
    # partial: only the keys given
    assert config.load(_params_with(tmp_path, {"learning_rate": 2e-6})).train.method(
        "sp2dpo").train_args.overrides() == {"learning_rate": 2e-6}
    # the Python API takes a mapping too
    built = config.MethodConfig(name="x", beta=0.1, train_args={"seed": 3})
    assert built.train_args == config.TrainArgs(seed=3)


def test_default_params_carry_no_train_args():
    """The offline default trains as before: no method of params.yaml sets train_args."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert all("train_args" not in m for m in raw["train"]["methods"])
    assert all(not m.train_args.overrides() for m in config.defaults().train.methods)


def test_unknown_train_arg_lists_the_allowed_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"params.yaml: train.methods\[1\].train_args: unknown key\(s\) lr; "
                                          r"allowed: learning_rate, warmup_ratio, weight_decay, "
                                          r"per_device_train_batch_size, gradient_accumulation_steps, "
                                          r"num_train_epochs, seed"):
        config.load(_params_with(tmp_path, {"lr": 1e-6}))
    with pytest.raises(ConfigError, match=r"train.methods\[1\].train_args: expected a mapping, got list"):
        config.load(_params_with(tmp_path, [1e-6]))


@pytest.mark.parametrize(
    ("train_args", "message"),
    [
        ({"learning_rate": "fast"}, r"train.methods\[1\].train_args.learning_rate: expected a number, got 'fast'"),
        ({"learning_rate": -1e-6}, r"train.methods\[1\].train_args.learning_rate must be a positive number"),
        ({"learning_rate": 0}, r"train.methods\[1\].train_args.learning_rate must be a positive number, got 0.0"),
        ({"warmup_ratio": 1.5}, r"train.methods\[1\].train_args.warmup_ratio must be in \[0, 1\)"),
        ({"warmup_ratio": -0.1}, r"train.methods\[1\].train_args.warmup_ratio must be in \[0, 1\)"),
        ({"weight_decay": -0.05}, r"train.methods\[1\].train_args.weight_decay must be a number >= 0"),
        ({"per_device_train_batch_size": 0}, r"train.methods\[1\].train_args.per_device_train_batch_size must be >= 1"),
        ({"per_device_train_batch_size": 2.5},
         r"train.methods\[1\].train_args.per_device_train_batch_size: expected an integer, got 2.5"),
        ({"gradient_accumulation_steps": 0}, r"train.methods\[1\].train_args.gradient_accumulation_steps must be >= 1"),
        ({"num_train_epochs": 0}, r"train.methods\[1\].train_args.num_train_epochs must be a positive number"),
        ({"seed": -1}, r"train.methods\[1\].train_args.seed must be >= 0, got -1"),
        ({"seed": True}, r"train.methods\[1\].train_args.seed: expected an integer, got True"),
    ],
)
def test_bad_train_args_name_the_key(tmp_path, train_args, message):
    with pytest.raises(ConfigError, match=message):
        config.load(_params_with(tmp_path, train_args))


def test_global_keys_take_the_same_ranges(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["warmup_ratio"] = 1.0  # transformers would read 1.0 as one warm-up *step*
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"train.warmup_ratio must be in \[0, 1\)"):
        config.load(tmp_path / "params.yaml")


# --------------------------------------------------------------------------------------------
# precedence: the TRL config the trainer builds
# --------------------------------------------------------------------------------------------


def _cfg(**methods: dict) -> config.TrainConfig:
    student = config.StudentConfig(name="s", per_device_train_batch_size=4, gradient_accumulation_steps=4,
                                   accumulation_by_method={"fast": 2, "plain": 3})
    entries = [config.MethodConfig(name=name, beta=0.1, train_args=args) for name, args in methods.items()]
    return config.TrainConfig(students=[student], methods=entries, learning_rate=5e-6, warmup_ratio=0.1,
                              weight_decay=0.0, num_train_epochs=1.0, seed=42)


def _dpo_config(cfg: config.TrainConfig, method: str, tmp_path: Path):
    return train.make_dpo_config(cfg, cfg.students[0], tmp_path / "out", method, bf16=False, use_cpu=True)


def _settings(args) -> dict:
    return {"learning_rate": args.learning_rate, "warmup_ratio": args.warmup_steps,
            "weight_decay": args.weight_decay, "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_train_epochs": args.num_train_epochs, "seed": args.seed}


def test_a_method_override_wins_over_the_student_and_the_globals(tmp_path):
    """`fast` sets every key: its accumulation 8 wins over the student's accumulation_by_method
    (2) and its batch 2 over the student's 4; `plain` keeps the student's and the globals."""
    cfg = _cfg(fast=OVERRIDES, plain={})
    assert _settings(_dpo_config(cfg, "fast", tmp_path)) == OVERRIDES
    assert cfg.run_args(cfg.students[0], "fast") == OVERRIDES
    assert _settings(_dpo_config(cfg, "plain", tmp_path)) == {
        "learning_rate": 5e-6, "warmup_ratio": 0.1, "weight_decay": 0.0, "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 3, "num_train_epochs": 1.0, "seed": 42}


def test_a_partial_override_keeps_the_rest(tmp_path):
    cfg = _cfg(fast={"learning_rate": 1e-6, "per_device_train_batch_size": 1})
    got = _settings(_dpo_config(cfg, "fast", tmp_path))
    assert got == {"learning_rate": 1e-6, "warmup_ratio": 0.1, "weight_decay": 0.0,
                   "per_device_train_batch_size": 1, "gradient_accumulation_steps": 2,  # accumulation_by_method
                   "num_train_epochs": 1.0, "seed": 42}
    # a name that is no configured method: the student's and the globals (as before)
    assert _settings(_dpo_config(cfg, "other", tmp_path))["gradient_accumulation_steps"] == 4


# --------------------------------------------------------------------------------------------
# a run: MLflow params and the report JSON carry the overrides
# --------------------------------------------------------------------------------------------


def test_a_run_logs_its_overrides_to_mlflow_and_the_report(tmp_path, monkeypatch, tiny_student):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder, ./mlruns, lands here
    pairs = tmp_path / "pairs.parquet"
    pairs_frame().to_parquet(pairs, index=False)
    beta = tmp_path / "beta.csv"
    pd.DataFrame({"prompt_id": [p[0] for p in PAIRS], "prompt_variant_count": 3,
                  "beta_annotators_mean_ens": [0.1] * len(PAIRS)}).to_csv(beta, index=False)
    fast = {"learning_rate": 1e-6, "warmup_ratio": 0.03, "weight_decay": 0.05,
            "per_device_train_batch_size": 3, "gradient_accumulation_steps": 1, "seed": 0}
    cfg = config.TrainConfig(
        students=[config.StudentConfig(name="tiny", model=str(tiny_student), chat_template=SHORT_TEMPLATE)],
        methods=[config.MethodConfig(name="fast", beta=0.1, train_args=fast), config.MethodConfig(name="dpo", beta=0.1)],
        max_steps=1, max_length=32, max_prompt_length=16, precision="fp32",
    )
    reports = {}
    for name in ("fast", "dpo"):
        paths = train.TrainPaths(pairs=pairs, beta=beta, adapter=tmp_path / name, report=tmp_path / f"{name}.json",
                                 curve=tmp_path / f"{name}.csv")
        metrics = train.run(cfg, config.BetaConfig(), "tiny", name, paths)
        run = mlflow.MlflowClient().get_run(metrics["mlflow_run_id"])
        reports[name] = (json.loads(paths.report.read_text()), run.data.params)
        resolved = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/config/resolved_train_config.json"))
        if name == "fast":
            assert resolved["train_args"] == fast
            dpo_config = resolved["dpo_config"]
            assert (dpo_config["learning_rate"], dpo_config["warmup_steps"], dpo_config["weight_decay"],
                    dpo_config["per_device_train_batch_size"], dpo_config["seed"]) == (1e-6, 0.03, 0.05, 3, 0)
    mlflow.set_tracking_uri(None)
    report, params = reports["fast"]
    assert report["train_args"] == fast
    assert {k: v for k, v in params.items() if k.startswith("train_args.")} == {
        f"train_args.{k}": str(v) for k, v in fast.items()}
    assert params["train.methods.0.train_args.learning_rate"] == "1e-06"
    report, params = reports["dpo"]
    assert "train_args" not in report  # a method without overrides: the report as before
    assert not any(k.startswith("train_args.") for k in params)
    assert not any(k.startswith("train.methods.1.train_args") for k in params)


# --------------------------------------------------------------------------------------------
# the paper-students profile: the related papers' methods at their sources' settings
# --------------------------------------------------------------------------------------------

#: Each related paper's method: (learning rate, warm-up ratio, weight decay, per-device batch,
#: accumulation, global batch on the profile's 4 GPUs), as its source states them (weight decay
#: 0.0 where the source leaves it open: the profile's own value). PMO states none of them: the
#: profile's shared settings and the student's batch shape.
PAPER_METHODS = {
    "dpo_pop_iter": (1e-6, 0.03, 0.05, 2, 8, 64),  # DPO-PoP App. B, Table 6
    "dpo_pop_random": (1e-6, 0.03, 0.05, 2, 8, 64),
    "dpo_margin_gt": (1e-6, 0.03, 0.05, 2, 8, 64),
    "scaled_bt_gt": (1e-6, 0.03, 0.05, 2, 8, 64),
    "sgdpo": (5e-7, 0.1, 0.0, 4, 8, 128),  # SGDPO App. A.2, Table 2 (PO row)
    "simpo": (1e-6, 0.1, 0.0, 2, 16, 128),  # SimPO's Llama-3-8B-Instruct recipe
}


def test_paper_students_profile_gives_each_related_method_its_sources_settings(tmp_path):
    """What `dvc exp run -S '+profiles=paper-students'` resolves for every related paper's method:
    the composed params (DVC's own Hydra composition), the run settings, and the DPOConfig the
    trainer builds for each student; the global batch is per-device x accumulation x the GPUs of
    the profile's accelerate config."""
    params = compose_params(tmp_path, ["+profiles=paper-students"])
    cfg = params.train
    assert cfg.seed == 0 and params.beta.seed == 42  # the paper's runners; Rand-beta's draw stays
    launcher = cfg.launcher.split("--config_file ")[1].split()[0]
    gpus = yaml.safe_load((ROOT / launcher).read_text())["num_processes"]
    assert gpus == 4
    for name, (lr, warmup, decay, per_device, accumulation, batch) in PAPER_METHODS.items():
        assert per_device * accumulation * gpus == batch, name
        for student in cfg.students:
            args = train.make_dpo_config(cfg, student, tmp_path / "out", name, bf16=False, optim="adamw_torch",
                                         use_cpu=True)
            got = (args.learning_rate, args.warmup_steps, args.weight_decay, args.per_device_train_batch_size,
                   args.gradient_accumulation_steps)
            assert got == (lr, warmup, decay, per_device, accumulation), (name, student.name)
            assert (args.num_train_epochs, args.seed, args.lr_scheduler_type) == (1.0, 0, "cosine")
    # PMO states no optimiser setting: the profile's shared ones and each student's batch shape
    for name in ("pmo", "sp2dpo_pmo", "sp2dpo", "dpo_b01"):
        assert cfg.method(name).train_args.overrides() == {}, name
    qwen = cfg.run_args(cfg.student("qwen3_4b"), "pmo")
    assert (qwen["learning_rate"], qwen["per_device_train_batch_size"], qwen["gradient_accumulation_steps"]) == (
        5e-6, 8, 2)
