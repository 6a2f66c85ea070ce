"""Benchmark of the train stage; prints one JSON object.

1. Step time of PerPairBetaTrainer over TRL's own DPOTrainer on identical batches (LoRA, the real
   SmolLM2-135M student, precomputed reference log-probs so the step is the policy pass): the two
   trainers alternate on the same collated batch, and the ratio of the median step times is
   reported (target <= 1.02).
2. One epoch (init, which includes the reference precompute, plus training) with and without
   precomputed reference log-probs.
3. Step time of every registered loss relative to DPO (``sigmoid``) on the same pairs: one
   trainer per loss, all stepping in round-robin order on their own collated batch of the same
   pairs (reference-free losses skip the reference pass; token-level ones and DPO-PoP run it
   online; DPO-PoP also forwards each tuple's weaker pair under its target).

Usage: python benchmarks/bench_train.py [--pairs 8] [--steps 6] [--max-length 64] [--no-methods]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

import pandas as pd
import torch
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

from sp2dpo import train
from sp2dpo.core import artifacts, config, schemas
from sp2dpo.llm import models
from sp2dpo.train.dataset import pop_frame, to_preference_dataset

ROOT = Path(__file__).resolve().parents[1]


def _pairs(n: int, select: str = "shortest") -> pd.DataFrame:
    path = ROOT / "data/pairs/filtered.parquet"
    if path.exists():
        frame = artifacts.read_table(path, schemas.FilteredPairsTable)
        if select == "first":
            return frame.head(n)
        # The pairs with the shortest prompts, so short max lengths keep every pair.
        order = frame["prompt"].str.len().sort_values(kind="stable").index
        return frame.loc[order].head(n).reset_index(drop=True)
    raise SystemExit(f"{path} missing: run `dvc pull data.dvc && dvc repro filter` first")


BATCH = 2


def _args(out: str, precompute: bool, max_length: int, steps: int, **kw) -> DPOConfig:
    return DPOConfig(
        output_dir=out, per_device_train_batch_size=BATCH, max_length=max_length, max_steps=steps,
        precompute_ref_log_probs=precompute, report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, dataloader_num_workers=0, learning_rate=1e-4, seed=0,
        bf16=torch.cuda.is_available(), **kw,
    )


def _lora() -> LoraConfig:
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def step_ratio(model, tok, frame: pd.DataFrame, steps: int, max_length: int, tmp: str) -> dict:
    beta = 0.1
    data = to_preference_dataset(train.attach_beta(frame, beta))
    ours = train.PerPairBetaTrainer(model=copy.deepcopy(model), args=_args(f"{tmp}/a", True, max_length, steps),
                                    train_dataset=data, processing_class=tok, peft_config=_lora())
    trl = DPOTrainer(model=copy.deepcopy(model), args=_args(f"{tmp}/b", True, max_length, steps, beta=beta),
                     train_dataset=data.remove_columns([train.BETA_COLUMN]), processing_class=tok,
                     peft_config=_lora())
    times: dict[str, list[float]] = {"ours": [], "trl": []}
    batches = {}
    for name, trainer in (("ours", ours), ("trl", trl)):
        trainer.create_optimizer_and_scheduler(num_training_steps=steps)
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.train()
        examples = [trainer.train_dataset[i] for i in range(BATCH)]
        batches[name] = trainer._prepare_inputs(trainer.data_collator(examples))
    for i in range(steps + 1):  # the first round is a warm-up
        order = (("ours", ours), ("trl", trl)) if i % 2 == 0 else (("trl", trl), ("ours", ours))
        for name, trainer in order:
            _sync()
            start = time.perf_counter()
            trainer.training_step(trainer.model, batches[name])
            _sync()
            trainer.model.zero_grad()
            if i:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    mean = {k: statistics.fmean(v) for k, v in times.items()}
    return {
        "steps_timed": steps,
        "step_seconds_median_per_pair_beta": round(med["ours"], 4),
        "step_seconds_median_trl": round(med["trl"], 4),
        "step_time_ratio": round(med["ours"] / med["trl"], 4),
        "step_time_ratio_of_means": round(mean["ours"] / mean["trl"], 4),
        "target_ratio": 1.02,
        "tokens_per_step": int(batches["ours"]["attention_mask"].sum()),
    }


def epoch_precompute(model, tok, frame: pd.DataFrame, max_length: int, tmp: str, repeats: int) -> dict:
    betas = pd.Series([0.03 + 0.27 * i / max(len(frame) - 1, 1) for i in range(len(frame))],
                      index=frame["prompt_id"].astype(str), name="beta")
    frame_beta = train.attach_beta(frame, betas)
    out: dict = {}
    # Alternate the two settings `repeats` times and keep each one's fastest epoch.
    for r in range(repeats):
        for precompute in ((True, False) if r % 2 == 0 else (False, True)):
            # A fresh fingerprint per epoch, so no epoch reuses cached reference log-probs.
            data = to_preference_dataset(frame_beta).add_column("run", [f"{r}-{precompute}"] * len(frame_beta))
            _sync()
            start = time.perf_counter()
            trainer = train.PerPairBetaTrainer(
                model=copy.deepcopy(model),
                args=_args(f"{tmp}/e{r}{int(precompute)}", precompute, max_length, -1, num_train_epochs=1,
                           logging_strategy="no"),
                train_dataset=data, processing_class=tok, peft_config=_lora(),
            )
            _sync()
            init = time.perf_counter() - start
            trainer.train()
            _sync()
            total = time.perf_counter() - start
            key = "with_precompute" if precompute else "without_precompute"
            row = {"init_seconds": round(init, 3), "epoch_seconds_total": round(total, 3),
                   "train_seconds": round(total - init, 3), "steps": trainer.state.global_step}
            if key not in out or row["epoch_seconds_total"] < out[key]["epoch_seconds_total"]:
                out[key] = row
            del trainer
    out["repeats"] = repeats
    out["epoch_ratio_with_over_without"] = round(
        out["with_precompute"]["epoch_seconds_total"] / out["without_precompute"]["epoch_seconds_total"], 4)
    return out


#: Global betas on each loss's own scale for the method benchmark.
_METHOD_BETA = {"simpo": 2.0, "alpha_dpo": 2.5}


def _method_data(loss: str, frame: pd.DataFrame):
    data = train.attach_beta(frame, _METHOD_BETA.get(loss, 0.1))
    margins = [float(i) for i in range(len(data))]
    if loss == "dpo_pop":
        args = config.build_loss_args(loss, {}, "bench")
        # its first tuples (stronger pairs from the batch's pairs, each with a weaker partner)
        data = pop_frame(data, pd.Series(margins).to_numpy(), args, seed=0)[0].head(len(frame))
    elif config.LOSS_SPECS[loss].margins:
        data["margin"] = margins
    return to_preference_dataset(data)


def method_step_ratios(model, tok, frame: pd.DataFrame, steps: int, max_length: int, tmp: str) -> dict:
    """Median step time of every loss over DPO's on batches of the same pairs (round robin)."""
    trainers, batches = {}, {}
    for loss in config.LOSS_SPECS:
        data = _method_data(loss, frame)
        trainer = train.PerPairBetaTrainer(
            model=copy.deepcopy(model), args=_args(f"{tmp}/m-{loss}", True, max_length, steps),
            train_dataset=data, processing_class=tok, peft_config=_lora(), loss=loss,
        )
        trainer.create_optimizer_and_scheduler(num_training_steps=steps)
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.train()
        batches[loss] = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)]))
        trainers[loss] = trainer
    times: dict[str, list[float]] = {k: [] for k in trainers}
    names = list(trainers)
    for i in range(steps + 1):  # the first round is a warm-up
        for name in names[i % len(names):] + names[: i % len(names)]:
            _sync()
            start = time.perf_counter()
            trainers[name].training_step(trainers[name].model, batches[name])
            _sync()
            trainers[name].model.zero_grad()
            if i:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "steps_timed": steps,
        "step_seconds_median_dpo": round(med["sigmoid"], 4),
        "step_time_ratio_over_dpo": {k: round(v / med["sigmoid"], 3) for k, v in sorted(med.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=8, help="pairs in the epoch benchmark")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per trainer")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1, help="epochs per setting (alternating; fastest kept)")
    parser.add_argument("--batch", type=int, default=2, help="pairs per device batch")
    parser.add_argument("--no-methods", action="store_true", help="skip the per-loss step-time comparison")
    parser.add_argument("--select", choices=["shortest", "first"], default="shortest",
                        help="which pairs: the shortest prompts (fit short max lengths) or the first ones")
    ns = parser.parse_args()
    global BATCH
    BATCH = ns.batch
    model, tok = models.load_causal_lm("local:smollm2-135m-instruct")
    frame = _pairs(max(ns.pairs, BATCH), ns.select)
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "benchmark": "train",
            "model": "local:smollm2-135m-instruct",
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "max_length": ns.max_length,
            "per_device_batch": BATCH,
            "pair_selection": ns.select,
            "lora_r": 16,
            "step_time": step_ratio(model, tok, frame.head(BATCH), ns.steps, ns.max_length, tmp),
            "epoch": {"pairs": len(frame), **epoch_precompute(model, tok, frame, ns.max_length, tmp, ns.repeats)},
        }
        if not ns.no_methods:
            result["methods"] = method_step_ratios(model, tok, frame.head(BATCH), ns.steps, ns.max_length, tmp)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
