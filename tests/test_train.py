"""Tests for sp2dpo.train: beta_i reaches the loss through TRL's data path, equals TRL's DPO when
constant, and every broken beta artifact stops training before the first step."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from trl import DPOConfig

from sp2dpo import train
from sp2dpo.core import config
from sp2dpo.core.beta import BetaError, read_beta_column
from sp2dpo.train import BETA_COLUMN
from sp2dpo.train.dataset import to_preference_dataset
from tests.conftest import compose_params

ROOT = Path(__file__).resolve().parents[1]
STUDENT = "local:smollm2-135m-instruct"

PAIRS = [
    ("p0", "Name a primary colour.", "Red is a primary colour.", "Grass."),
    ("p1", "What is 2 + 2?", "2 + 2 = 4.", "It is 5, probably."),
    ("p2", "Say hello in French.", "Bonjour !", "Hola."),
    ("p3", "Is the sun a star?", "Yes, the Sun is a star.", "No, it is a planet."),
    ("p4", "Give an even number.", "Eight.", "Seven is even."),
    ("p5", "Capital of Italy?", "Rome.", "Milan is the capital."),
]


def pairs_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_id": [p[0] for p in PAIRS],
            "prompt": [p[1] for p in PAIRS],
            "chosen": [p[2] for p in PAIRS],
            "rejected": [p[3] for p in PAIRS],
            "score_chosen": [8.0] * len(PAIRS),
            "score_rejected": [3.0] * len(PAIRS),
            "source": ["test"] * len(PAIRS),
        }
    )


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
    assert config.MethodConfig(name="se_qwen", type="sp2dpo", beta_column="beta_qwen_ens").type == "sp2dpo"
    with pytest.raises(config.ConfigError, match="needs a positive `beta`"):
        config.MethodConfig(name="dpo")
    with pytest.raises(config.ConfigError, match="type is required"):
        config.MethodConfig(name="dpo_b03", beta=0.3)
    with pytest.raises(config.ConfigError, match="no '-'"):
        config.MethodConfig(name="dpo-b03", type="dpo", beta=0.3)


# --------------------------------------------------------------------------------------------
# the trainer on the real SmolLM2 model
# --------------------------------------------------------------------------------------------


#: A chat template without SmolLM2's default system turn: short sequences keep CPU tests fast.
SHORT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def smollm():
    from sp2dpo.llm import models

    model, tokenizer = models.load_causal_lm(STUDENT)
    tokenizer.chat_template = SHORT_TEMPLATE
    return model, tokenizer


def _args(tmp_path: Path, precompute: bool, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        max_steps=3,
        max_length=32,
        seed=7,
        precompute_ref_log_probs=precompute,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,  # TRL's DPOConfig defaults to bf16 autocast, even on CPU
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
    )
    base.update(kw)
    return DPOConfig(**base)


def _lora():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _dataset(beta, n: int = len(PAIRS)):
    return to_preference_dataset(train.attach_beta(pairs_frame().head(n), beta))


def _lora_state(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}


def _grads_on(trainer, examples):
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in trainer.model.named_parameters() if "lora_" in k}
    trainer.model.zero_grad()
    return loss.detach(), grads


@pytest.mark.slow
@pytest.mark.parametrize("precompute", [True, False])
def test_constant_beta_equals_trl_dpo(smollm, tmp_path, precompute):
    """Every beta_i = c: loss per step, LoRA weights and gradients after several steps equal those
    of TRL's own DPOTrainer with beta = c (LoRA; reference = base with the adapter disabled)."""
    from trl import DPOTrainer

    model, tok = smollm
    c = 0.2
    # With precompute: 2 optimizer steps over 4 pairs, then gradients. Without: the online
    # reference path at initialisation (same loss and gradients; kept short for 2 CPU cores).
    steps, n = (2, 4) if precompute else (0, 2)
    ours = train.PerPairBetaTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path / "a", precompute, max_steps=max(steps, 1)),
        train_dataset=_dataset(c, n), processing_class=tok, peft_config=_lora(),
    )
    trl = DPOTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path / "b", precompute, max_steps=max(steps, 1), beta=c),
        train_dataset=_dataset(c, n).remove_columns([BETA_COLUMN]), processing_class=tok, peft_config=_lora(),
    )
    if steps:
        ours.train()
        trl.train()
    ours_loss = [h["loss"] for h in ours.state.log_history if "loss" in h]
    trl_loss = [h["loss"] for h in trl.state.log_history if "loss" in h]
    assert len(ours_loss) == steps
    np.testing.assert_allclose(ours_loss, trl_loss, rtol=0, atol=1e-6)
    for key in ("rewards/margins", "rewards/chosen", "rewards/accuracies"):
        np.testing.assert_allclose(
            [h[key] for h in ours.state.log_history if key in h],
            [h[key] for h in trl.state.log_history if key in h], rtol=0, atol=1e-6,
        )
    a, b = _lora_state(ours.model), _lora_state(trl.model)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    # Gradients on the same batch after training.
    examples = [ours.train_dataset[i] for i in range(2)]
    trl_examples = [trl.train_dataset[i] for i in range(2)]
    loss_a, grads_a = _grads_on(ours, examples)
    loss_b, grads_b = _grads_on(trl, trl_examples)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-6)
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=0, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads_a.values())


