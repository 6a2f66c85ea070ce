"""Tests for sp2dpo.train: beta_i reaches the loss through TRL's data path, equals TRL's DPO when
constant, and every broken beta artifact stops training before the first step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from sp2dpo import train
from sp2dpo.core import config
from sp2dpo.core.beta import BetaError, read_beta_column
from sp2dpo.train import BETA_COLUMN
from sp2dpo.train.dataset import to_preference_dataset
from tests.conftest import PAIRS, compose_params, pairs_frame

ROOT = Path(__file__).resolve().parents[1]
def write_beta_csv(path: Path, ids, **columns) -> Path:
    frame = pd.DataFrame({"prompt_id": list(ids), "prompt_variant_count": 3, **columns})
    frame.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------------------------
# beta artifact checks (no model)
# --------------------------------------------------------------------------------------------


def test_read_beta_column_and_attach(tmp_path):
    ids = [p[0] for p in PAIRS]
    path = write_beta_csv(tmp_path / "beta.csv", ids, beta_annotators_mean_ens=np.linspace(0.03, 0.3, 6))
    beta = read_beta_column(path, "beta_annotators_mean_ens", 0.03, 0.3)
    out = train.attach_beta(pairs_frame(), beta)
    assert out[BETA_COLUMN].tolist() == pytest.approx(np.linspace(0.03, 0.3, 6).tolist())
    ds = to_preference_dataset(out)
    assert ds[0]["prompt"] == [{"role": "user", "content": PAIRS[0][1]}]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": PAIRS[0][2]}]
    assert ds.features[BETA_COLUMN].dtype == "float64"
    assert train.attach_beta(pairs_frame(), 0.1)[BETA_COLUMN].eq(0.1).all()


def test_missing_or_misnamed_column_is_a_clear_error(tmp_path):
    path = write_beta_csv(tmp_path / "beta.csv", ["p0"], beta_qwen_ens=[0.1], beta_random=[0.2])
    with pytest.raises(BetaError, match=r"'beta_annotators_mean_ens' not found.*beta_qwen_ens, beta_random"):
        read_beta_column(path, "beta_annotators_mean_ens", 0.03, 0.3)
    with pytest.raises(BetaError, match="not found"):
        read_beta_column(tmp_path / "nope.csv", "beta_random", 0.03, 0.3)


@pytest.mark.parametrize("bad", [0.5, 0.01, float("inf")])
def test_out_of_envelope_is_a_clear_error(tmp_path, bad):
    path = write_beta_csv(tmp_path / "beta.csv", ["p0", "p1"], beta_random=[0.1, bad])
    with pytest.raises(BetaError, match=r"outside the envelope \[0.03, 0.3\].*p1"):
        read_beta_column(path, "beta_random", 0.03, 0.3)


def test_uncovered_pairs_error_or_drop(tmp_path):
    path = write_beta_csv(tmp_path / "beta.csv", ["p0", "p1", "p2"], beta_random=[0.1, None, 0.2])
    beta = read_beta_column(path, "beta_random", 0.03, 0.3)
    with pytest.raises(BetaError, match=r"4 of 6 training pair\(s\) have no beta.*p1, p3, p4, p5.*drop_missing_beta"):
        train.attach_beta(pairs_frame(), beta)
    kept = train.attach_beta(pairs_frame(), beta, drop_missing=True)
    assert kept["prompt_id"].tolist() == ["p0", "p2"]


def test_duplicate_prompt_ids_rejected(tmp_path):
    path = write_beta_csv(tmp_path / "beta.csv", ["p0", "p0"], beta_random=[0.1, 0.2])
    with pytest.raises(BetaError, match="duplicate"):
        read_beta_column(path, "beta_random", 0.03, 0.3)


def _project(tmp_path: Path, method_column: str, beta_csv_ids, values) -> tuple[Path, train.TrainPaths]:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["drop_missing_beta"] = False  # the strict mode: a pair without beta is an error
    for m in raw["train"]["methods"]:
        if m["name"] == "sp2dpo":
            m["beta_column"] = method_column
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    pairs = tmp_path / "filtered.parquet"
    pairs_frame().to_parquet(pairs, index=False)
    beta = write_beta_csv(tmp_path / "beta.csv", beta_csv_ids, beta_annotators_mean_ens=values)
    paths = train.TrainPaths(pairs=pairs, beta=beta, adapter=tmp_path / "adapter", report=tmp_path / "r.json",
                             curve=tmp_path / "curve.csv")
    return params, paths


@pytest.mark.parametrize(
    ("column", "ids", "values", "match"),
    [
        ("beta_annotators_mean_ensemble", [p[0] for p in PAIRS], [0.1] * 6, "not found"),
        ("beta_annotators_mean_ens", [p[0] for p in PAIRS], [0.1] * 5 + [0.9], "outside the envelope"),
        ("beta_annotators_mean_ens", [p[0] for p in PAIRS][:4], [0.1] * 4, "2 of 6 training pair"),
    ],
)
def test_run_stops_before_loading_the_model(tmp_path, monkeypatch, column, ids, values, match):
    params, paths = _project(tmp_path, column, ids, values)

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the beta checks")

    monkeypatch.setattr(train.stage, "load_student", boom)
    p = config.load(params)
    with pytest.raises(BetaError, match=match):
        train.run(p.train, p.beta, "smollm2", "sp2dpo", paths, track=False)
    assert not paths.report.exists()


def test_method_config_defaults_and_checks():
    assert config.MethodConfig(name="sp2dpo").beta_column == "beta_annotators_mean_ens"
    assert config.MethodConfig(name="rand_beta").beta_column == "beta_random"
    se = config.MethodConfig(name="se_qwen", beta_column="beta_qwen_ens")
    assert (se.loss, se.per_pair, se.args) == ("sigmoid", True, config.LOSS_SPECS["sigmoid"].args())
    pmo = config.MethodConfig(name="pmo", loss="pmo", beta=0.05, loss_args={"alpha": 0.9})
    assert pmo.args.alpha == 0.9 and not pmo.per_pair
    assert config.MethodConfig(name="pop", loss="dpo_pop", beta=0.1).args.k == 2  # no loss_args: defaults
    with pytest.raises(config.ConfigError, match=r"needs `beta` .* or `beta_column`"):
        config.MethodConfig(name="dpo")
    with pytest.raises(config.ConfigError, match="not both"):
        config.MethodConfig(name="x", beta=0.1, beta_column="beta_random")
    with pytest.raises(config.ConfigError, match="positive"):
        config.MethodConfig(name="x", beta=-0.1)
    with pytest.raises(config.ConfigError, match="no '-'"):
        config.MethodConfig(name="dpo-b03", beta=0.3)
    with pytest.raises(config.ConfigError, match=r"unknown loss 'dpo2'; choose one of sigmoid, ipo"):
        config.MethodConfig(name="x", loss="dpo2", beta=0.1)
    with pytest.raises(config.ConfigError, match=r"loss_args: unknown key\(s\) alpah; allowed: alpha"):
        config.MethodConfig(name="x", loss="pmo", beta=0.1, loss_args={"alpah": 1})
    with pytest.raises(config.ConfigError, match=r"r2 must be in \(0.0, 1.0\]"):
        config.MethodConfig(name="x", loss="sgdpo", beta=0.1, loss_args={"r2": 1.5})


def test_a_loss_that_cannot_use_a_per_pair_beta_refuses_a_beta_column(tmp_path):
    with pytest.raises(config.ConfigError, match=r"beta_bdpo\]: loss 'beta_dpo' cannot use a per-pair beta"):
        config.MethodConfig(name="beta_bdpo", loss="beta_dpo", beta_column="beta_annotators_mean_ens")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["train"]["methods"].append({"name": "bd", "loss": "beta_dpo", "beta_column": "beta_random"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match=r"params.yaml: train.methods\[\d+\]: .*cannot use a per-pair beta"):
        config.load(tmp_path / "params.yaml")
    raw["train"]["methods"][-1] = {"name": "bd", "type": "dpo", "beta": 0.1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError, match=r"unknown key\(s\) type; allowed: name, loss, beta, beta_column"):
        config.load(tmp_path / "params.yaml")


def test_paper_students_profile_composes_the_paper_settings(tmp_path):
    params = compose_params(tmp_path, ["+profiles=paper-students"])
    cfg = params.train
    assert [s.name for s in cfg.students] == ["qwen3_4b", "gemma3_4b", "mistral7b", "llama31_8b"]
    assert params.matrix.students == [s.name for s in cfg.students]
    assert (cfg.max_length, cfg.max_prompt_length, cfg.num_train_epochs) == (2048, 1536, 1.0)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.05)
    assert cfg.optim == "paged_adamw_32bit" and cfg.precision == "bf16" and cfg.gradient_checkpointing
    assert cfg.lr_scheduler_type == "cosine" and cfg.warmup_ratio == 0.1
    assert cfg.launcher.startswith("accelerate launch --config_file configs/accelerate/ddp-4gpu.yaml")
    assert (ROOT / "configs/accelerate/ddp-4gpu.yaml").is_file()
    gemma = cfg.student("gemma3_4b")
    assert (gemma.per_device_train_batch_size, gemma.accumulation("sp2dpo"), gemma.accumulation("dpo_b01")) == (4, 4, 2)
    assert {m.beta for m in cfg.methods if m.loss == "sigmoid" and not m.per_pair} == {0.1, 0.3, 0.5}
    pop = cfg.method("dpo_pop_iter")
    assert (pop.args.k, pop.args.min_margin_diff, pop.args.max_margin, pop.args.margin_source) == (2, 1.0, 10.0, "scores")
    args = train.make_dpo_config(cfg, cfg.student("qwen3_4b"), ROOT / "build" / "x", "sp2dpo", bf16=False,
                                 optim="adamw_torch", use_cpu=True)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.max_length) == (8, 2, 2048)


def test_full_artifact_from_the_aggregate_stage_is_validated(tmp_path):
    """An artifact in the aggregate stage's layout goes through core.beta.read_beta_artifact."""
    from sp2dpo.aggregate import aggregate
    from sp2dpo.aggregate.table import write_csv

    wanted = {"p0": 0.03, "p1": 0.3, "p2": 0.165}
    calls = pd.DataFrame(
        [
            {"prompt_id": pid, "annotator": "q", "variant": v, "category": "Style",
             "magnitude": (b - 0.03) / 0.27, "confidence": 1.0}
            for pid, b in wanted.items() for v in ("v1", "v2", "v3")
        ]
    )
    path = tmp_path / "beta.csv"
    write_csv(aggregate(calls, config.AggregateConfig(), config.BetaConfig()).frame, path)
    beta = read_beta_column(path, "beta_annotators_mean_ens", 0.03, 0.3)
    assert beta.to_dict() == pytest.approx(wanted)
    assert read_beta_column(path, "beta_q_ens", 0.03, 0.3).to_dict() == pytest.approx(wanted)
    with pytest.raises(BetaError, match="invalid beta artifact"):
        read_beta_column(path, "beta_annotators_mean_ens", 0.05, 0.3)
    with pytest.raises(BetaError, match="beta_annotators_mean_ensemble' not found"):
        read_beta_column(path, "beta_annotators_mean_ensemble", 0.03, 0.3)


