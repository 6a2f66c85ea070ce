"""The only code that touches TRL internals: a ``DPOTrainer`` whose loss uses a per-pair beta_i.

How the per-pair beta travels (TRL 1.16; see docs/architecture.md, "the beta route"):

1. the dataset holds beta_i in a float column ``beta`` (:mod:`sp2dpo.train.dataset`);
2. :class:`PerPairBetaTrainer` adds that column to the signature columns, so Trainer's
   ``remove_unused_columns`` pruning keeps it;
3. :class:`BetaCollator` appends it to TRL's batch as a (B,) float32 tensor, ordered like the
   chosen half of ``input_ids``;
4. :meth:`PerPairBetaTrainer._compute_loss` removes it from the model kwargs (a leftover key is
   silently swallowed by the model's ``**kwargs``, which would train with a scalar beta) and uses it
   in the loss (:data:`sp2dpo.train.losses.LOSSES`) and in every logged reward (beta_i * rho).
   ``compute_ref_log_probs`` strips it too, since the precompute pass feeds it our collator's
   batches.

:func:`make_dpo_config` and :func:`peft_config` map the ``train`` params to TRL's and PEFT's.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import is_peft_model
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import use_adapter

from sp2dpo.core.beta import BetaError, outside_envelope
from sp2dpo.core.config import LoraSettings, LossConfig, StudentConfig, TrainConfig
from sp2dpo.train import losses
from sp2dpo.train.dataset import BETA_COLUMN

#: Batch keys that are not model inputs.
_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps", BETA_COLUMN})


@dataclasses.dataclass
class BetaCollator(DataCollatorForPreference):
    """TRL's preference collator plus the per-pair beta as a (B,) float32 tensor."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if any(BETA_COLUMN not in ex for ex in examples):
            raise BetaError(
                f"a training example reached the collator without its {BETA_COLUMN!r} column; it "
                "must survive signature-column pruning (use PerPairBetaTrainer)"
            )
        output = super().torch_call(examples)
        output[BETA_COLUMN] = torch.tensor([float(ex[BETA_COLUMN]) for ex in examples], dtype=torch.float32)
        return output


