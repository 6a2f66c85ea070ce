"""The ``train`` stage: one (student, method) run with TRL's DPO inner loop and beta <- beta_i.

:func:`run` is the one entry point of ``stages/train.py`` and ``sp2dpo train``: dataset
(:mod:`.dataset`), trainer (:mod:`.trainer`), adapter, metrics JSON, loss curve, MLflow run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sp2dpo import tracking
from sp2dpo.core import artifacts
from sp2dpo.core.config import BetaConfig, StudentConfig, TrainConfig, flatten
from sp2dpo.llm import models
from sp2dpo.train.dataset import build_dataset
from sp2dpo.train.trainer import PerPairBetaTrainer, make_dpo_config, peft_config, use_bf16

log = logging.getLogger(__name__)


def load_student(student: StudentConfig, precision: str = "auto"):
    """``(model, tokenizer)`` of a student, with its chat-template override applied."""
    dtype = "bfloat16" if use_bf16(precision) else "float32"
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


@dataclasses.dataclass(frozen=True)
class TrainPaths:
    """Where one (student, method) run reads and writes; :meth:`pipeline` gives the DVC stage's.

    Attributes:
        pairs: the filtered pairs table.
        beta: the beta schedule (an artifact CSV, or ``prompt_id`` plus beta columns).
        adapter: the adapter folder to write.
        report: the metrics JSON (``reports/train/<student>-<method>.json`` in the pipeline).
        curve: the per-step loss curve CSV (a DVC plot in the pipeline).
    """

    pairs: Path
    beta: Path
    adapter: Path
    report: Path
    curve: Path

    @classmethod
    def pipeline(cls, student: str, method: str) -> TrainPaths:
        """The paths of ``train@<student>-<method>`` in dvc.yaml."""
        return cls(
            pairs=Path("data/pairs/filtered.parquet"),
            beta=Path("data/beta/beta.csv"),
            adapter=Path("models") / student / method,
            report=Path("reports/train") / f"{student}-{method}.json",
            curve=Path("reports/train") / f"{student}-{method}_loss.csv",
        )


def _dataset_inputs(paths: TrainPaths, beta_sha: str) -> list[tracking.DatasetRef]:
    """The run's inputs as MLflow datasets: the pairs table and (when there is one) the beta
    artifact, each with its file sha256, so the UI shows which data a run trained on."""
    inputs = [tracking.DatasetRef("pairs", str(paths.pairs), artifacts.read_table(paths.pairs),
                                  artifacts.sha256_file(paths.pairs))]
    if beta_sha:
        inputs.append(tracking.DatasetRef("beta", str(paths.beta), artifacts.read_table(paths.beta), beta_sha))
    return inputs


def _params_of(train: TrainConfig) -> dict[str, Any]:
    """``train`` as params: each method's ``train_args`` with only the keys it sets (as in
    params.yaml), so methods without overrides add no params."""
    data = dataclasses.asdict(train)
    for entry, method in zip(data["methods"], train.methods, strict=True):
        entry["train_args"] = method.train_args.overrides()
    return data


def run(
    train: TrainConfig,
    beta: BetaConfig,
    student_name: str,
    method_name: str,
    paths: TrainPaths,
    *,
    track: bool = True,
    logged_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one (student, method) pair: dataset, trainer, adapter, metrics JSON, MLflow run.

    Every check on the beta artifact runs before the model loads, so a bad column stops the
    run before the first step.

    Args:
        train: section ``train``; ``student_name`` and ``method_name`` name its entries.
        beta: section ``beta`` (the envelope every beta_i must lie in).
        paths: inputs and outputs (:class:`TrainPaths`).
        track: log the run to MLflow (main process only).
        logged_params: the flattened params logged to MLflow (default: these two sections).

    Returns:
        The metrics written to ``paths.report``, plus the wall time and MLflow run id.
    """
    cfg = train
    student, method = cfg.student(student_name), cfg.method(method_name)
    train_args = method.train_args.overrides()  # the method's own settings (docs/training.md)
    if train_args:
        log.info("method %s overrides %s", method.name, ", ".join(f"{k}={v}" for k, v in train_args.items()))
    envelope = (beta.min, beta.max)
    run_seed = cfg.run_args(student, method.name)["seed"]
    data_cfg = cfg if run_seed == cfg.seed else dataclasses.replace(cfg, seed=run_seed)  # DPO-PoP's tuples
    dataset, data_info = build_dataset(data_cfg, method, paths.pairs, paths.beta, envelope)
    artifact_sha = artifacts.sha256_file(paths.beta) if Path(paths.beta).exists() else ""
    log.info("train %s-%s on %d pairs; beta %s", student.name, method.name, data_info["n_pairs"], data_info["beta"])
    if logged_params is None:
        logged_params = flatten({"train": _params_of(train), "beta": dataclasses.asdict(beta)})
    # The run's own method, its loss and every knob of it (defaults filled in) as run params, and
    # each of the method's training overrides as `train_args.<key>`.
    logged_params = {**logged_params, "method.name": method.name, "method.loss": method.loss,
                     **{f"method.loss_args.{k}": v for k, v in dataclasses.asdict(method.args).items()},
                     **{f"train_args.{k}": v for k, v in train_args.items()}}

    model, tokenizer = load_student(student, cfg.precision)
    run_dir = _scratch_dir(f"sp2dpo-train-{student.name}-{method.name}-")  # Trainer scratch
    dataset = _shared_copy(dataset, run_dir)
    args = make_dpo_config(cfg, student, run_dir, method.name)
    resolved = {
        "student": dataclasses.asdict(student),
        "method": {**dataclasses.asdict(method), "train_args": train_args},
        "train": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("students", "methods")},
        "beta_envelope": list(envelope),
        "train_args": train_args,
        "dpo_config": {k: _jsonable(v) for k, v in args.to_dict().items()},
    }
    loss_args = dataclasses.asdict(method.args)
    pinned = {
        "method": method.name,
        "loss": method.loss,
        "student": student.name,
        "student_model": student.model,
        "beta_column": method.beta_column or "",
        "beta_artifact_sha256": artifact_sha,
    }
    is_main = int(os.environ.get("RANK", "0")) == 0
    tracker_cm = (
        tracking.start_run(f"{student.name}-{method.name}", logged_params, pinned)
        if track and is_main
        else contextlib.nullcontext()
    )
    with tracker_cm as tracker:
        if tracker is not None:
            tracker.log_datasets(_dataset_inputs(paths, artifact_sha))
        recorder = _MetricsRecorder(tracker)
        trainer = PerPairBetaTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=peft_config(cfg.lora),
            callbacks=[recorder.callback()],
            loss=method.loss,
            loss_args=method.args,
            # beta_i rescaled for SimPO / alpha-DPO leaves the envelope by design
            beta_bounds=envelope if method.per_pair and "beta_rescale_factor" not in data_info else None,
            max_prompt_length=cfg.max_prompt_length,
        )
        start = time.perf_counter()
        result = trainer.train()
        elapsed = time.perf_counter() - start
        trainer.remove_target()
        trainer.save_model(str(paths.adapter))
        beta_source = (f"column `{method.beta_column}` of the beta artifact" if method.beta_column
                       else f"the global value {method.beta}")
        normalize_adapter_dir(paths.adapter, base_model=student.model, revision=student.revision,
                              card=model_card(student, method.name, method.loss, beta_source))
        losses_seen = [h["loss"] for h in recorder.history if "loss" in h]
        last = next((h for h in reversed(recorder.history) if "loss" in h), {})
        metrics = {
            "student": student.name,
            "method": method.name,
            "loss": method.loss,
            "loss_args": loss_args,
            # only a method with overrides: the default runs' report keeps its bytes
            **({"train_args": train_args} if train_args else {}),
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
            **({"loss_state": trainer.moments.state_dict()} if trainer.moments.values else {}),
        }
        if tracker is not None:
            # The eval stage finds this run by the adapter's hash to log its metrics here.
            tracker.set_tags({"adapter_sha256": tracking.adapter_sha256(paths.adapter)})
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
    _end_distributed()
    if is_main:
        shutil.rmtree(run_dir, ignore_errors=True)
    return metrics


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _scratch_dir(prefix: str) -> Path:
    """A fresh scratch folder, the same one for every process of a multi-process run (rank 0
    creates it and sends its path to the others)."""
    if not _distributed():
        return Path(tempfile.mkdtemp(prefix=prefix))
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=not torch.cuda.is_available())
    path = [tempfile.mkdtemp(prefix=prefix) if state.is_main_process else None]
    broadcast_object_list(path, from_process=0)
    return Path(path[0])