def test_normalize_adapter_dir_makes_saved_adapters_byte_stable(tmp_path):
    """PEFT serialises target_modules from a set (order varies between processes) and Trainer
    pickles its scratch dir into training_args.bin; both would change the adapter's bytes."""
    import json as _json

    from sp2dpo.train import normalize_adapter_dir

    outs = []
    for order in (["v_proj", "q_proj", "up_proj"], ["up_proj", "v_proj", "q_proj"]):
        d = tmp_path / "-".join(order)
        d.mkdir()
        (d / "adapter_config.json").write_text(_json.dumps({"r": 16, "target_modules": order, "layers_pattern": None}))
        (d / "training_args.bin").write_bytes(b"pickle with a tmp path")
        (d / "tokenizer.json").write_text("{}")
        normalize_adapter_dir(d, base_model="local:smollm2-135m-instruct", card="# card\n")
        assert not (d / "training_args.bin").exists() and not (d / "tokenizer.json").exists()
        assert (d / "README.md").read_text() == "# card\n"
        outs.append((d / "adapter_config.json").read_bytes())
    assert outs[0] == outs[1]
    assert _json.loads(outs[0])["target_modules"] == ["q_proj", "up_proj", "v_proj"]
    # the base model is the student's spec, not the folder it was loaded from on this machine
    assert _json.loads(outs[0])["base_model_name_or_path"] == "local:smollm2-135m-instruct"


def test_drop_missing_beta_gives_every_method_the_same_covered_pairs(tmp_path):
    """With drop_missing_beta (the paper's rule, the default) global-beta DPO trains on exactly
    the pairs the artifact covers, like sp2dpo and rand_beta, not on the larger filtered set."""
    ids = [p[0] for p in PAIRS]
    params, paths = _project(tmp_path, "beta_annotators_mean_ens", ids[:4], [0.1, 0.2, 0.15, 0.3])
    raw = yaml.safe_load(params.read_text())
    raw["train"]["drop_missing_beta"] = True
    params.write_text(yaml.safe_dump(raw))
    cfg = config.load(params).train
    seen = {}
    for name in ("dpo", "sp2dpo"):
        method = next(m for m in cfg.methods if m.name == name)
        dataset, info = train.build_dataset(cfg, method, paths.pairs, paths.beta, (0.03, 0.3))
        seen[name] = sorted(dataset["prompt_id"]) if "prompt_id" in dataset.column_names else info["n_pairs"]
        assert (info["n_pairs_in"], info["n_pairs"]) == (4, 4)
    assert seen["dpo"] == seen["sp2dpo"]
