"""Tests for sp2dpo.train.trainer on a tiny random-weight model of the student (real tokenizer):
TRL parity with a constant beta, the per-pair beta in the gradient, pairs and betas staying
together, gradient-accumulation invariance, DPO-PoP's Polyak target, reference-free and
token-level losses, and losses that refuse a per-pair beta."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from trl import DPOConfig, DPOTrainer

from sp2dpo import train
from sp2dpo.core.beta import BetaError
from sp2dpo.core.config import build_loss_args
from sp2dpo.train import BETA_COLUMN
from sp2dpo.train.dataset import attach_beta, pop_frame, to_preference_dataset
from sp2dpo.train.trainer import LOSS_STATE_FILE, TARGET_ADAPTER
from tests.conftest import PAIRS, SHORT_TEMPLATE, pairs_frame


@pytest.fixture(scope="module")
def tiny(tiny_student):
    from sp2dpo.llm import models

    model, tokenizer = models.load_causal_lm(str(tiny_student))
    tokenizer.chat_template = SHORT_TEMPLATE
    return model, tokenizer


def _args(tmp_path: Path, precompute: bool = True, **kw) -> DPOConfig:
    base = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=1,
        learning_rate=1e-2, max_steps=2, max_length=32, seed=7, precompute_ref_log_probs=precompute,
        report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, use_cpu=True,
        bf16=False, dataloader_num_workers=0, lr_scheduler_type="constant",
    )
    base.update(kw)
    return DPOConfig(**base)


def _lora(init: bool = True):
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM", init_lora_weights=init)


def _dataset(beta, n: int = len(PAIRS)):
    return to_preference_dataset(attach_beta(pairs_frame(n), beta))


def _betas(values) -> pd.Series:
    return pd.Series(list(values), index=[p[0] for p in PAIRS[: len(values)]], name="b")


def _lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k and ".default." in k}


def _logged(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h]


def _grads_on(trainer, examples) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in trainer.model.named_parameters()
             if v.grad is not None and "lora_" in k}
    trainer.model.zero_grad()
    return loss.detach(), grads


# --------------------------------------------------------------------------------------------
# parity with TRL's own DPOTrainer
# --------------------------------------------------------------------------------------------

#: Our loss (with knobs) -> TRL's loss_type (with its knobs), the same formula for a constant beta.
TRL_TWINS = {
    "sigmoid": ({}, "sigmoid", {}),
    "ipo": ({}, "ipo", {}),
    "hinge": ({}, "hinge", {}),
    "robust": ({"epsilon": 0.2}, "robust", {"label_smoothing": 0.2}),
    "nca_pair": ({}, "nca_pair", {}),
    "bco_pair": ({"delta": "none"}, "bco_pair", {}),
}


@pytest.mark.slow  # 24 trainings (ours and TRL's) for 12 cases: about 90 s of `make test-fast` otherwise
@pytest.mark.parametrize("precompute", [True, False], ids=["precomputed-ref", "online-ref"])
@pytest.mark.parametrize("loss", sorted(TRL_TWINS))
def test_constant_beta_equals_trl(tiny, tmp_path, loss, precompute):
    """Every beta_i = c: per-step loss and rewards, LoRA weights after 3 steps and the gradients
    on a batch after them equal TRL's DPOTrainer with beta = c and the same loss_type."""
    model, tok = tiny
    c, ours_args, trl_type, trl_extra = 0.2, *TRL_TWINS[loss]
    ours = train.PerPairBetaTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path / "a", precompute, max_steps=3),
        train_dataset=_dataset(c), processing_class=tok, peft_config=_lora(), loss=loss, loss_args=ours_args,
    )
    twin = DPOTrainer(
        model=copy.deepcopy(model),
        args=_args(tmp_path / "b", precompute, max_steps=3, beta=c, loss_type=[trl_type], **trl_extra),
        train_dataset=_dataset(c).remove_columns([BETA_COLUMN]), processing_class=tok, peft_config=_lora(),
    )
    ours.train()
    twin.train()
    assert len(_logged(ours, "loss")) == 3
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        np.testing.assert_allclose(_logged(ours, key), _logged(twin, key), rtol=0, atol=1e-5, err_msg=key)
    assert len(set(np.round(_logged(ours, "loss"), 6))) > 1  # training moved: not a comparison at init
    a, b = _lora_state(ours.model), _lora_state(twin.model)
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    loss_a, grads_a = _grads_on(ours, [ours.train_dataset[i] for i in range(2)])
    loss_b, grads_b = _grads_on(twin, [twin.train_dataset[i] for i in range(2)])
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-5)
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads_a.values())


