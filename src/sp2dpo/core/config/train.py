"""Sections ``train`` and ``matrix``: students, methods, the loss, LoRA and the TRL settings."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from sp2dpo.core.config.base import by_name, field
from sp2dpo.core.errors import ConfigError

#: Stage-name-safe identifiers (students and methods name DVC stages `train@<student>-<method>`).
_TRAIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.]*$"

#: Registered loss variants (mirrors ``sp2dpo.train.losses.LOSSES``; a test checks they agree).
LOSS_TYPES = ("sigmoid", "robust", "cdpo", "hinge", "dpo_margin", "ipo")


def _check_name(value: str, where: str) -> None:
    if not re.match(_TRAIN_NAME, value):
        raise ConfigError(
            f"{where} {value!r} must match {_TRAIN_NAME} (letters, digits, '_' and '.'; no '-')"
        )


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """One student model of the ``train`` stage."""

    name: str = field("smollm2", "Short name used in stage names, paths and MLflow (`train@<name>-<method>`).")
    model: str = field(
        "local:smollm2-135m-instruct",
        "Model spec: `local:<name>` (packaged GGUF, converted once to safetensors), an HF id, or a path.",
    )
    revision: str | None = field(None, "Pinned revision (commit hash) of an HF id; ignored for local specs.")
    chat_template: str | None = field(
        None, "Chat template override: a Jinja string or a path to a .jinja file (null: the tokenizer's)."
    )
    per_device_train_batch_size: int = field(2, "Pairs per device per micro-batch.")
    gradient_accumulation_steps: int = field(1, "Micro-batches accumulated per optimizer step.")
    accumulation_by_method: dict[str, int] = field(
        {}, "Per-method override of gradient_accumulation_steps (the paper's Gemma: DPO 4x2, SP2DPO 4x4)."
    )

    def accumulation(self, method: str) -> int:
        """Gradient-accumulation steps of this student for ``method``."""
        return self.accumulation_by_method.get(method, self.gradient_accumulation_steps)

    def __post_init__(self) -> None:
        _check_name(self.name, "train.students[].name")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError("batch size and gradient_accumulation_steps must be >= 1")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """One training method: `dpo` (global beta), `sp2dpo` (artifact column), `rand_beta`."""

    name: str = field("sp2dpo", "Short name used in stage names, paths and MLflow.")
    type: Literal["dpo", "sp2dpo", "rand_beta"] | None = field(
        None, "Method kind; null: taken from `name` when it is one of dpo, sp2dpo, rand_beta."
    )
    beta: float | None = field(None, "Global beta (type dpo only; the paper sweeps 0.1, 0.3, 0.5).")
    beta_column: str | None = field(
        None,
        "Beta artifact column (sp2dpo: default `beta_annotators_mean_ens` = JMAMP; rand_beta: "
        "default `beta_random`). SA `beta_<teacher>_v<k>`, SE `beta_<teacher>_ens`, MA "
        "`beta_annotators_mean_v<k>` for ablations.",
    )

    def __post_init__(self) -> None:
        _check_name(self.name, "train.methods[].name")
        kinds = ("dpo", "sp2dpo", "rand_beta")
        if self.type is None:
            if self.name not in kinds:
                raise ConfigError(
                    f"train.methods[].type is required for method {self.name!r}; choose one of "
                    f"{', '.join(kinds)}"
                )
            object.__setattr__(self, "type", self.name)
        if self.type == "dpo":
            if self.beta is None or not self.beta > 0:
                raise ConfigError(f"method {self.name!r} (dpo) needs a positive `beta`")
            if self.beta_column is not None:
                raise ConfigError(f"method {self.name!r} (dpo) uses a global beta: drop `beta_column`")
        else:
            if self.beta is not None:
                raise ConfigError(
                    f"method {self.name!r} ({self.type}) reads beta from the artifact: drop `beta`"
                )
            if self.beta_column is None:
                default = "beta_random" if self.type == "rand_beta" else "beta_annotators_mean_ens"
                object.__setattr__(self, "beta_column", default)


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The loss variant (``sp2dpo.train.losses.LOSSES``) and its knobs."""

    type: Literal["sigmoid", "robust", "cdpo", "hinge", "dpo_margin", "ipo"] = field(
        "sigmoid", "Loss variant: sigmoid (DPO/SP2DPO), robust, cdpo, hinge, dpo_margin, ipo."
    )
    label_smoothing: float = field(0.0, "Label-noise rate eps of robust and cdpo, in [0, 0.5).")
    margin: float = field(0.0, "Fixed margin m of dpo_margin, in reward units.")

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"train.loss.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter (PEFT); the reference model is the base with the adapter disabled."""

    enabled: bool = field(True, "Train a LoRA adapter (false: full fine-tuning with a reference copy).")
    r: int = field(16, "LoRA rank.")
    alpha: int = field(32, "LoRA alpha.")
    dropout: float = field(0.05, "LoRA dropout.")
    target_modules: list[str] = field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Modules that get an adapter (the paper: q,k,v,o,gate,up,down).",
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train`` stage: students x methods, DPO inner loop with beta <- beta_i (paper App. L)."""

    students: list[StudentConfig] = field([StudentConfig()], "Student models (DVC matrix axis).")
    methods: list[MethodConfig] = field(
        [
            MethodConfig(name="dpo", beta=0.1),
            MethodConfig(name="sp2dpo"),
            MethodConfig(name="rand_beta"),
        ],
        "Training methods (DVC matrix axis).",
    )
    loss: LossConfig = field(LossConfig(), "Loss variant and its knobs.")
    lora: LoraSettings = field(LoraSettings(), "LoRA settings.")
    learning_rate: float = field(5e-5, "Peak learning rate (not stated in the paper [U]).")
    optim: str = field("adamw_torch", "Optimizer name of transformers (the paper: paged_adamw_32bit).")
    lr_scheduler_type: str = field("cosine", "LR schedule (the paper: cosine).")
    warmup_ratio: float = field(0.1, "Fraction of steps used for linear warm-up (the paper: 0.1).")
    weight_decay: float = field(0.0, "AdamW weight decay.")
    max_length: int = field(64, "Max tokens of prompt+completion (the paper: 2048).")
    max_prompt_length: int = field(32, "Max prompt tokens, keeping the prompt's end (the paper: 1536).")
    num_train_epochs: float = field(1.0, "Epochs over the training pairs (the paper: 1).")
    max_steps: int = field(3, "Optimizer steps; -1: run `num_train_epochs` (offline default: 3).")
    limit: int | None = field(None, "Train on the first N annotated pairs (null: all of them).")
    seed: int = field(42, "Seed of LoRA init, data order and dropout.")
    precompute_ref_log_probs: bool = field(
        True, "Compute reference log-probs once before training (the paper: on)."
    )
    drop_missing_beta: bool = field(
        True,
        "Train every method on the pairs the beta artifact covers, dropping the others (the "
        "paper); false: stop with an error when a pair has no beta_i.",
    )
    precision: Literal["auto", "fp32", "bf16"] = field(
        "auto", "auto: bf16 when CUDA is available, else fp32."
    )
    gradient_checkpointing: bool = field(False, "Gradient checkpointing (the paper: on).")
    group_by_length: bool = field(False, "Group pairs of similar length into batches (the paper: on).")
    logging_steps: int = field(1, "Log metrics (MLflow) every N optimizer steps.")
    launcher: str = field(
        "python",
        "Command that runs `stages/train.py` in the DVC stage (multi-GPU: `accelerate launch "
        "--config_file configs/accelerate/ddp-4gpu.yaml`). Part of the stage's command, so a "
        "change re-runs training.",
    )

    def __post_init__(self) -> None:
        for kind, items in (("students", self.students), ("methods", self.methods)):
            names = [item.name for item in items]
            if len(set(names)) != len(names):
                raise ConfigError(f"train.{kind}: names must be unique, got {names}")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError("train.max_prompt_length must be smaller than train.max_length")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"train.limit must be a positive integer or null, got {self.limit}")
        if not self.launcher.strip():
            raise ConfigError("train.launcher must be a command, e.g. `python`")

    def student(self, name: str) -> StudentConfig:
        """The student called ``name``; the error lists the configured ones."""
        return by_name(self.students, name, "train.students")

    def method(self, name: str) -> MethodConfig:
        """The method called ``name``; the error lists the configured ones."""
        return by_name(self.methods, name, "train.methods")



@dataclasses.dataclass(frozen=True)
class MatrixConfig:
    """Which students x methods the pipeline trains and evaluates (the DVC matrix axes).

    ``train@<student>-<method>`` runs for every pair of names listed here, and ``eval@<student>``
    for every student; each name must be an entry of ``train.students`` / ``train.methods``.
    Listing a subset keeps other configured entries without running them.
    """

    students: list[str] = field(["smollm2"], "Names of `train.students` to train and evaluate.")
    methods: list[str] = field(
        ["dpo", "sp2dpo", "rand_beta"], "Names of `train.methods` to train for every student."
    )

    def __post_init__(self) -> None:
        for kind, names in (("students", self.students), ("methods", self.methods)):
            if not names:
                raise ConfigError(f"matrix.{kind} must name at least one entry")
            if len(set(names)) != len(names):
                raise ConfigError(f"matrix.{kind}: names must be unique, got {names}")

    def check(self, train: TrainConfig) -> None:
        """Every listed name is configured in ``train``; the error lists the configured ones."""
        for kind, names, items in (
            ("students", self.students, train.students),
            ("methods", self.methods, train.methods),
        ):
            known = [item.name for item in items]
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ConfigError(
                    f"matrix.{kind}: {', '.join(unknown)} not in train.{kind} "
                    f"({', '.join(known)})"
                )