def _shared_copy(dataset: Any, run_dir: Path) -> Any:
    """Under several processes, the dataset as files in the shared scratch folder: TRL caches the
    precomputed reference log-probs beside the dataset's files, which every process must find
    (an in-memory dataset would put them in a per-process temporary folder)."""
    if not _distributed():
        return dataset
    from accelerate import PartialState
    from datasets import load_from_disk

    state = PartialState()
    folder = run_dir / "dataset"
    if state.is_main_process:
        dataset.save_to_disk(str(folder))
    state.wait_for_everyone()
    return load_from_disk(str(folder))


def _end_distributed() -> None:
    """Under several processes (``accelerate launch``): wait for every rank, then close the
    process group; gloo's threads otherwise abort the interpreter at exit now and then."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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


#: Tokenizer files Trainer saves beside the adapter: a copy of the student's tokenizer (the eval
#: stage loads the student's own, with the same chat-template override), 3.5 MB for SmolLM2.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
)


def normalize_adapter_dir(
    path: str | Path,
    *,
    base_model: str | None = None,
    revision: str | None = None,
    card: str | None = None,
) -> None:
    """Make a saved adapter folder a portable, byte-stable function of the run.

    PEFT writes ``target_modules`` from a set (its order follows Python's per-process string
    hashing), Trainer pickles its arguments, scratch folder included, into ``training_args.bin``,
    and both record the base model as the folder it was loaded from (a machine's cache path).
    The lists are sorted, the pickle and the tokenizer copy dropped (the resolved training
    config is logged to MLflow instead), the base model recorded as ``base_model`` (the
    student's spec: a Hub id, or ``local:<name>``) at ``revision``, and the model card replaced
    by ``card``.
    """
    path = Path(path)
    for name in ("training_args.bin", *TOKENIZER_FILES):
        (path / name).unlink(missing_ok=True)
    config_file = path / "adapter_config.json"
    if config_file.exists():
        data = json.loads(config_file.read_text())
        for key in ("target_modules", "modules_to_save", "exclude_modules"):
            if isinstance(data.get(key), list):
                data[key] = sorted(data[key])
        if base_model is not None:
            data["base_model_name_or_path"] = base_model
            data["revision"] = revision
        artifacts.write_json(data, config_file)
    if card is not None:
        artifacts.write_text(card, path / "README.md")


def model_card(student: StudentConfig, method_name: str, loss: str, beta_source: str) -> str:
    """The adapter folder's README: what it is and how it was made (no paths, no times)."""
    revision = f" at revision `{student.revision}`" if student.revision else ""
    return (
        "---\n"
        f"base_model: {student.model}\n"
        "library_name: peft\n"
        "tags: [sp2dpo, dpo, lora, trl]\n"
        "---\n\n"
        f"# {student.name}-{method_name}\n\n"
        f"A LoRA adapter of `{student.model}`{revision}, trained by sp2dpo's train stage with the "
        f"`{loss}` loss and beta from {beta_source}. The run's params, loss curve and evaluation "
        "metrics are in its MLflow run (tag `adapter_sha256`); `dvc.lock` records its inputs.\n"
    )


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

