"""The ``train`` stage: TRL's DPO inner loop with the global beta replaced by a per-pair beta_i.

How the per-pair beta travels (TRL 1.16, ``../shared/docs/losses.md`` §6.6):

1. :func:`build_dataset` joins the filtered pairs with the beta artifact on ``prompt_id`` and
   stores beta_i in a float column :data:`BETA_COLUMN` (a constant for the ``dpo`` method).
2. :class:`PerPairBetaTrainer` adds that column to the signature columns, so Trainer's
   ``remove_unused_columns`` pruning keeps it.
3. :class:`BetaCollator` appends it to TRL's batch as a (B,) float32 tensor, ordered like the
   chosen half of ``input_ids``.
4. :meth:`PerPairBetaTrainer._compute_loss` removes it from the model kwargs (a leftover key is
   silently swallowed by the model's ``**kwargs``, which would train with a scalar beta) and uses it
   in the loss (:data:`sp2dpo.losses.LOSSES`) and in every logged reward (beta_i * rho).
   ``compute_ref_log_probs`` strips it too, since the precompute pass feeds it our collator's
   batches.

:func:`run` is the entry point shared by ``stages/train.py`` and ``python -m sp2dpo.train``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate.utils import is_peft_model
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import use_adapter

from sp2dpo import artifacts, config, losses, schemas

log = logging.getLogger(__name__)

#: Name of the per-pair beta column inside the training dataset and the collated batch.
BETA_COLUMN = "beta"
#: Batch keys that are not model inputs.
_NON_MODEL_KEYS = frozenset({"completion_mask", "ref_chosen_logps", "ref_rejected_logps", BETA_COLUMN})
#: Envelope used when params.yaml has no `beta` section yet (the paper's).
DEFAULT_BETA_MIN, DEFAULT_BETA_MAX = 0.03, 0.3
#: Paper default beta column (JMAMP).
JMAMP_COLUMN = "beta_annotators_mean_ens"


class BetaError(ValueError):
    """The per-pair beta is missing, misnamed, out of its envelope or does not cover the pairs."""


# --------------------------------------------------------------------------------------------
# beta artifact -> training dataset
# --------------------------------------------------------------------------------------------


def read_beta_column(path: str | Path, column: str, beta_min: float, beta_max: float) -> pd.Series:
    """Read one beta column of the artifact, indexed by ``prompt_id``, checked against the envelope.

    Uses ``sp2dpo.aggregate.read_beta_artifact`` for the schema when it exists, then checks the
    chosen column itself (present, numeric, finite or empty, inside ``[beta_min, beta_max]``).
    Empty cells (a pair the column has no value for) come back as NaN: coverage is checked by
    :func:`attach_beta`.

    Raises:
        BetaError: missing file or column (the message lists the artifact's beta columns),
            duplicate prompt_ids, non-finite or out-of-envelope values.
    """
    path = Path(path)
    if not path.exists():
        raise BetaError(f"{path}: beta artifact not found (run the aggregate stage first)")
    frame = _read_artifact(path, beta_min, beta_max)
    if "prompt_id" not in frame.columns:
        raise BetaError(f"{path}: beta artifact has no prompt_id column")
    if column not in frame.columns:
        available = [c for c in frame.columns if str(c).startswith("beta_")]
        raise BetaError(
            f"{path}: beta column {column!r} not found; the artifact's beta columns are: "
            f"{', '.join(available) or '(none)'}"
        )
    ids = frame["prompt_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise BetaError(f"{path}: {len(dup)} duplicate prompt_id(s), first: {', '.join(dup[:5])}")
    values = pd.to_numeric(frame[column], errors="coerce")
    bad_type = values.isna() & frame[column].notna()
    if bad_type.any():
        raise BetaError(f"{path}: column {column!r} has non-numeric values at prompt_id(s) {_first(ids[bad_type])}")
    arr = values.to_numpy(dtype=float)
    nonfinite = np.isinf(arr)
    outside = np.isfinite(arr) & ((arr < beta_min - 1e-12) | (arr > beta_max + 1e-12))
    if nonfinite.any() or outside.any():
        bad = nonfinite | outside
        shown = ", ".join(f"{i}={v:g}" for i, v in list(zip(ids[bad], arr[bad], strict=True))[:5])
        raise BetaError(
            f"{path}: column {column!r} has {int(bad.sum())} value(s) outside the envelope "
            f"[{beta_min}, {beta_max}] (beta.min/beta.max): {shown}"
        )
    return pd.Series(arr, index=ids.to_numpy(), name=column)


def _read_artifact(path: Path, beta_min: float, beta_max: float) -> pd.DataFrame:
    """A full artifact (the aggregate stage's layout) is validated by
    ``sp2dpo.aggregate.read_beta_artifact``; a minimal schedule (``prompt_id`` plus beta columns,
    e.g. hand-made) is read as is and checked by :func:`read_beta_column`."""
    from sp2dpo.aggregate import panel_of, read_beta_artifact

    annotators, variants = panel_of(list(pd.read_csv(path, nrows=0).columns))
    if annotators and variants:
        try:
            return read_beta_artifact(path, beta_min, beta_max)
        except (ValueError, KeyError) as exc:
            raise BetaError(f"{path}: invalid beta artifact: {exc}") from None
    return pd.read_csv(path, dtype={"prompt_id": str})


def _first(ids: pd.Series | list[str], n: int = 5) -> str:
    ids = list(ids)
    more = f" (and {len(ids) - n} more)" if len(ids) > n else ""
    return ", ".join(map(str, ids[:n])) + more


def attach_beta(pairs: pd.DataFrame, beta: pd.Series | float, *, drop_missing: bool = False) -> pd.DataFrame:
    """Return ``pairs`` with a float :data:`BETA_COLUMN`: a constant or looked up by ``prompt_id``.

    Args:
        pairs: the filtered pairs (needs ``prompt_id``).
        beta: a global beta, or a Series indexed by prompt_id (NaN = no value).
        drop_missing: drop pairs without a beta_i (the paper) instead of raising.

    Raises:
        BetaError: pairs without a beta_i and ``drop_missing`` is false (names how many and the
            first prompt_ids), or no pair left.
    """
    out = pairs.copy()
    if isinstance(beta, int | float):
        out[BETA_COLUMN] = float(beta)
        return out
    values = out["prompt_id"].astype(str).map(beta)
    missing = values.isna()
    if missing.any():
        ids = out.loc[missing, "prompt_id"].tolist()
        msg = (
            f"{len(ids)} of {len(out)} training pair(s) have no beta in column {beta.name!r}; "
            f"first prompt_id(s): {_first(ids)}"
        )
        if not drop_missing:
            raise BetaError(msg + ". Set train.drop_missing_beta=true to drop them, as the paper does.")
        log.warning("%s; dropping them (train.drop_missing_beta)", msg)
        out, values = out.loc[~missing], values[~missing]
    if out.empty:
        raise BetaError("no training pair left after joining the beta artifact")
    out[BETA_COLUMN] = values.astype("float64").to_numpy()
    return out.reset_index(drop=True)


def to_preference_dataset(frame: pd.DataFrame):
    """A ``datasets.Dataset`` in TRL's conversational preference format, plus ``beta``.

    The prompt is one user turn and each reply one assistant turn, so the student's chat template
    renders them; ``prompt_id`` is kept for traceability (Trainer prunes it before collation).
    """
    from datasets import Dataset

    records = {
        "prompt_id": frame["prompt_id"].astype(str).tolist(),
        "prompt": [[{"role": "user", "content": p}] for p in frame["prompt"]],
        "chosen": [[{"role": "assistant", "content": c}] for c in frame["chosen"]],
        "rejected": [[{"role": "assistant", "content": r}] for r in frame["rejected"]],
        BETA_COLUMN: frame[BETA_COLUMN].astype("float64").tolist(),
    }
    return Dataset.from_dict(records)


def beta_summary(values: np.ndarray | pd.Series) -> dict[str, float]:
    """Count, mean, std, min, quartiles and max of the betas a run trains with."""
    arr = np.asarray(values, dtype=float)
    q = np.quantile(arr, [0.25, 0.5, 0.75])
    return {
        "count": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "p25": float(q[0]),
        "median": float(q[1]),
        "p75": float(q[2]),
        "max": float(arr.max()),
    }


# --------------------------------------------------------------------------------------------
# collator and trainer
# --------------------------------------------------------------------------------------------


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
        loss_config: a :class:`sp2dpo.config.LossConfig` (default: the sigmoid DPO loss).
        beta_bounds: ``(beta_min, beta_max)``; when given, every beta of the train dataset must lie
            inside it, checked before the first step.
        max_prompt_length: keep only the last N prompt tokens (TRL >= 0.29 dropped this option).

    ``args.beta`` is not used by the loss; every pair's temperature comes from the ``beta`` column.
    """

    def __init__(
        self,
        *args: Any,
        loss_config: config.LossConfig | None = None,
        beta_bounds: tuple[float, float] | None = None,
        max_prompt_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.loss_config = loss_config or config.LossConfig()
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
        bad = (values < lo - 1e-12) | (values > hi + 1e-12)
        if bad.any():
            raise BetaError(
                f"{where}: {int(bad.sum())} beta value(s) outside the envelope [{lo}, {hi}], "
                f"e.g. {values[bad][0]:g}"
            )


# --------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where one (student, method) run reads and writes."""

    pairs: Path = Path("data/pairs/filtered.parquet")
    beta: Path = Path("data/beta/beta.csv")
    adapter: Path = Path("models/adapter")
    report: Path = Path("reports/train/run.json")
    curve: Path = Path("reports/train/run_loss.csv")

    @classmethod
    def default(cls, student: str, method: str, root: str | Path = ".") -> RunPaths:
        root = Path(root)
        return cls(
            pairs=root / "data/pairs/filtered.parquet",
            beta=root / "data/beta/beta.csv",
            adapter=root / "models" / f"{student}-{method}",
            report=root / "reports" / "train" / f"{student}-{method}.json",
            curve=root / "reports" / "train" / f"{student}-{method}_loss.csv",
        )


def beta_envelope(params: config.Params) -> tuple[float, float]:
    """``(beta.min, beta.max)`` from params; the paper's (0.03, 0.3) while no `beta` section exists."""
    section = params.sections.get("beta") if hasattr(params, "sections") else None
    if section is not None:
        return float(section.min), float(section.max)
    raw = params.raw.get("beta") or {}
    return float(raw.get("min", DEFAULT_BETA_MIN)), float(raw.get("max", DEFAULT_BETA_MAX))


def build_dataset(
    cfg: config.TrainConfig,
    method: config.MethodConfig,
    paths: RunPaths,
    envelope: tuple[float, float],
) -> tuple[Any, dict[str, Any]]:
    """Filtered pairs (first ``cfg.limit``) + beta_i -> TRL dataset, and a description of it."""
    pairs = artifacts.read_table(paths.pairs, schemas.FilteredPairsTable)
    if method.type == "dpo":
        beta: pd.Series | float = float(method.beta)
    else:
        beta = read_beta_column(paths.beta, method.beta_column, *envelope)
    if cfg.drop_missing_beta:
        # The paper trains on the fully annotated pairs only (App. E.3). Every method, global-beta
        # DPO included, then sees the same pairs: those the artifact covers.
        if isinstance(beta, pd.Series):
            covered = beta.index
        elif Path(paths.beta).exists():
            covered = _read_artifact(Path(paths.beta), *envelope)["prompt_id"].astype(str)
        else:
            raise BetaError(f"{paths.beta}: beta artifact not found (run the aggregate stage first)")
        pairs = pairs[pairs["prompt_id"].isin(set(covered))].reset_index(drop=True)
    if cfg.limit is not None:
        pairs = pairs.head(cfg.limit)
    frame = attach_beta(pairs, beta, drop_missing=cfg.drop_missing_beta)
    info = {
        "n_pairs_in": len(pairs),
        "n_pairs": len(frame),
        "n_dropped_missing_beta": len(pairs) - len(frame),
        "beta": beta_summary(frame[BETA_COLUMN]),
    }
    return to_preference_dataset(frame), info


def _use_bf16(precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and torch.cuda.is_available())


def make_dpo_config(
    cfg: config.TrainConfig,
    student: config.StudentConfig,
    output_dir: Path,
    method_name: str = "",
    **overrides: Any,
) -> DPOConfig:
    """The TRL ``DPOConfig`` of one run (beta is per pair; ``args.beta`` stays TRL's default)."""
    bf16 = _use_bf16(cfg.precision)
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


def _peft_config(lora: config.LoraSettings):
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


def load_student(student: config.StudentConfig, precision: str = "auto"):
    """``(model, tokenizer)`` of a student, with its chat-template override applied."""
    from sp2dpo import models

    dtype = "bfloat16" if _use_bf16(precision) else "float32"
    model, tokenizer = models.load_causal_lm(student.model, revision=student.revision, dtype=dtype)
    if student.chat_template:
        tokenizer.chat_template = models.chat_template_text(student.chat_template)
    if tokenizer.chat_template is None:
        raise ValueError(f"student {student.name!r} has no chat template; set train.students[].chat_template")
    return model, tokenizer


class _MetricsRecorder:
    """Keeps Trainer's per-step logs; forwards them to an MLflow run when one is given."""

    def __init__(self, tracker: Any | None) -> None:
        self.tracker = tracker
        self.history: list[dict[str, float]] = []

    def callback(self):
        from transformers import TrainerCallback

        recorder = self

        class _CB(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kwargs):
                if not state.is_world_process_zero or not logs:
                    return
                numeric = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and math.isfinite(v)}
                recorder.history.append({"step": state.global_step, **numeric})
                if recorder.tracker is not None:
                    recorder.tracker.log_metrics(numeric, step=state.global_step)

        return _CB()


def load_params(params_path: str | Path, train_config: str | Path | None = None) -> config.Params:
    """``params.yaml``, with its ``train`` section replaced by the one in ``train_config`` when
    given (e.g. ``configs/train/paper-gpu.yaml``); the result is validated like params.yaml."""
    if train_config is None:
        return config.load(params_path)
    import tempfile

    import yaml

    raw = config.read_yaml(params_path)
    override = config.read_yaml(train_config)
    if set(override) != {"train"}:
        raise config.ConfigError(f"{train_config}: expected exactly one top-level key `train`")
    raw["train"] = override["train"]
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "params.yaml"
        merged.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        return config.load(merged)


def run(
    student_name: str,
    method_name: str,
    *,
    params_path: str | Path = config.DEFAULT_PARAMS,
    paths: RunPaths | None = None,
    root: str | Path = ".",
    track: bool = True,
    train_config: str | Path | None = None,
) -> dict[str, Any]:
    """Train one (student, method) pair: dataset, trainer, adapter, metrics JSON, MLflow run.

    Every check on the beta artifact runs before the model loads, so a bad column stops the
    run before the first step.

    Returns:
        The metrics written to ``paths.report``.
    """
    from sp2dpo import tracking

    params = load_params(params_path, train_config)
    cfg: config.TrainConfig = params.train
    student, method = cfg.student(student_name), cfg.method(method_name)
    paths = paths or RunPaths.default(student.name, method.name, root)
    envelope = beta_envelope(params)
    dataset, data_info = build_dataset(cfg, method, paths, envelope)
    artifact_sha = artifacts.sha256_file(paths.beta) if Path(paths.beta).exists() else ""
    log.info("train %s-%s on %d pairs; beta %s", student.name, method.name, data_info["n_pairs"], data_info["beta"])

    model, tokenizer = load_student(student, cfg.precision)
    import tempfile

    run_dir = Path(tempfile.mkdtemp(prefix=f"sp2dpo-train-{student.name}-{method.name}-"))  # Trainer scratch
    args = make_dpo_config(cfg, student, run_dir, method.name)
    resolved = {
        "student": dataclasses.asdict(student),
        "method": dataclasses.asdict(method),
        "train": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("students", "methods")},
        "beta_envelope": list(envelope),
        "dpo_config": {k: _jsonable(v) for k, v in args.to_dict().items()},
    }
    pinned = {
        "method": method.name,
        "method_type": method.type,
        "student": student.name,
        "student_model": student.model,
        "beta_column": method.beta_column or "",
        "beta_artifact_sha256": artifact_sha,
    }
    is_main = int(os.environ.get("RANK", "0")) == 0
    tracker_cm = (
        tracking.start_run(f"{student.name}-{method.name}", params.flat(), pinned, root=root)
        if track and is_main
        else contextlib.nullcontext()
    )
    with tracker_cm as tracker:
        recorder = _MetricsRecorder(tracker)
        trainer = PerPairBetaTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=_peft_config(cfg.lora),
            callbacks=[recorder.callback()],
            loss_config=cfg.loss,
            beta_bounds=None if method.type == "dpo" else envelope,
            max_prompt_length=cfg.max_prompt_length,
        )
        start = time.perf_counter()
        result = trainer.train()
        elapsed = time.perf_counter() - start
        trainer.save_model(str(paths.adapter))
        normalize_adapter_dir(paths.adapter)
        losses_seen = [h["loss"] for h in recorder.history if "loss" in h]
        last = next((h for h in reversed(recorder.history) if "loss" in h), {})
        metrics = {
            "student": student.name,
            "method": method.name,
            "beta_column": method.beta_column or "",
            "beta_artifact_sha256": artifact_sha,
            "global_step": int(result.global_step),
            "train_loss": float(result.training_loss),
            "first_loss": float(losses_seen[0]) if losses_seen else None,
            "final_loss": float(losses_seen[-1]) if losses_seen else None,
            "final_rewards_margins": last.get("rewards/margins"),
            "final_rewards_accuracies": last.get("rewards/accuracies"),
            "train_seconds": round(elapsed, 3),
            **{k: v for k, v in data_info.items() if k != "beta"},
            "beta": data_info["beta"],
        }
        if tracker is not None:
            # The eval stage finds this run by the adapter's hash to log its metrics here.
            tracker.set_tags({"adapter_sha256": adapter_sha256(paths.adapter)})
            tracker.log_artifacts(paths.adapter, "adapter")
            tracker.log_dict(resolved, "config/resolved_train_config.json")
            tracker.log_dict({**data_info, "beta_column": method.beta_column or "",
                              "beta_artifact_sha256": artifact_sha}, "beta/beta_summary.json")
            tracker.log_metrics({"train_seconds": elapsed, "train_loss": float(result.training_loss)})
            metrics["mlflow_run_id"] = tracker.run_id
    if is_main:
        # The DVC metrics file holds only what the run determines (stable bytes on re-run):
        # wall time and the MLflow run id stay in MLflow and in the returned dict.
        artifacts.write_json(
            {k: v for k, v in metrics.items() if k not in VOLATILE_METRICS}, paths.report
        )
        write_loss_curve(recorder.history, paths.curve)
    shutil.rmtree(run_dir, ignore_errors=True)
    return metrics