class PerPairBetaTrainer(DPOTrainer):
    """``DPOTrainer`` whose loss and logged rewards use the dataset's per-pair beta_i.

    Args (besides DPOTrainer's):
        loss_config: a :class:`sp2dpo.core.config.LossConfig` (default: the sigmoid DPO loss).
        beta_bounds: ``(beta_min, beta_max)``; when given, every beta of the train dataset must lie
            inside it, checked before the first step.
        max_prompt_length: keep only the last N prompt tokens (TRL >= 0.29 dropped this option).

    ``args.beta`` is not used by the loss; every pair's temperature comes from the ``beta`` column.
    """

    def __init__(
        self,
        *args: Any,
        loss_config: LossConfig | None = None,
        beta_bounds: tuple[float, float] | None = None,
        max_prompt_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.loss_config = loss_config or LossConfig()
        self.loss_fn = losses.get(self.loss_config.type)
        self.max_prompt_length = max_prompt_length
        train_dataset = kwargs.get("train_dataset")
        _check_beta_column(train_dataset, beta_bounds, "train_dataset")
        for name, ds in _as_dict(kwargs.get("eval_dataset")).items():
            _check_beta_column(ds, beta_bounds, f"eval_dataset[{name}]")
        targs: DPOConfig | None = kwargs.get("args") or (args[2] if len(args) > 2 else None)
        if targs is not None and targs.ld_alpha is not None:
            raise ValueError("PerPairBetaTrainer does not support ld_alpha")
        if kwargs.get("data_collator") is None and targs is not None:
            tok = kwargs.get("processing_class")
            tok = getattr(tok, "tokenizer", tok)
            if tok is not None:
                if tok.pad_token is None:
                    tok.pad_token = tok.eos_token
                kwargs["data_collator"] = BetaCollator(
                    pad_token_id=tok.pad_token_id,
                    max_length=targs.max_length,
                    truncation_mode=targs.truncation_mode,
                    pad_to_multiple_of=None if targs.pad_to_multiple_of == "auto" else targs.pad_to_multiple_of,
                )
        super().__init__(*args, **kwargs)
        if not isinstance(self.data_collator, BetaCollator):
            raise TypeError("PerPairBetaTrainer needs a BetaCollator (or a subclass) as data_collator")

    # -- data -------------------------------------------------------------------------------

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        limit = self.max_prompt_length
        if limit is None:
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        # Truncate prompts (keeping their end) *before* TRL drops prompts that fill max_length.
        no_drop = copy.copy(args)
        object.__setattr__(no_drop, "max_length", None)
        dataset = super()._prepare_dataset(dataset, processing_class, no_drop, dataset_name)
        dataset = dataset.map(
            lambda ex: {"prompt_ids": ex["prompt_ids"][-limit:]},
            desc=f"Truncating prompts of {dataset_name} dataset to {limit} tokens",
        )
        if args.max_length is not None and args.truncation_mode == "keep_start":
            dataset = dataset.filter(lambda ex: len(ex["prompt_ids"]) < args.max_length)
        return dataset

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if BETA_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, BETA_COLUMN]

    # -- loss -------------------------------------------------------------------------------

    def compute_ref_log_probs(self, model, inputs):
        """TRL's reference pass on a batch without the beta key (the precompute feeds our batches)."""
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != BETA_COLUMN})

    def _compute_loss(self, model, inputs, return_outputs):
        """TRL 1.16's ``_compute_loss`` structure with beta_i: one fused policy forward, summed
        completion log-probs, reference from the batch or a no-grad forward, ``LOSSES[type]``."""
        mode = "train" if self.model.training else "eval"
        if BETA_COLUMN not in inputs:
            raise BetaError(
                f"batch has no {BETA_COLUMN!r} tensor: the per-pair beta was lost before the loss "
                "(refusing to train with a scalar beta)"
            )
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        shift_completion_mask = completion_mask[..., 1:]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = shift_completion_mask.size(1)
        per_token_logps = outputs.log_probs[:, -seq_len:]
        chosen_logps, rejected_logps = per_token_logps.sum(dim=1).chunk(2, dim=0)

        if self.precompute_ref_logps:
            ref_chosen_logps, ref_rejected_logps = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen_logps, ref_rejected_logps = self._online_ref_logps(model_kwargs, labels, seq_len)
        chosen_logratios = chosen_logps - ref_chosen_logps.to(chosen_logps.device)
        rejected_logratios = rejected_logps - ref_rejected_logps.to(rejected_logps.device)

        beta = inputs[BETA_COLUMN].to(device=chosen_logratios.device, dtype=torch.float32)
        chosen_lengths, rejected_lengths = completion_mask.sum(dim=1).chunk(2, dim=0)
        per_pair = self.loss_fn(
            chosen_logratios,
            rejected_logratios,
            beta,
            self.loss_config,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
        )
        loss = per_pair.mean()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        self._log_batch_metrics(mode, inputs, outputs, shift_completion_mask, seq_len, beta,
                                chosen_logratios, rejected_logratios, chosen_logps, rejected_logps)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def _online_ref_logps(self, model_kwargs, labels, seq_len):
        """Reference log-probs in the training forward's context, as TRL 1.16's ``_compute_loss``:
        the explicit reference model, or the PEFT policy with its adapter disabled ("ref" adapter
        when retraining one)."""
        ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if is_peft_model(self.model) and self.ref_model is None:
                unwrapped = self.accelerator.unwrap_model(self.model)
                with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                    ref_outputs = self.model(**ref_kwargs, labels=labels, fused_lm_head=True)
            else:
                ref_outputs = self.ref_model(**ref_kwargs, labels=labels, fused_lm_head=True)
        return ref_outputs.log_probs[:, -seq_len:].sum(dim=1).chunk(2, dim=0)

    def _log_batch_metrics(self, mode, inputs, outputs, mask, seq_len, beta,
                           chosen_logratios, rejected_logratios, chosen_logps, rejected_logps) -> None:
        """Per-batch metrics, gathered over processes with one host sync. Implicit rewards use
        each pair's own temperature: r = beta_i * rho."""
        acc = self.accelerator
        with torch.no_grad():
            counts = torch.stack([
                (outputs.entropy[:, -seq_len:].detach() * mask).sum().float(),
                mask.sum().float(),
                inputs["attention_mask"].sum().float(),
            ]).unsqueeze(0)
            counts = acc.gather_for_metrics(counts).sum(0)
            pairs = torch.stack([
                beta * chosen_logratios.detach().float(),
                beta * rejected_logratios.detach().float(),
                chosen_logps.detach().float(),
                rejected_logps.detach().float(),
                beta,
            ], dim=1)
            cr, rr, lc, lr, b = acc.gather(pairs).unbind(1)
            stats = torch.stack([
                counts[0] / counts[1].clamp(min=1), counts[2],
                cr.mean(), rr.mean(), (cr > rr).float().mean(), (cr - rr).mean(), lc.mean(), lr.mean(),
                b.mean(), b.min(), b.max(), b.std(unbiased=False),
            ]).tolist()
        names = ("entropy", None, "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected", "beta/mean", "beta/min", "beta/max", "beta/std")
        metrics = self._metrics[mode]
        for name, value in zip(names, stats, strict=True):
            if name is not None:
                metrics[name].append(value)
        if mode == "train":
            self._total_train_tokens += int(stats[1])
        metrics["num_tokens"] = [self._total_train_tokens]


def _as_dict(dataset: Any) -> dict[str, Any]:
    if dataset is None:
        return {}
    return dict(dataset) if isinstance(dataset, dict) else {"eval": dataset}


def _check_beta_column(dataset: Any, bounds: tuple[float, float] | None, where: str) -> None:
    if dataset is None:
        return
    columns = getattr(dataset, "column_names", None) or []
    if BETA_COLUMN not in columns:
        raise BetaError(
            f"{where} has no {BETA_COLUMN!r} column (columns: {', '.join(columns)}); build it with "
            "sp2dpo.train.build_dataset or add a float column named 'beta'"
        )
    values = np.asarray(dataset[BETA_COLUMN], dtype=float)
    if not np.isfinite(values).all():
        raise BetaError(f"{where}: {int((~np.isfinite(values)).sum())} beta value(s) are missing or not finite")
    if bounds is not None:
        lo, hi = bounds
        bad = outside_envelope(values, lo, hi)
        if bad.any():
            raise BetaError(
                f"{where}: {int(bad.sum())} beta value(s) outside the envelope [{lo}, {hi}], "
                f"e.g. {values[bad][0]:g}"
            )


def use_bf16(precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and torch.cuda.is_available())


def make_dpo_config(
    cfg: TrainConfig,
    student: StudentConfig,
    output_dir: Path,
    method_name: str = "",
    **overrides: Any,
) -> DPOConfig:
    """The TRL ``DPOConfig`` of one run (beta is per pair; ``args.beta`` stays TRL's default)."""
    bf16 = use_bf16(cfg.precision)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=student.per_device_train_batch_size,
        gradient_accumulation_steps=student.accumulation(method_name),
        learning_rate=cfg.learning_rate,
        optim=cfg.optim,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        max_length=cfg.max_length,
        seed=cfg.seed,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        gradient_checkpointing=cfg.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=bf16,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        loss_type=["sigmoid"],
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def peft_config(lora: LoraSettings):
    if not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
