"""Sections ``train`` and ``matrix``: students, methods, the loss, LoRA and the TRL settings."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from sp2dpo.core.config.base import build, by_name, field
from sp2dpo.core.config.losses import LossSpec, build_loss_args, loss_spec
from sp2dpo.core.errors import ConfigError

#: Stage-name-safe identifiers (students and methods name DVC stages `train@<student>-<method>`).
_TRAIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.]*$"



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


def _check_run_settings(values: Mapping[str, Any], where: str) -> None:
    """Ranges of the optimiser, batch and seed settings (the global keys, or a method's
    ``train_args``); ``None`` is a value not given. The error names ``<where>.<key>``."""
    rules = {
        "learning_rate": (lambda v: math.isfinite(v) and v > 0, "a positive number"),
        "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1) (a fraction of the steps)"),
        "weight_decay": (lambda v: math.isfinite(v) and v >= 0, "a number >= 0"),
        "num_train_epochs": (lambda v: math.isfinite(v) and v > 0, "a positive number"),
        "per_device_train_batch_size": (lambda v: v >= 1, ">= 1"),
        "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
        "seed": (lambda v: v >= 0, ">= 0"),
    }
    for key, value in values.items():
        if value is None or key not in rules:
            continue
        ok, wanted = rules[key]
        if not ok(value):
            raise ConfigError(f"{where}.{key} must be {wanted}, got {value}")


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """A method's own training settings (``train.methods[].train_args``): each key given replaces
    the global ``train.<key>`` (and, for the batch keys, the student's batch shape) in that
    method's runs; a key left out (null) keeps it."""

    learning_rate: float | None = field(
        None, "This method's peak learning rate, over `train.learning_rate` (null: that one)."
    )
    warmup_ratio: float | None = field(
        None, "This method's warm-up fraction, in [0, 1), over `train.warmup_ratio` (null: that one)."
    )
    weight_decay: float | None = field(
        None, "This method's AdamW weight decay, over `train.weight_decay` (null: that one)."
    )
    per_device_train_batch_size: int | None = field(
        None,
        "This method's pairs per device per micro-batch for every student, over the student's "
        "`per_device_train_batch_size` (null: the student's).",
    )
    gradient_accumulation_steps: int | None = field(
        None,
        "This method's micro-batches per optimizer step for every student, over the student's "
        "`accumulation_by_method` and `gradient_accumulation_steps` (null: the student's).",
    )
    num_train_epochs: float | None = field(
        None, "This method's epochs, over `train.num_train_epochs` (null: that one)."
    )
    seed: int | None = field(None, "This method's run seed, over `train.seed` (null: that one).")

    def overrides(self) -> dict[str, Any]:
        """The keys this method sets, in field order (empty: the method trains with the globals)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


#: Keys a method may override in ``train.methods[].train_args``.
TRAIN_ARG_KEYS = tuple(f.name for f in dataclasses.fields(TrainArgs))


#: Methods that need no `beta` or `beta_column`: the artifact column they read by default.
DEFAULT_BETA_COLUMNS = {"sp2dpo": "beta_annotators_mean_ens", "rand_beta": "beta_random"}


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """One training method: a loss, where its beta comes from, and the loss's own knobs."""

    name: str = field("sp2dpo", "Short name used in stage names, paths and MLflow.")
    loss: str = field(
        "sigmoid",
        "Registered loss (docs/losses.md): sigmoid, ipo, hinge, robust, cdpo, nca_pair, bco_pair, "
        "simpo, cpo, sampo, beta_dpo, alpha_dpo, focalpo, dpo_margin, scaled_bt, pmo, sgdpo, dpo_pop.",
    )
    beta: float | None = field(None, "Global beta for every pair (the paper's DPO sweeps 0.1, 0.3, 0.5).")
    beta_column: str | None = field(
        None,
        "Beta artifact column giving beta_i per pair (null with neither set: "
        "`beta_annotators_mean_ens` = JMAMP for a method named sp2dpo, `beta_random` for "
        "rand_beta). SA `beta_<teacher>_v<k>`, SE `beta_<teacher>_ens`, MA "
        "`beta_annotators_mean_v<k>` for ablations.",
    )
    loss_args: dict[str, Any] = field(
        {}, "The loss's own knobs (docs/losses.md lists them with their defaults; {} runs the defaults)."
    )
    train_args: TrainArgs = field(
        TrainArgs(),
        "This method's own learning rate, warm-up, weight decay, batch shape, epochs and seed "
        "(`train_args.*`; a key left out: the global `train.*` value or the student's batch "
        "shape). A key given here wins over both, for every student (docs/training.md).",
    )

    def __post_init__(self) -> None:
        _check_name(self.name, "train.methods[].name")
        where = f"train.methods[{self.name}]"
        if isinstance(self.train_args, Mapping):  # built in Python: a mapping of the keys above
            object.__setattr__(self, "train_args", build(TrainArgs, self.train_args, f"{where}.train_args"))
        spec = loss_spec(self.loss, f"{where}.loss")
        build_loss_args(self.loss, self.loss_args, f"{where}.loss_args")
        if self.beta is not None and self.beta_column is not None:
            raise ConfigError(f"{where}: give `beta` (one temperature) or `beta_column` (per pair), not both")
        if self.beta is None and self.beta_column is None:
            if self.name not in DEFAULT_BETA_COLUMNS:
                raise ConfigError(
                    f"{where}: needs `beta` (a global temperature, e.g. 0.1) or `beta_column` (a "
                    "beta artifact column, e.g. beta_annotators_mean_ens)"
                )
            object.__setattr__(self, "beta_column", DEFAULT_BETA_COLUMNS[self.name])
        if self.beta is not None and not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"{where}.beta must be a positive number, got {self.beta}")
        if self.beta_column is not None and not spec.per_pair_beta:
            raise ConfigError(
                f"{where}: loss {self.loss!r} cannot use a per-pair beta ({spec.summary}); give a "
                "global `beta` instead of `beta_column`"
            )

    @property
    def per_pair(self) -> bool:
        """beta_i comes from the artifact (else one global beta)."""
        return self.beta_column is not None

    @property
    def args(self) -> Any:
        """The loss's knobs as their dataclass (defaults filled in)."""
        return build_loss_args(self.loss, self.loss_args, f"train.methods[{self.name}].loss_args")

    @property
    def spec(self) -> LossSpec:
        """Facts about the loss (reference, token level, margins)."""
        return loss_spec(self.loss)