def write_loss_curve(history: list[dict[str, float]], path: str | Path) -> None:
    """The per-step training curve as a DVC plot CSV: ``step, loss, rewards_margins,
    rewards_accuracies`` (one row per logged optimizer step; blank where not logged)."""
    columns = {"loss": "loss", "rewards/margins": "rewards_margins", "rewards/accuracies": "rewards_accuracies"}
    lines = ["step," + ",".join(columns.values())]
    for entry in history:
        if "loss" not in entry:
            continue
        cells = [repr(float(entry[k])) if k in entry else "" for k in columns]
        lines.append(f"{int(entry['step'])}," + ",".join(cells))
    artifacts.write_text("\n".join(lines) + "\n", path)


def adapter_sha256(path: str | Path) -> str:
    """sha256 of an adapter folder's weights file: the key that links eval results to the
    training run that produced the adapter."""
    return artifacts.sha256_file(Path(path) / "adapter_model.safetensors")


def normalize_adapter_dir(path: str | Path) -> None:
    """Make a saved adapter folder byte-stable across identical runs.

    PEFT writes ``target_modules`` from a set (its order follows Python's per-process string
    hashing), and Trainer pickles its arguments, scratch folder included, into
    ``training_args.bin``. The list is sorted and the pickle dropped: the resolved training config
    is logged to MLflow instead.
    """
    path = Path(path)
    (path / "training_args.bin").unlink(missing_ok=True)
    config_file = path / "adapter_config.json"
    if config_file.exists():
        data = json.loads(config_file.read_text())
        for key in ("target_modules", "modules_to_save", "exclude_modules"):
            if isinstance(data.get(key), list):
                data[key] = sorted(data[key])
        artifacts.write_json(data, config_file)


#: Run facts that differ between identical re-runs, kept out of the DVC metrics file.
VOLATILE_METRICS = frozenset({"train_seconds", "mlflow_run_id"})


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def main(argv: list[str] | None = None) -> None:
    """``python -m sp2dpo.train STUDENT METHOD`` (also under ``accelerate launch``)."""
    parser = argparse.ArgumentParser(description="Train one (student, method) of params.yaml")
    parser.add_argument("student")
    parser.add_argument("method")
    parser.add_argument("--params", default=str(config.DEFAULT_PARAMS))
    parser.add_argument("--train-config", default=None, help="YAML file whose `train` section replaces params.yaml's")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    ns = parser.parse_args(argv)
    from sp2dpo.cli import run_stage

    def _go() -> None:
        metrics = run(ns.student, ns.method, params_path=ns.params, track=not ns.no_track, train_config=ns.train_config)
        print(json.dumps(metrics, indent=2, sort_keys=True))

    run_stage(_go)


if __name__ == "__main__":  # pragma: no cover
    main()