# --------------------------------------------------------------------------------------------
# the per-pair beta in the gradient and with its pair
# --------------------------------------------------------------------------------------------


def _independent_loss(model, batch, beta: torch.Tensor) -> torch.Tensor:
    """mean(-log sigmoid(beta_i Delta_i)) from plain logits (no fused head, no TRL code)."""
    ids, attn, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]

    def seq_logps() -> torch.Tensor:
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        token = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        return (token * comp[:, 1:]).sum(1)

    policy = seq_logps()
    with torch.no_grad(), model.disable_adapter():
        ref = seq_logps()
    rho = policy - ref
    delta = rho.chunk(2)[0] - rho.chunk(2)[1]
    return -F.logsigmoid(beta * delta).mean()


def test_per_pair_beta_reaches_the_gradient(tiny, tmp_path):
    """With policy != reference (non-zero LoRA init), distinct beta_i give the gradient of
    mean(-log sigmoid(beta_i Delta_i)) computed independently, unlike the mean global beta."""
    model, tok = tiny
    betas = torch.tensor([0.03, 0.3, 0.12])
    trainer = train.PerPairBetaTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path, False, max_steps=1, per_device_train_batch_size=3),
        train_dataset=_dataset(_betas(betas.tolist()), 3), processing_class=tok, peft_config=_lora(init=False),
    )
    examples = [trainer.train_dataset[i] for i in range(3)]
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    torch.testing.assert_close(batch[BETA_COLUMN], betas)
    loss, grads = _grads_on(trainer, examples)

    trainer.model.zero_grad()
    expected = _independent_loss(trainer.model, batch, betas)
    expected.backward()
    want = {k: v.grad.detach().clone() for k, v in trainer.model.named_parameters()
            if v.grad is not None and "lora_" in k}
    trainer.model.zero_grad()
    assert abs(float(expected.detach()) - np.log(2)) > 1e-3  # policy != reference: not the loss at init
    torch.testing.assert_close(loss, expected.detach(), rtol=0, atol=1e-5)
    assert grads.keys() == want.keys() and grads
    for k in grads:
        torch.testing.assert_close(grads[k], want[k], rtol=1e-3, atol=1e-6)

    glob = trainer._prepare_inputs(trainer.data_collator(examples))
    glob[BETA_COLUMN] = torch.full((3,), float(betas.mean()))
    trainer.model.zero_grad()
    trainer.compute_loss(trainer.model, glob).backward()
    diff = max(float((v.grad - grads[k]).abs().max()) for k, v in trainer.model.named_parameters()
               if v.grad is not None and "lora_" in k)
    scale = max(float(g.abs().max()) for g in grads.values())
    assert diff > 1e-2 * scale, "a global beta gives the same gradient: beta_i did not reach it"