def _m(name: str, loss: str, beta: float | None = None, column: str | None = None, **loss_args: Any) -> MethodConfig:
    return MethodConfig(name=name, loss=loss, beta=beta, beta_column=column, loss_args=loss_args)


#: The method catalogue of the offline default (``matrix.methods`` runs dpo, sp2dpo, rand_beta).
#: DPO-PoP's min_margin_diff is lowered to 0.1 for the 8-pair offline sample, whose semantic
#: margins span about 0.6 on the score scale (the paper's 1.0 needs real score spreads).
DEFAULT_METHODS = (
    _m("dpo", "sigmoid", 0.1),
    _m("sp2dpo", "sigmoid", column="beta_annotators_mean_ens"),
    _m("rand_beta", "sigmoid", column="beta_random"),
    _m("ipo", "ipo", 0.1),
    _m("hinge", "hinge", 0.1),
    _m("robust", "robust", 0.1),
    _m("cdpo", "cdpo", 0.1),
    _m("nca", "nca_pair", 0.1),
    _m("bco", "bco_pair", 0.1),
    _m("simpo", "simpo", 2.0),
    _m("cpo", "cpo", 0.1),
    _m("sampo", "sampo", 0.1),
    _m("beta_dpo", "beta_dpo", 0.1),
    _m("alpha_dpo", "alpha_dpo", 2.5),
    _m("focalpo", "focalpo", 0.1),
    _m("dpo_margin1", "dpo_margin", 0.1, margin_source="fixed"),
    _m("dpo_margin", "dpo_margin", 0.1),
    _m("scaled_bt", "scaled_bt", 0.1),
    _m("pmo", "pmo", 0.05),
    _m("sp2dpo_pmo", "pmo", column="beta_annotators_mean_ens"),
    _m("sgdpo", "sgdpo", 0.1),
    _m("dpo_pop", "dpo_pop", 0.1, min_margin_diff=0.1),
    _m("sp2dpo_pop", "dpo_pop", column="beta_annotators_mean_ens", min_margin_diff=0.1),
)


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter (PEFT); the reference model is the base with the adapter disabled."""

    enabled: bool = field(True, "Train a LoRA adapter (false: full fine-tuning with a reference copy).")
    r: int = field(4, "LoRA rank (the paper: 16; the offline default keeps adapters ~1 MB, so "
                      "the committed outputs fit the bundled DVC remote).")
    alpha: int = field(8, "LoRA alpha (the paper: 32; alpha/r = 2 as there).")
    dropout: float = field(0.05, "LoRA dropout.")
    target_modules: list[str] = field(
        ["q_proj", "v_proj"],
        "Modules that get an adapter (the paper, profiles/paper-students.yaml: "
        "q,k,v,o,gate,up,down).",
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train`` stage: students x methods, DPO inner loop with beta <- beta_i (paper App. L)."""

    students: list[StudentConfig] = field([StudentConfig()], "Student models (DVC matrix axis).")
    methods: list[MethodConfig] = field(
        list(DEFAULT_METHODS),
        "Training methods (`matrix.methods` picks which run): the paper's three, the field's "
        "baselines and the related papers' methods, each with its customary beta (docs/losses.md).",
    )
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
    seed: int = field(
        42, "Seed of LoRA init, data order and dropout (the paper's runners: 0, as the paper-students profile)."
    )
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
        global_keys = ("learning_rate", "warmup_ratio", "weight_decay", "num_train_epochs", "seed")
        _check_run_settings({k: getattr(self, k) for k in global_keys}, "train")
        for i, method in enumerate(self.methods):
            _check_run_settings(method.train_args.overrides(), f"train.methods[{i}].train_args")

    def student(self, name: str) -> StudentConfig:
        """The student called ``name``; the error lists the configured ones."""
        return by_name(self.students, name, "train.students")

    def method(self, name: str) -> MethodConfig:
        """The method called ``name``; the error lists the configured ones."""
        return by_name(self.methods, name, "train.methods")

    def run_args(self, student: StudentConfig, method_name: str) -> dict[str, Any]:
        """The optimiser, batch and seed settings of the run (``student``, ``method_name``).

        Precedence, key by key: the method's ``train_args`` win; else the batch keys come from
        the student (``accumulation_by_method``, then ``gradient_accumulation_steps``) and the
        others from the global ``train.*`` keys. A name that is no configured method has no
        overrides.
        """
        method = next((m for m in self.methods if m.name == method_name), None)
        settings: dict[str, Any] = {
            "learning_rate": self.learning_rate,
            "warmup_ratio": self.warmup_ratio,
            "weight_decay": self.weight_decay,
            "per_device_train_batch_size": student.per_device_train_batch_size,
            "gradient_accumulation_steps": student.accumulation(method_name),
            "num_train_epochs": self.num_train_epochs,
            "seed": self.seed,
        }
        if method is not None:
            settings.update(method.train_args.overrides())
        return settings



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
