"""The only code that touches TRL internals: a ``DPOTrainer`` whose loss is any registered
preference loss with a per-pair beta_i.

How the per-pair beta travels (TRL 1.16; see docs/architecture.md, "the beta route"):

1. the dataset holds beta_i in a float column ``beta`` (:mod:`sp2dpo.train.dataset`);
2. :class:`PerPairBetaTrainer` adds it (and ``margin``, DPO-PoP's weaker pair) to the signature
   columns, so Trainer's ``remove_unused_columns`` pruning keeps them;
3. :class:`sp2dpo.train.collate.BetaCollator` appends them to TRL's batch as (B,) float32
   tensors, ordered like the chosen half of ``input_ids``;
4. :meth:`PerPairBetaTrainer._compute_loss` removes them from the model kwargs (a leftover key is
   silently swallowed by the model's ``**kwargs``, which would train with a scalar beta), builds a
   :class:`sp2dpo.train.losses.PairBatch` with exactly what the loss reads, and uses beta_i in
   the loss and in every logged reward (beta_i * rho). ``compute_ref_log_probs`` strips them too,
   since the precompute pass feeds it our collator's batches.

Per loss (:data:`sp2dpo.core.config.losses.LOSS_SPECS`): reference-free losses skip the reference
pass; token-level losses (SamPO, SGDPO) and DPO-PoP compute the reference online; DPO-PoP keeps a
Polyak-averaged target (a second LoRA adapter, or a frozen copy without LoRA); running
statistics (beta-DPO, alpha-DPO, BCO) live in :attr:`PerPairBetaTrainer.moments`, computed over
all processes and saved with checkpoints. :func:`make_dpo_config` and :func:`peft_config` map the
``train`` params to TRL's and PEFT's.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import is_peft_model
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from sp2dpo.core.beta import BetaError, outside_envelope
from sp2dpo.core.config import LoraSettings, StudentConfig, TrainConfig, build_loss_args, loss_spec
from sp2dpo.train import losses
from sp2dpo.train.collate import EXTRA_COLUMNS, NON_MODEL_KEYS, BetaCollator
from sp2dpo.train.dataset import BETA_COLUMN, MARGIN_COLUMN, WEAK_BETA_COLUMN, WEAK_TEXT_COLUMNS

log = logging.getLogger(__name__)

#: Name of DPO-PoP's Polyak target adapter.
TARGET_ADAPTER = "pop_target"
#: File of the loss state (running statistics, DPO-PoP target) inside a checkpoint folder.
LOSS_STATE_FILE = "loss_state.pt"


class _PolyakCallback(TrainerCallback):
    """After every optimizer step: target <- tau * target + (1 - tau) * policy."""

    def __init__(self, trainer: PerPairBetaTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.update_target()


class PerPairBetaTrainer(DPOTrainer):
    """``DPOTrainer`` whose loss is ``loss`` with the dataset's per-pair beta_i.

    Args (besides DPOTrainer's):
        loss: a registered loss name (:data:`sp2dpo.train.losses.LOSSES`; default DPO's sigmoid).
        loss_args: its knobs, as a mapping (``train.methods[].loss_args``) or the knob dataclass.
        beta_bounds: ``(beta_min, beta_max)``; when given, every beta of the train dataset must lie
            inside it, checked before the first step.
        max_prompt_length: keep only the last N prompt tokens (TRL >= 0.29 dropped this option).

    ``args.beta`` is not used by the loss; every pair's temperature comes from the ``beta`` column.
    ``args.precompute_ref_log_probs`` is turned off for losses that cannot use summed reference
    log-probs (reference-free, token-level, DPO-PoP), with a log line.
    """

    def __init__(
        self,
        *args: Any,
        loss: str = "sigmoid",
        loss_args: Mapping[str, Any] | Any | None = None,
        beta_bounds: tuple[float, float] | None = None,
        max_prompt_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.loss_name = loss
        self.spec = loss_spec(loss)
        if loss_args is None or isinstance(loss_args, Mapping):
            loss_args = build_loss_args(loss, loss_args, f"loss_args of {loss}")
        self.loss_args = loss_args
        self.loss_fn = losses.get(loss)
        self.moments = losses.RunningMoments()
        self.max_prompt_length = max_prompt_length
        self._loss_calls = 0
        self._target: torch.nn.Module | None = None
        self._target_names: list[tuple[str, str]] = []
        train_dataset = kwargs.get("train_dataset")
        for where, ds in [("train_dataset", train_dataset), *_as_dict(kwargs.get("eval_dataset")).items()]:
            _check_beta_column(ds, beta_bounds, where)
            self._check_columns(ds, where)
        targs: DPOConfig | None = kwargs.get("args") or (args[2] if len(args) > 2 else None)
        if targs is not None:
            if targs.ld_alpha is not None:
                raise ValueError("PerPairBetaTrainer does not support ld_alpha")
            if targs.precompute_ref_log_probs and not self.uses_precomputed_reference:
                log.info("loss %s reads %s: precompute_ref_log_probs turned off", loss,
                         "no reference" if not self.spec.reference else "per-token or second-pair reference values")
                targs = copy.copy(targs)
                object.__setattr__(targs, "precompute_ref_log_probs", False)
                kwargs["args"] = targs
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
        if not self.spec.reference and self.ref_model is not None:
            self.ref_model = None  # a reference-free loss never runs the reference model
        if self.loss_name == "dpo_pop":
            self._make_target()
            self.add_callback(_PolyakCallback(self))

    @property
    def uses_precomputed_reference(self) -> bool:
        """The loss reads only summed reference log-probs of the batch's own pairs."""
        return self.spec.reference and not self.spec.token_level and self.loss_name != "dpo_pop"

    def _check_columns(self, dataset: Any, where: str) -> None:
        if dataset is None:
            return
        columns = set(getattr(dataset, "column_names", None) or [])
        if not self.spec.per_pair_beta and BETA_COLUMN in columns:
            values = np.unique(np.asarray(dataset[BETA_COLUMN], dtype=float))
            if values.size > 1:
                raise BetaError(
                    f"{where}: loss {self.loss_name!r} cannot use a per-pair beta ({self.spec.summary}); "
                    f"its {BETA_COLUMN!r} column holds {values.size} different values"
                )
        if self.loss_name == "dpo_pop":
            needed = [*WEAK_TEXT_COLUMNS, WEAK_BETA_COLUMN]
        elif self.spec.margins:
            needed = [MARGIN_COLUMN]
        else:
            return
        missing = [c for c in needed if c not in columns]
        if missing:
            raise BetaError(
                f"{where}: loss {self.loss_name!r} needs column(s) {', '.join(missing)}; build the "
                "dataset with sp2dpo.train.build_dataset"
            )

    # -- data -------------------------------------------------------------------------------

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = self._tokenized(dataset, processing_class, args, dataset_name)
        if getattr(args, "train_sampling_strategy", None) == "group_by_length" and \
                args.length_column_name not in dataset.column_names:
            # transformers' length-grouped sampler reads a length column (it can infer lengths only
            # from an `input_ids` key, which preference rows do not have): a pair's longer sequence.
            lengths = [
                len(p) + max(len(c), len(r))
                for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"],
                                   strict=True)
            ]
            dataset = dataset.add_column(args.length_column_name, lengths)
        return dataset

    def _tokenized(self, dataset, processing_class, args, dataset_name):
        if WEAK_TEXT_COLUMNS[0] in getattr(dataset, "column_names", []):
            return self._prepare_tuples(dataset, processing_class, args, dataset_name)
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

    def _prepare_tuples(self, dataset, processing_class, args, dataset_name):
        """DPO-PoP rows: tokenise the stronger and the weaker pair alike, keep the tuples whose
        both pairs survive TRL's length filter, and carry the weaker pair's ids along."""
        rows = list(range(len(dataset)))
        weak_text = ["weak_prompt_id", *WEAK_TEXT_COLUMNS]
        strong = dataset.remove_columns([c for c in weak_text if c in dataset.column_names]).add_column("_row", rows)
        weak = dataset.select_columns(list(WEAK_TEXT_COLUMNS)).rename_columns(
            {c: c.removeprefix("weak_") for c in WEAK_TEXT_COLUMNS}
        ).add_column("_row", rows)
        strong = self._tokenized(strong, processing_class, args, dataset_name)
        weak = self._tokenized(weak, processing_class, args, f"{dataset_name} (weaker pairs)")
        where = {r: i for i, r in enumerate(weak["_row"])}
        keep = [i for i, r in enumerate(strong["_row"]) if r in where]
        if len(keep) < len(strong) or len(where) < len(rows):
            log.warning("DPO-PoP: %d of %d tuples dropped by the length filter", len(rows) - len(keep), len(rows))
        strong = strong.select(keep)
        partner = weak.select([where[r] for r in strong["_row"]])
        for col in ("prompt_ids", "chosen_ids", "rejected_ids"):
            strong = strong.add_column(f"weak_{col}", partner[col])
        return strong.remove_columns("_row")

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = [c for c in (*EXTRA_COLUMNS, self.args.length_column_name) if c not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *extra]

    # -- DPO-PoP's Polyak target ------------------------------------------------------------

    def _make_target(self) -> None:
        """A frozen copy of the starting policy: a second LoRA adapter, or a model copy."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        if is_peft_model(unwrapped):
            active = unwrapped.active_adapter
            unwrapped.add_adapter(TARGET_ADAPTER, unwrapped.peft_config[active])
            params = dict(unwrapped.named_parameters())
            for name, p in params.items():
                if f".{TARGET_ADAPTER}." in name:
                    source = name.replace(f".{TARGET_ADAPTER}.", f".{active}.")
                    with torch.no_grad():
                        p.copy_(params[source])
                    p.requires_grad_(False)
                    self._target_names.append((name, source))
        else:
            self._target = copy.deepcopy(unwrapped).eval().requires_grad_(False)

    def _target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self._target is not None:
            return list(zip(self._target.parameters(), unwrapped.parameters(), strict=True))
        params = dict(unwrapped.named_parameters())
        return [(params[t], params[s]) for t, s in self._target_names]

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- tau * target + (1 - tau) * policy (A and B factors averaged separately)."""
        tau = float(self.loss_args.polyak_tau)
        for target, source in self._target_pairs():
            target.mul_(tau).add_(source.detach().to(target.dtype), alpha=1 - tau)

    def remove_target(self) -> None:
        """Drop the target before saving the final adapter (only the policy is the result)."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self._target_names and TARGET_ADAPTER in getattr(unwrapped, "peft_config", {}):
            unwrapped.delete_adapter(TARGET_ADAPTER)
        self._target, self._target_names = None, []

    # -- checkpoints: running statistics and the target travel with them ---------------------

    def loss_state(self) -> dict[str, Any]:
        return {
            "moments": self.moments.state_dict(),
            "loss_calls": self._loss_calls,
            "target": [t.detach().cpu().clone() for t, _ in self._target_pairs()],
        }

    def load_loss_state(self, state: dict[str, Any]) -> None:
        self.moments.load_state_dict(state.get("moments", {}))
        self._loss_calls = int(state.get("loss_calls", 0))
        saved = state.get("target") or []
        pairs = self._target_pairs()
        if saved and len(saved) == len(pairs):
            with torch.no_grad():
                for (target, _), value in zip(pairs, saved, strict=True):
                    target.copy_(value.to(target))

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            torch.save(self.loss_state(), folder / LOSS_STATE_FILE)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = Path(resume_from_checkpoint) / LOSS_STATE_FILE
        if path.exists():
            self.load_loss_state(torch.load(path, weights_only=False))

    # -- loss -------------------------------------------------------------------------------

    def compute_ref_log_probs(self, model, inputs):
        """TRL's reference pass on a batch without our extra keys (the precompute feeds our batches)."""
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k in _TRL_KEYS})

    def _context(self) -> losses.LossContext:
        """Generators seeded by (seed, call number[, process]): reruns draw the same tokens."""
        acc = self.accelerator
        self._loss_calls += 1

        def seeded(*parts: int) -> torch.Generator:
            digest = hashlib.sha256(repr((self.args.seed, *parts)).encode()).digest()
            return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

        def gather(t: torch.Tensor) -> torch.Tensor:
            return acc.gather(t.contiguous()) if acc.num_processes > 1 else t

        return losses.LossContext(
            generator=seeded(self._loss_calls, acc.process_index),
            moments=self.moments,
            gather=gather,
            shared_generator=seeded(self._loss_calls),
            process_index=acc.process_index,
            num_processes=acc.num_processes,
        )

    def _compute_loss(self, model, inputs, return_outputs):
        """TRL 1.16's ``_compute_loss`` structure with beta_i and any registered loss: one fused
        policy forward, completion log-probs, the reference from the batch or a no-grad forward
        (skipped for reference-free losses), then ``LOSSES[loss]``."""
        mode = "train" if self.model.training else "eval"
        if BETA_COLUMN not in inputs:
            raise BetaError(
                f"batch has no {BETA_COLUMN!r} tensor: the per-pair beta was lost before the loss "
                "(refusing to train with a scalar beta)"
            )
        model_kwargs = {k: v for k, v in inputs.items() if k not in NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        seq_len = shift_mask.size(1)
        per_token = outputs.log_probs[:, -seq_len:]
        logps = per_token.sum(dim=1)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)

        device = chosen_logps.device
        beta = inputs[BETA_COLUMN].to(device=device, dtype=torch.float32)
        lengths_w, lengths_l = completion_mask.sum(dim=1).chunk(2, dim=0)
        batch = losses.PairBatch(beta, chosen_logps, rejected_logps, chosen_lengths=lengths_w,
                                 rejected_lengths=lengths_l)
        if self.spec.reference:
            if self.precompute_ref_logps and not self.spec.token_level:
                batch.ref_chosen = inputs["ref_chosen_logps"].to(device)
                batch.ref_rejected = inputs["ref_rejected_logps"].to(device)
            else:
                ref_tokens = self._reference_tokens(model_kwargs, labels, seq_len)
                batch.ref_chosen, batch.ref_rejected = ref_tokens.sum(dim=1).chunk(2, dim=0)
                if self.spec.token_level:
                    mask = shift_mask.bool()
                    batch.chosen_mask, batch.rejected_mask = mask.chunk(2, dim=0)
                    batch.chosen_tokens, batch.rejected_tokens = (per_token * mask).chunk(2, dim=0)
                    batch.ref_chosen_tokens, batch.ref_rejected_tokens = (ref_tokens * mask).chunk(2, dim=0)
        if MARGIN_COLUMN in inputs:
            batch.margin = inputs[MARGIN_COLUMN].to(device)
        if self.loss_name == "cpo":
            chosen_mask = shift_mask.chunk(2, dim=0)[0]
            batch.nll = -(per_token.chunk(2, dim=0)[0] * chosen_mask).sum() / chosen_mask.sum().clamp(min=1)
        if self.loss_name == "dpo_pop":
            batch.weak_delta = self._weak_delta(inputs)
            batch.weak_beta = inputs[WEAK_BETA_COLUMN].to(device)

        ctx = self._context()
        out = self.loss_fn(batch, self.loss_args, ctx)
        loss = losses.reduce(out, ctx)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        self._log_batch_metrics(mode, inputs, outputs, shift_mask, seq_len, batch, out.metrics)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**model_kwargs)
            return loss, outputs
        return loss

    def _reference_tokens(self, model_kwargs, labels, seq_len) -> torch.Tensor:
        """Per-token reference log-probs in the training forward's context, as TRL 1.16's
        ``_compute_loss``: the explicit reference model, or the PEFT policy with its adapters
        disabled ("ref" adapter when retraining one)."""
        ref_kwargs = {k: v for k, v in model_kwargs.items() if k != "output_router_logits"}
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if is_peft_model(self.model) and self.ref_model is None:
                unwrapped = self.accelerator.unwrap_model(self.model)
                with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                    ref_outputs = self.model(**ref_kwargs, labels=labels, fused_lm_head=True)
            else:
                ref_outputs = self.ref_model(**ref_kwargs, labels=labels, fused_lm_head=True)
        return ref_outputs.log_probs[:, -seq_len:]

    @torch.no_grad()
    def _weak_delta(self, inputs) -> torch.Tensor:
        """DPO-PoP: Delta of each tuple's weaker pair under the Polyak target (no gradient)."""
        mask = inputs["weak_completion_mask"]
        kwargs = {"input_ids": inputs["weak_input_ids"], "attention_mask": inputs["weak_attention_mask"],
                  "use_cache": False}
        labels = inputs["weak_input_ids"].masked_fill(mask == 0, -100)
        seq_len = mask.size(1) - 1
        ref = self._reference_tokens(kwargs, labels, seq_len).sum(dim=1)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if self._target is not None:
                target_out = self._target(**kwargs, labels=labels, fused_lm_head=True)
            else:
                unwrapped = self.accelerator.unwrap_model(self.model)
                with use_adapter(unwrapped, adapter_name=TARGET_ADAPTER):
                    target_out = self.model(**kwargs, labels=labels, fused_lm_head=True)
        target = target_out.log_probs[:, -seq_len:].sum(dim=1)
        tw, tl = target.chunk(2, dim=0)
        rw, rl = ref.chunk(2, dim=0)
        return ((tw - rw) - (tl - rl)).float()

    def _log_batch_metrics(self, mode, inputs, outputs, mask, seq_len, batch: losses.PairBatch,
                           loss_metrics: dict[str, float]) -> None:
        """Per-batch metrics, gathered over processes with one host sync. Implicit rewards use
        each pair's own temperature: r = beta_i * rho (rho = S_theta without a reference)."""
        acc = self.accelerator
        beta = batch.beta
        with torch.no_grad():
            counts = torch.stack([
                (outputs.entropy[:, -seq_len:].detach() * mask).sum().float(),
                mask.sum().float(),
                inputs["attention_mask"].sum().float(),
            ]).unsqueeze(0)
            counts = acc.gather_for_metrics(counts).sum(0)
            pairs = torch.stack([
                beta * batch.chosen_logratios.detach(),
                beta * batch.rejected_logratios.detach(),
                batch.policy_chosen.detach().float(),
                batch.policy_rejected.detach().float(),
                beta,
            ], dim=1)
            cr, rr, lc, lr, b = acc.gather(pairs).unbind(1)
            names = sorted(loss_metrics)
            extra = torch.tensor([float(loss_metrics[n]) for n in names], device=beta.device).unsqueeze(0)
            extra = acc.gather(extra).mean(0) if names else extra.squeeze(0)
            stats = torch.cat([torch.stack([
                counts[0] / counts[1].clamp(min=1), counts[2],
                cr.mean(), rr.mean(), (cr > rr).float().mean(), (cr - rr).mean(), lc.mean(), lr.mean(),
                b.mean(), b.min(), b.max(), b.std(unbiased=False),
            ]), extra]).tolist()
        keys = ("entropy", None, "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected", "beta/mean", "beta/min", "beta/max", "beta/std", *names)
        metrics = self._metrics[mode]
        for name, value in zip(keys, stats, strict=True):
            if name is not None:
                metrics[name].append(value)
        if mode == "train":
            self._total_train_tokens += int(stats[1])
        metrics["num_tokens"] = [self._total_train_tokens]