@pytest.mark.slow
def test_distinct_beta_reaches_loss_and_rewards_and_not_the_model(smollm, tmp_path):
    """beta survives pruning and the collator as a (B,) float tensor, never reaches the model's
    forward, and enters the loss and the logged rewards per pair."""
    model, tok = smollm
    betas = pd.Series([0.03, 0.3], index=[p[0] for p in PAIRS[:2]], name="b")
    trainer = train.PerPairBetaTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path, True, max_steps=1),
        train_dataset=_dataset(betas, 2), processing_class=tok, peft_config=_lora(),
        beta_bounds=(0.03, 0.3),
    )
    loader = trainer.get_train_dataloader()  # applies Trainer's column pruning
    assert BETA_COLUMN in trainer._signature_columns
    batch = next(iter(loader))
    assert batch[BETA_COLUMN].shape == (2,) and batch[BETA_COLUMN].dtype == torch.float32

    seen = []
    hook = trainer.model.register_forward_pre_hook(lambda m, a, kw: seen.append(set(kw)), with_kwargs=True)
    examples = [trainer.train_dataset[i] for i in (0, 1)]
    collated = trainer._prepare_inputs(trainer.data_collator(examples))
    trainer._metrics["train"].clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, collated)
    hook.remove()
    assert seen and all(BETA_COLUMN not in kw for kw in seen)

    # Hand computation from the same log-probs: mean(-log sigmoid(beta_i * Delta_i)).
    with torch.no_grad():
        labels = collated["input_ids"].masked_fill(collated["completion_mask"] == 0, -100)
        out = trainer.model(input_ids=collated["input_ids"], attention_mask=collated["attention_mask"],
                            labels=labels, fused_lm_head=True, use_cache=False)
        logps = out.log_probs.sum(1)
    chosen, rejected = logps.chunk(2)
    rho_w = chosen - collated["ref_chosen_logps"]
    rho_l = rejected - collated["ref_rejected_logps"]
    beta = torch.tensor([0.03, 0.3])
    torch.testing.assert_close(collated[BETA_COLUMN], beta)
    expected = -torch.nn.functional.logsigmoid(beta * (rho_w - rho_l)).mean()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-6)
    logged = trainer._metrics["train"]
    assert logged["rewards/chosen"][-1] == pytest.approx((beta * rho_w).mean().item(), abs=1e-6)
    assert logged["beta/min"][-1] == pytest.approx(0.03) and logged["beta/max"][-1] == pytest.approx(0.3)


def test_trainer_refuses_dataset_without_or_outside_beta(smollm, tmp_path):
    model, tok = smollm
    no_beta = _dataset(0.1).remove_columns([BETA_COLUMN])
    with pytest.raises(BetaError, match="no 'beta' column"):
        train.PerPairBetaTrainer(model=model, args=_args(tmp_path, False), train_dataset=no_beta, processing_class=tok)
    with pytest.raises(BetaError, match="outside the envelope"):
        train.PerPairBetaTrainer(
            model=model, args=_args(tmp_path, False), train_dataset=_dataset(0.5), processing_class=tok,
            beta_bounds=(0.03, 0.3),
        )


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
    assert {m.beta for m in cfg.methods if m.type == "dpo"} == {0.1, 0.3, 0.5}
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
        normalize_adapter_dir(d)
        assert not (d / "training_args.bin").exists()
        outs.append((d / "adapter_config.json").read_bytes())
    assert outs[0] == outs[1]
    assert _json.loads(outs[0])["target_modules"] == ["q_proj", "up_proj", "v_proj"]


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