def test_beta_never_reaches_the_model_forward(tiny, tmp_path):
    model, tok = tiny
    trainer = train.PerPairBetaTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path, True, max_steps=1),
        train_dataset=_dataset(_betas([0.03, 0.3]), 2), processing_class=tok, peft_config=_lora(),
        beta_bounds=(0.03, 0.3),
    )
    loader = trainer.get_train_dataloader()  # applies Trainer's column pruning
    assert BETA_COLUMN in trainer._signature_columns
    assert next(iter(loader))[BETA_COLUMN].dtype == torch.float32
    seen: list[set[str]] = []
    hook = trainer.model.register_forward_pre_hook(lambda m, a, kw: seen.append(set(kw)), with_kwargs=True)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)]))
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    hook.remove()
    assert seen and all(BETA_COLUMN not in kw for kw in seen)
    assert trainer._metrics["train"]["beta/min"][-1] == pytest.approx(0.03)
    assert trainer._metrics["train"]["beta/max"][-1] == pytest.approx(0.3)


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_shuffled_dataset_keeps_each_beta_with_its_pair(tiny, tmp_path, sampling):
    """Shuffle the dataset, then let Trainer's sampler reorder it again (at random, or grouped by
    length as the paper's runs are, with the reference precomputed): every collated beta is the
    one of the pair whose chosen reply sits in the same batch row."""
    model, tok = tiny
    values = [0.03, 0.08, 0.13, 0.18, 0.23, 0.3]
    by_reply = {p[2]: v for p, v in zip(PAIRS, values, strict=True)}
    dataset = _dataset(_betas(values)).shuffle(seed=3)
    assert dataset["prompt_id"] != [p[0] for p in PAIRS]
    trainer = train.PerPairBetaTrainer(
        model=copy.deepcopy(model),
        args=_args(tmp_path, sampling == "group_by_length", per_device_train_batch_size=4,
                   train_sampling_strategy=sampling),
        train_dataset=dataset, processing_class=tok, peft_config=_lora(),
    )
    seen = 0
    for batch in trainer.get_train_dataloader():
        chosen = batch["input_ids"].chunk(2)[0]
        mask = batch["completion_mask"].chunk(2)[0].bool()
        for row, beta in zip(range(chosen.shape[0]), batch[BETA_COLUMN].tolist(), strict=True):
            text = tok.decode(chosen[row][mask[row]])
            reply = next(r for r in by_reply if r in text)
            assert beta == pytest.approx(by_reply[reply]), text
            seen += 1
    assert seen == len(PAIRS)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"], ids=["summed", "token-averaged"])
def test_gradient_accumulation_invariance(tiny, tmp_path, loss):
    """One optimizer step (plain SGD, so the update is proportional to the gradient) on 4 pairs:
    batch 4 x accumulation 1 gives the weights of batch 1 x accumulation 4."""
    model, tok = tiny
    data = _dataset(_betas([0.03, 0.1, 0.2, 0.3]), 4)
    runs = {}
    for name, (batch, accum) in {"4x1": (4, 1), "1x4": (1, 4)}.items():
        trainer = train.PerPairBetaTrainer(
            model=copy.deepcopy(model),
            args=_args(tmp_path / name, True, max_steps=1, per_device_train_batch_size=batch,
                       gradient_accumulation_steps=accum, optim="sgd", learning_rate=0.5),
            train_dataset=data, processing_class=tok, peft_config=_lora(init=False), loss=loss,
        )
        start = _lora_state(trainer.model)
        trainer.train()
        runs[name] = (start, _lora_state(trainer.model), _logged(trainer, "loss"))
    (s1, w1, l1), (_, w2, l2) = runs["4x1"], runs["1x4"]
    moved = max(float((w1[k] - s1[k]).abs().max()) for k in w1)
    assert moved > 1e-4
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=1e-3 * moved)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# losses with special needs
# --------------------------------------------------------------------------------------------


def test_reference_free_losses_never_run_the_reference(tiny, tmp_path, monkeypatch):
    model, tok = tiny

    def boom(*a, **k):
        raise AssertionError("the reference pass ran for a reference-free loss")

    for loss in ("simpo", "cpo"):
        trainer = train.PerPairBetaTrainer(
            model=copy.deepcopy(model), args=_args(tmp_path / loss, True), train_dataset=_dataset(2.0, 4),
            processing_class=tok, peft_config=_lora(), loss=loss,
        )
        assert not trainer.args.precompute_ref_log_probs and trainer.ref_model is None
        monkeypatch.setattr(trainer, "_reference_tokens", boom)
        monkeypatch.setattr(trainer, "compute_ref_log_probs", boom)
        trainer.train()
        assert np.isfinite(_logged(trainer, "loss")).all()


def test_token_level_losses_read_the_reference_online(tiny, tmp_path):
    model, tok = tiny
    trainer = train.PerPairBetaTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path, True), train_dataset=_dataset(0.1, 4),
        processing_class=tok, peft_config=_lora(), loss="sampo",
    )
    assert trainer.args.precompute_ref_log_probs is False
    assert "ref_chosen_logps" not in trainer.train_dataset.column_names
    trainer.train()
    assert len(_logged(trainer, "loss")) == 2