#: Keys of TRL's own batch (what its reference pass may see).
_TRL_KEYS = frozenset({"input_ids", "attention_mask", "completion_mask", "ref_chosen_logps", "ref_rejected_logps"})


def _as_dict(dataset: Any) -> dict[str, Any]:
    if dataset is None:
        return {}
    if isinstance(dataset, dict):
        return {f"eval_dataset[{k}]": v for k, v in dataset.items()}
    return {"eval_dataset": dataset}


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
    """The TRL ``DPOConfig`` of one run (beta is per pair; ``args.beta`` stays TRL's default).

    Learning rate, warm-up, weight decay, batch shape, epochs and seed are
    :meth:`TrainConfig.run_args`: the method's ``train_args`` over the student's batch shape and
    the global keys. ``overrides`` (keyword arguments of ``DPOConfig``) win over everything.
    """
    bf16 = use_bf16(cfg.precision)
    run = cfg.run_args(student, method_name)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=run["per_device_train_batch_size"],
        gradient_accumulation_steps=run["gradient_accumulation_steps"],
        learning_rate=run["learning_rate"],
        optim=cfg.optim,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=run["warmup_ratio"],  # transformers 5: a float in [0, 1) is a ratio
        weight_decay=run["weight_decay"],
        num_train_epochs=run["num_train_epochs"],
        max_steps=cfg.max_steps,
        max_length=cfg.max_length,
        seed=run["seed"],
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
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs["use_cpu"] = True  # several CPU processes: gloo
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