def test_dpo_pop_polyak_target(tiny, tmp_path):
    """The target starts as the policy (margins 0), stays frozen, follows the policy by Polyak
    averaging after every optimizer step, and is not part of the saved adapter."""
    model, tok = tiny
    args = build_loss_args("dpo_pop", {"polyak_tau": 0.5}, "t")
    frame, info = pop_frame(attach_beta(pairs_frame(4), 0.1), np.array([1.0, 2.0, 3.5, 5.0]), args, seed=0)
    assert info["tuples"] > 0
    trainer = train.PerPairBetaTrainer(
        model=copy.deepcopy(model), args=_args(tmp_path, True, max_steps=1), train_dataset=to_preference_dataset(frame),
        processing_class=tok, peft_config=_lora(), loss="dpo_pop", loss_args=args,
    )
    pairs = trainer._target_pairs()
    assert pairs and all(not t.requires_grad for t, _ in pairs)
    assert all(torch.equal(t, s) for t, s in pairs)
    before = [(t.clone(), s.detach().clone()) for t, s in pairs]
    trainer.train()
    assert _logged(trainer, "pop/margin_mean")[0] == 0.0
    for (t0, _), (t1, s1) in zip(before, trainer._target_pairs(), strict=True):
        torch.testing.assert_close(t1, 0.5 * t0 + 0.5 * s1.detach())
    assert any(not torch.equal(s0, s1) for (_, s0), (_, s1) in zip(before, trainer._target_pairs(), strict=True))
    trainer.remove_target()
    trainer.save_model(str(tmp_path / "adapter"))
    assert not (tmp_path / "adapter" / TARGET_ADAPTER).exists()
    assert TARGET_ADAPTER not in trainer.model.peft_config


def test_running_statistics_travel_with_checkpoints(tiny, tmp_path):
    model, tok = tiny
    make = lambda out, steps: train.PerPairBetaTrainer(  # noqa: E731
        model=copy.deepcopy(model),
        args=_args(out, True, max_steps=steps, save_strategy="steps", save_steps=1),
        train_dataset=_dataset(0.1, 4), processing_class=tok, peft_config=_lora(), loss="bco_pair",
    )
    first = make(tmp_path / "a", 2)
    first.train()
    saved = torch.load(tmp_path / "a" / "out" / "checkpoint-2" / LOSS_STATE_FILE, weights_only=False)
    assert saved["moments"] == first.moments.state_dict() and saved["moments"]["bco_delta/mean"] != 0.0
    resumed = make(tmp_path / "b", 2)
    resumed._load_from_checkpoint(str(tmp_path / "a" / "out" / "checkpoint-2"))
    assert resumed.moments.state_dict() == saved["moments"]


def test_a_loss_without_per_pair_beta_refuses_varying_beta(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(BetaError, match=r"beta_dpo.*per-pair beta"):
        train.PerPairBetaTrainer(
            model=model, args=_args(tmp_path), train_dataset=_dataset(_betas([0.1, 0.2]), 2),
            processing_class=tok, loss="beta_dpo",
        )
    with pytest.raises(BetaError, match=r"needs column.*margin"):
        train.PerPairBetaTrainer(model=model, args=_args(tmp_path), train_dataset=_dataset(0.1, 2),
                                 processing_class=tok, loss="dpo_margin")


def test_trainer_refuses_dataset_without_or_outside_beta(tiny, tmp_path):
    model, tok = tiny
    no_beta = _dataset(0.1).remove_columns([BETA_COLUMN])
    with pytest.raises(BetaError, match="no 'beta' column"):
        train.PerPairBetaTrainer(model=model, args=_args(tmp_path, False), train_dataset=no_beta, processing_class=tok)
    with pytest.raises(BetaError, match="outside the envelope"):
        train.PerPairBetaTrainer(
            model=model, args=_args(tmp_path, False), train_dataset=_dataset(0.5), processing_class=tok,
            beta_bounds=(0.03, 0.3),
        )
