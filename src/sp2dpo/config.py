"""One place for every process variable: ``params.yaml`` mapped to frozen, typed dataclasses.

Each section of ``params.yaml`` (one per pipeline stage) is a frozen dataclass below. A field's
help text is written once, in ``metadata["help"]``. :func:`load` rejects unknown keys and values of
the wrong type, listing the allowed keys or values, so a typo in ``params.yaml`` or in
``dvc exp run -S key=value`` fails before any work starts.

Sections are registered in :data:`SECTIONS`; a stage reads only its own section.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A params file that does not match the typed configuration."""


def _field(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text stored once, in the metadata."""
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


# --------------------------------------------------------------------------------------------
# data / filter
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the raw preference pairs come from (the ``fetch`` stage)."""

    source: Literal["local", "hub"] = _field(
        "local",
        "`local`: read the snapshot file at `path`; `hub`: load `hub_id` at `revision` through "
        "`datasets` (a local folder in the Hub layout also works as `hub_id`).",
    )
    path: str = _field(
        "data/raw/uf_binarized_h4_train_prefs_500.jsonl.gz",
        "Local snapshot (.jsonl, .jsonl.gz, .json, .parquet) in the HF ultrafeedback_binarized "
        "schema or with plain-string replies. Used when source=local.",
    )
    hub_id: str = _field(
        "HuggingFaceH4/ultrafeedback_binarized", "Hugging Face dataset id (source=hub)."
    )
    revision: str = _field(
        "3949bf5f8c17c394422ccfab0c31ea9c20bdeb85",
        "Pinned dataset revision: a full 40-hex commit hash (source=hub).",
    )
    split: str = _field("train_prefs", "Dataset split (source=hub).")
    limit: int | None = _field(
        None, "Keep a seeded, order-stable random subsample of this many rows (null: all rows)."
    )
    seed: int = _field(42, "Seed of the `limit` subsample.")

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"data.limit must be a positive integer or null, got {self.limit}")
        if self.source == "hub" and not _is_commit_hash(self.revision):
            raise ConfigError(
                f"data.revision must pin a full 40-character commit hash, got {self.revision!r}"
            )


def _is_commit_hash(value: str) -> bool:
    return len(value) == 40 and all(c in "0123456789abcdef" for c in value.lower())


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Hygiene rules of the ``filter`` stage (the paper's App. E.2)."""

    drop_identical: bool = _field(
        False,
        "Also drop pairs whose chosen and rejected replies are identical (off in the paper).",
    )


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------

#: Stage-name-safe identifiers (students and methods name DVC stages `train@<student>-<method>`).
_TRAIN_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.]*$"

#: Registered loss variants (mirrors ``sp2dpo.losses.LOSSES``; a test checks they agree).
LOSS_TYPES = ("sigmoid", "robust", "cdpo", "hinge", "dpo_margin", "ipo")


def _check_name(value: str, where: str) -> None:
    import re

    if not re.match(_TRAIN_NAME, value):
        raise ConfigError(
            f"{where} {value!r} must match {_TRAIN_NAME} (letters, digits, '_' and '.'; no '-')"
        )


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """One student model of the ``train`` stage."""

    name: str = _field("smollm2", "Short name used in stage names, paths and MLflow (`train@<name>-<method>`).")
    model: str = _field(
        "local:smollm2-135m-instruct",
        "Model spec: `local:<name>` (packaged GGUF, converted once to safetensors), an HF id, or a path.",
    )
    revision: str | None = _field(None, "Pinned revision (commit hash) of an HF id; ignored for local specs.")
    chat_template: str | None = _field(
        None, "Chat template override: a Jinja string or a path to a .jinja file (null: the tokenizer's)."
    )
    per_device_train_batch_size: int = _field(2, "Pairs per device per micro-batch.")
    gradient_accumulation_steps: int = _field(1, "Micro-batches accumulated per optimizer step.")
    accumulation_by_method: dict[str, int] = _field(
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

    name: str = _field("sp2dpo", "Short name used in stage names, paths and MLflow.")
    type: Literal["dpo", "sp2dpo", "rand_beta"] | None = _field(
        None, "Method kind; null: taken from `name` when it is one of dpo, sp2dpo, rand_beta."
    )
    beta: float | None = _field(None, "Global beta (type dpo only; the paper sweeps 0.1, 0.3, 0.5).")
    beta_column: str | None = _field(
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
    """The loss variant (``sp2dpo.losses.LOSSES``) and its knobs."""

    type: Literal["sigmoid", "robust", "cdpo", "hinge", "dpo_margin", "ipo"] = _field(
        "sigmoid", "Loss variant: sigmoid (DPO/SP2DPO), robust, cdpo, hinge, dpo_margin, ipo."
    )
    label_smoothing: float = _field(0.0, "Label-noise rate eps of robust and cdpo, in [0, 0.5).")
    margin: float = _field(0.0, "Fixed margin m of dpo_margin, in reward units.")

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"train.loss.label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


@dataclasses.dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter (PEFT); the reference model is the base with the adapter disabled."""

    enabled: bool = _field(True, "Train a LoRA adapter (false: full fine-tuning with a reference copy).")
    r: int = _field(16, "LoRA rank.")
    alpha: int = _field(32, "LoRA alpha.")
    dropout: float = _field(0.05, "LoRA dropout.")
    target_modules: list[str] = _field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "Modules that get an adapter (the paper: q,k,v,o,gate,up,down).",
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The ``train`` stage: students x methods, DPO inner loop with beta <- beta_i (paper App. L)."""

    students: list[StudentConfig] = _field([StudentConfig()], "Student models (DVC matrix axis).")
    methods: list[MethodConfig] = _field(
        [
            MethodConfig(name="dpo", beta=0.1),
            MethodConfig(name="sp2dpo"),
            MethodConfig(name="rand_beta"),
        ],
        "Training methods (DVC matrix axis).",
    )
    loss: LossConfig = _field(LossConfig(), "Loss variant and its knobs.")
    lora: LoraSettings = _field(LoraSettings(), "LoRA settings.")
    learning_rate: float = _field(5e-5, "Peak learning rate (not stated in the paper [U]).")
    optim: str = _field("adamw_torch", "Optimizer name of transformers (the paper: paged_adamw_32bit).")
    lr_scheduler_type: str = _field("cosine", "LR schedule (the paper: cosine).")
    warmup_ratio: float = _field(0.1, "Fraction of steps used for linear warm-up (the paper: 0.1).")
    weight_decay: float = _field(0.0, "AdamW weight decay.")
    max_length: int = _field(64, "Max tokens of prompt+completion (the paper: 2048).")
    max_prompt_length: int = _field(32, "Max prompt tokens, keeping the prompt's end (the paper: 1536).")
    num_train_epochs: float = _field(1.0, "Epochs over the training pairs (the paper: 1).")
    max_steps: int = _field(3, "Optimizer steps; -1: run `num_train_epochs` (offline default: 3).")
    limit: int | None = _field(6, "Train on the first N pairs (null: all). Offline default: 6.")
    seed: int = _field(42, "Seed of LoRA init, data order and dropout.")
    precompute_ref_log_probs: bool = _field(
        True, "Compute reference log-probs once before training (the paper: on)."
    )
    drop_missing_beta: bool = _field(
        False, "Drop pairs without a beta_i (the paper does); default: stop with an error."
    )
    precision: Literal["auto", "fp32", "bf16"] = _field(
        "auto", "auto: bf16 when CUDA is available, else fp32."
    )
    gradient_checkpointing: bool = _field(False, "Gradient checkpointing (the paper: on).")
    group_by_length: bool = _field(False, "Group pairs of similar length into batches (the paper: on).")
    logging_steps: int = _field(1, "Log metrics (MLflow) every N optimizer steps.")

    def __post_init__(self) -> None:
        for kind, items in (("students", self.students), ("methods", self.methods)):
            names = [item.name for item in items]
            if len(set(names)) != len(names):
                raise ConfigError(f"train.{kind}: names must be unique, got {names}")
        if self.max_prompt_length >= self.max_length:
            raise ConfigError("train.max_prompt_length must be smaller than train.max_length")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"train.limit must be a positive integer or null, got {self.limit}")

    def student(self, name: str) -> StudentConfig:
        """The student called ``name``; the error lists the configured ones."""
        return _by_name(self.students, name, "train.students")

    def method(self, name: str) -> MethodConfig:
        """The method called ``name``; the error lists the configured ones."""
        return _by_name(self.methods, name, "train.methods")


def _by_name(items: list[Any], name: str, where: str) -> Any:
    for item in items:
        if item.name == name:
            return item
    raise ConfigError(f"{where}: no entry named {name!r}; configured: {', '.join(i.name for i in items)}")


# --------------------------------------------------------------------------------------------
# annotate: teachers, prompts, decoding, annotate
# --------------------------------------------------------------------------------------------

#: Decoding settings a teacher may be told not to receive (``teachers[].omit_params``).
DECODE_PARAMS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
    "n",
    "stop",
)

#: Endpoint presets of the OpenAI-compatible backend (``sp2dpo.annotate.client.PRESETS``).
TEACHER_PRESETS = ("openai", "dashscope", "gemini", "vllm", "transformers-serve", "generic")

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """One teacher LLM of the annotation panel (one entry of the top-level ``teachers`` list)."""

    id: str = _field(
        "",
        "Short annotator id, used in column names (`beta_<id>_<variant>`): letters, digits, `.`, "
        "`-` (no `_`).",
    )
    backend: Literal["openai", "local"] = _field(
        "openai",
        "`openai`: any OpenAI-compatible chat-completions endpoint over HTTP; `local`: the "
        "in-process transformers scorer (offline).",
    )
    model: str = _field(
        "",
        "Model id sent to the endpoint (pin dated snapshots, e.g. `gpt-5-mini-2025-08-07`); for "
        "`local`: `local:<name>`, an HF id or a folder.",
    )
    revision: str | None = _field(None, "Pinned HF revision of a `local` model given as an HF id.")
    preset: Literal["openai", "dashscope", "gemini", "vllm", "transformers-serve", "generic"] = _field(
        "generic",
        "Provider preset (backend openai): default base URL, token-limit field name, which "
        "decoding settings and structured-output mode the endpoint accepts.",
    )
    base_url: str | None = _field(
        None, "Endpoint base URL ending in `/v1` (null: the preset's; required for vllm, "
        "transformers-serve and generic)."
    )
    api_key_env: str | None = _field(
        None,
        "NAME of the environment variable holding the API key (never the key itself); null: "
        "send no key (local servers).",
    )
    max_concurrency: int = _field(4, "Calls in flight at once for this teacher (local: always 1).")
    rpm: int | None = _field(None, "Requests-per-minute limit (null: unlimited).")
    tpm: int | None = _field(
        None, "Tokens-per-minute limit, counting estimated prompt tokens + max_tokens (null: unlimited)."
    )
    price_in_per_m: float = _field(0.0, "USD per 1M input (prompt) tokens, for cost reports.")
    price_out_per_m: float = _field(0.0, "USD per 1M output (completion) tokens, for cost reports.")
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = _field(
        "auto",
        "`response_format` sent: `json_schema` (the three keys), `json_object`, `none`; `auto`: "
        "the preset's choice.",
    )
    omit_params: list[str] = _field(
        [],
        "Decoding settings not sent to this teacher (e.g. reasoning models reject temperature "
        "and top_p).",
    )
    extra_body: dict[str, Any] = _field(
        {}, "Extra provider-specific request fields (e.g. `reasoning_effort: minimal`)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = _field("float32", "Weights dtype (local).")
    max_input_tokens: int = _field(1024, "Prompt tokens kept by the local scorer (local).")

    def __post_init__(self) -> None:
        import re

        from sp2dpo.schemas import ANNOTATOR_PATTERN

        if not re.match(ANNOTATOR_PATTERN, self.id):
            raise ConfigError(
                f"id {self.id!r} must match {ANNOTATOR_PATTERN} (letters, digits, '.', '-'; it "
                "becomes part of column names)"
            )
        if not self.model:
            raise ConfigError(f"teacher {self.id!r}: `model` is required")
        if self.api_key_env is not None and not re.match(_ENV_NAME, self.api_key_env):
            # Never echo the value: it may be a key pasted in the wrong place.
            raise ConfigError(
                f"teacher {self.id!r}: api_key_env must be the NAME of an environment variable "
                "(letters, digits, '_'), not the key itself"
            )
        if self.backend == "openai" and self.base_url is None and self.preset in (
            "vllm",
            "transformers-serve",
            "generic",
        ):
            raise ConfigError(f"teacher {self.id!r}: preset {self.preset!r} needs a `base_url`")
        if self.max_concurrency < 1:
            raise ConfigError(f"teacher {self.id!r}: max_concurrency must be >= 1")
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"teacher {self.id!r}: {name} must be a positive integer or null")
        if self.price_in_per_m < 0 or self.price_out_per_m < 0:
            raise ConfigError(f"teacher {self.id!r}: prices must be >= 0")
        unknown = sorted(set(self.omit_params) - set(DECODE_PARAMS))
        if unknown:
            raise ConfigError(
                f"teacher {self.id!r}: omit_params has unknown name(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(DECODE_PARAMS)}"
            )
        if self.max_input_tokens < 16:
            raise ConfigError(f"teacher {self.id!r}: max_input_tokens must be >= 16")


@dataclasses.dataclass(frozen=True)
class PromptVariantConfig:
    """One prompt variant: a name (`v1`..`vK`) and its system-prompt template file."""

    name: str = _field("v1", "Variant name (`v1`, `v2`, ...), used in column names.")
    system: str = _field(
        "v1_conservative_auditor.txt", "System-prompt template file, relative to `prompts.dir`."
    )

    def __post_init__(self) -> None:
        import re

        from sp2dpo.schemas import VARIANT_PATTERN

        if not re.match(VARIANT_PATTERN, self.name):
            raise ConfigError(f"variant name {self.name!r} must match {VARIANT_PATTERN}")


@dataclasses.dataclass(frozen=True)
class PromptsConfig:
    """The K prompt variants (paper App. B): template files under ``dir``."""

    dir: str = _field("prompts", "Folder of the template files (a DVC dependency of annotate).")
    user: str = _field(
        "user.txt",
        "User-message template: `${prompt}`, `${winner}`, `${loser}` and the per-pair "
        "delimiter code `${boundary}`.",
    )
    variants: list[PromptVariantConfig] = _field(
        [
            PromptVariantConfig("v1", "v1_conservative_auditor.txt"),
            PromptVariantConfig("v2", "v2_learning_signal.txt"),
            PromptVariantConfig("v3", "v3_relative_comparator.txt"),
        ],
        "Variants: v1 conservative auditor, v2 learning-signal estimator, v3 relative comparator.",
    )

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if not names:
            raise ConfigError("prompts.variants: at least one variant is required")
        if len(set(names)) != len(names):
            raise ConfigError(f"prompts.variants: names must be unique, got {names}")


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
    """Teacher decoding and API-call settings (paper Table 6), mapped per provider."""

    temperature: float = _field(0.1, "Sampling temperature (paper: 0.1).")
    top_p: float = _field(0.8, "Nucleus sampling mass (paper: 0.8).")
    top_k: int | None = _field(None, "Top-k cut-off (paper: unset); sent only where supported.")
    max_tokens: int = _field(
        64,
        "Output-token cap (paper: 64), sent as max_tokens or max_completion_tokens per provider.",
    )
    seed: int = _field(42, "Sampling seed, best effort on hosted APIs (paper: 42).")
    frequency_penalty: float = _field(0.0, "Frequency penalty (paper: 0).")
    presence_penalty: float = _field(0.0, "Presence penalty (paper: 0).")
    repetition_penalty: float = _field(1.0, "Repetition penalty, vLLM/DashScope only (paper: 1.0).")
    n: int = _field(1, "Completions per call; must be 1 (robustness comes from the variants).")
    stop: list[str] | None = _field(None, "Stop sequences (paper: none).")
    timeout_s: float = _field(180.0, "Per-request timeout in seconds (paper: 180).")
    max_retries: int = _field(
        3, "Retries after the first attempt, for transient errors and invalid outputs (paper: 3)."
    )
    backoff_base_s: float = _field(
        5.0, "Base of the exponential backoff: base * 2^attempt seconds, with jitter (paper: 5)."
    )
    backoff_max_s: float = _field(120.0, "Cap of one backoff wait, in seconds.")
    retry_after_max_s: float = _field(
        600.0, "Longest server-requested wait (Retry-After) honoured, in seconds."
    )

    def __post_init__(self) -> None:
        if self.n != 1:
            raise ConfigError(f"decoding.n must be 1, got {self.n}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(f"decoding.temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"decoding.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"decoding.top_k must be a positive integer or null, got {self.top_k}")
        if self.max_tokens < 1:
            raise ConfigError(f"decoding.max_tokens must be >= 1, got {self.max_tokens}")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_base_s < 0:
            raise ConfigError("decoding: timeout_s must be > 0; max_retries and backoff_base_s >= 0")


@dataclasses.dataclass(frozen=True)
class AnnotateConfig:
    """Knobs of the ``annotate`` stage itself (which pairs, resume policy, operator output)."""

    max_pairs: int | None = _field(
        None,
        "Annotate a deterministic subset of this many pairs (smallest sha256(subset_seed:"
        "prompt_id)); growing it keeps earlier pairs. null: all pairs.",
    )
    subset_seed: int = _field(42, "Seed of the `max_pairs` subset order.")
    teachers_file: str | None = _field(
        None,
        "YAML file whose `teachers` list replaces the one in params (e.g. "
        "configs/teachers/paper.yaml); null: use `teachers`.",
    )
    redo_statuses: list[str] = _field(
        [],
        "Statuses found in the call log that a re-run calls again (e.g. [http_error, timeout]); "
        "default: every finished call is final.",
    )
    progress: bool = _field(True, "Show a progress bar (ETA, ok/failed counts, running cost).")
    chars_per_token: float = _field(
        4.0, "Characters per token used by `--estimate` and the tpm limiter to size prompts."
    )

    def __post_init__(self) -> None:
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ConfigError(f"annotate.max_pairs must be a positive integer or null, got {self.max_pairs}")
        allowed = ("invalid_json", "out_of_range", "http_error", "timeout", "content_filter")
        bad = sorted(set(self.redo_statuses) - set(allowed))
        if bad:
            raise ConfigError(
                f"annotate.redo_statuses: {', '.join(bad)} not allowed; choose from {', '.join(allowed)}"
            )
        if self.chars_per_token <= 0:
            raise ConfigError("annotate.chars_per_token must be > 0")


# --------------------------------------------------------------------------------------------
# aggregate / beta
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BetaConfig:
    """The temperature envelope of Eq. (30) (paper App. A.6) and the `beta_random` control."""

    min: float = _field(0.03, "beta_min: the temperature of an effective gap of 0 (paper: 0.03).")
    max: float = _field(0.3, "beta_max: the temperature of an effective gap of 1 (paper: 0.3).")
    seed: int = _field(
        42,
        "Seed of `beta_random` ~ U[min, max], drawn per pair from sha256(f'{seed}:{prompt_id}').",
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.min < self.max:
            raise ConfigError(f"beta: need 0 < min < max, got min={self.min}, max={self.max}")


@dataclasses.dataclass(frozen=True)
class EnvelopeConfig:
    """A per-category envelope (``aggregate.category_envelopes.<Category>``)."""

    min: float = _field(0.03, "beta for an effective gap of 0 in this category.")
    max: float = _field(0.3, "beta for an effective gap of 1 in this category.")

    def __post_init__(self) -> None:
        if not 0.0 < self.min <= self.max:
            raise ConfigError(f"need 0 < min <= max, got min={self.min}, max={self.max}")


@dataclasses.dataclass(frozen=True)
class AggregateConfig:
    """Operators of the ``aggregate`` stage (paper App. C); the defaults are the paper's."""

    prompt_operator: Literal["median", "weighted_mean"] = _field(
        "median",
        "Prompt-level operator giving effective_gap_<A>_ens: `median` over variants (Eq. 31) or "
        "`weighted_mean` with `prompt_weights` (Eq. 41).",
    )
    prompt_weights: dict[str, float] = _field(
        {},
        "gamma_k per variant (`v1: 2.0`), >= 0; unlisted variants weigh 1. Used by "
        "weighted_mean and `pooled`.",
    )
    teacher_operators: list[Literal["median", "trimmed_mean", "huber", "weighted_mean"]] = _field(
        [],
        "Teacher-level operators computed besides the paper's mean (Eq. 34); each adds columns "
        "beta_annotators_<op>_v<k> and beta_annotators_<op>_ens (C.5.3, Eq. 42).",
    )
    teacher_weights: dict[str, float] = _field(
        {},
        "alpha_j per annotator id, >= 0; unlisted annotators weigh 1. Used by weighted_mean "
        "and `pooled`.",
    )
    trim_fraction: float = _field(
        0.2, "trimmed_mean: drop floor(trim_fraction * J) teachers at each end, in [0, 0.5)."
    )
    huber_delta: float = _field(
        0.05, "huber: threshold delta of the Huber M-estimate, in beta units (> 0)."
    )
    pooled: bool = _field(
        False, "Add effective_gap_pooled / beta_pooled: weighted mean of all J x K gaps (Eq. 43)."
    )
    bias_decomposition: bool = _field(
        False,
        "Add effective_gap_debiased / beta_debiased from g_ijk = g_i + b_j + d_k (Eq. 44); the "
        "offsets go to reports/aggregate.json.",
    )
    bias_ridge: float = _field(
        1.0, "Ridge penalty on the offsets b_j, d_k of bias_decomposition (>= 0)."
    )
    damping: Literal["none", "exp", "inverse"] = _field(
        "none",
        "Damp effective_gap_<A>_ens by h(u), u = prompt MAD (Eqs. 39-40): `exp` exp(-lambda u), "
        "`inverse` 1/(1 + lambda u), `none` off (paper).",
    )
    damping_lambda: float = _field(1.0, "lambda of the damping (>= 0).")
    category_envelopes: dict[str, EnvelopeConfig] = _field(
        {},
        "Per-category envelopes (`Style: {min: 0.03, max: 0.1}`), inside [beta.min, beta.max]; "
        "unlisted categories use beta.min/max (paper: none).",
    )
    strict: bool = _field(
        False,
        "Stop with an error on the first bad or missing call instead of excluding its pair "
        "(failed calls are always excluded).",
    )

    def __post_init__(self) -> None:
        for key, value in (*self.prompt_weights.items(), *self.teacher_weights.items()):
            if not value >= 0.0 or value == float("inf"):
                raise ConfigError(
                    f"aggregate: weight {key!r} must be a finite number >= 0, got {value}"
                )
        if self.prompt_weights or self.teacher_weights or self.category_envelopes:
            import re

            from sp2dpo.schemas import ANNOTATOR_PATTERN, CATEGORIES, VARIANT_PATTERN

            for key in self.prompt_weights:
                if not re.match(VARIANT_PATTERN, key):
                    raise ConfigError(
                        f"aggregate.prompt_weights: {key!r} is not a variant name (v1, v2, ...)"
                    )
            for key in self.teacher_weights:
                if not re.match(ANNOTATOR_PATTERN, key):
                    raise ConfigError(f"aggregate.teacher_weights: {key!r} is not an annotator id")
            unknown = sorted(set(self.category_envelopes) - set(CATEGORIES))
            if unknown:
                raise ConfigError(
                    f"aggregate.category_envelopes: unknown categor(ies) {', '.join(unknown)}; "
                    f"allowed: {', '.join(CATEGORIES)}"
                )
        if len(set(self.teacher_operators)) != len(self.teacher_operators):
            raise ConfigError(
                f"aggregate.teacher_operators: duplicates in {self.teacher_operators}"
            )
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ConfigError(
                f"aggregate.trim_fraction must be in [0, 0.5), got {self.trim_fraction}"
            )
        if not self.huber_delta > 0.0:
            raise ConfigError(f"aggregate.huber_delta must be > 0, got {self.huber_delta}")
        if not self.bias_ridge >= 0.0:
            raise ConfigError(f"aggregate.bias_ridge must be >= 0, got {self.bias_ridge}")
        if not self.damping_lambda >= 0.0:
            raise ConfigError(f"aggregate.damping_lambda must be >= 0, got {self.damping_lambda}")


# --------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------


def _judge_default() -> TeacherConfig:
    return TeacherConfig(
        id="gemma3-judge", backend="local", model="local:gemma3-270m", max_input_tokens=1536
    )


def _judge_decoding_default() -> DecodingConfig:
    return DecodingConfig(temperature=0.0, top_p=1.0, max_tokens=1, seed=42)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Fixed decoding of the students when they answer evaluation instructions."""

    max_new_tokens: int = _field(256, "Answer-token cap per instruction (AlpacaEval runs: 2048).")
    temperature: float = _field(0.0, "0: greedy decoding; > 0: sampling with `seed`.")
    top_p: float = _field(1.0, "Nucleus mass when sampling.")
    repetition_penalty: float = _field(1.0, "transformers repetition penalty (1.0: off).")
    batch_size: int = _field(8, "Instructions generated together (left-padded batches).")
    max_input_tokens: int = _field(1024, "Prompt tokens kept (the instruction's start is kept).")
    seed: int = _field(42, "Seed of sampling (unused when greedy).")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.max_input_tokens < 8:
            raise ConfigError("eval.generation: max_new_tokens, batch_size >= 1; max_input_tokens >= 8")
        if not 0.0 <= self.temperature <= 2.0 or not 0.0 < self.top_p <= 1.0:
            raise ConfigError("eval.generation: temperature in [0, 2], top_p in (0, 1]")


@dataclasses.dataclass(frozen=True)
class AlpacaEvalConfig:
    """AlpacaEval 2.0: instructions, reference outputs and the length-controlled GLM."""

    reference_outputs: str = _field(
        "data/evalsets/alpaca_eval/gpt4_1106_preview.json.gz",
        "Reference (baseline) outputs in AlpacaEval's model-outputs format; their instructions are "
        "the evaluation set (805, AlpacaEval order).",
    )
    limit: int | None = _field(
        8, "Evaluate a seeded subset of this many instructions (null: all 805). Offline default: 8."
    )
    seed: int = _field(42, "Seed of the instruction subset and of the per-item side order.")
    instruction_difficulty: str | None = _field(
        None,
        "Path to alpaca_eval's `instruction_difficulty.csv` (HF dataset tatsu-lab/alpaca_eval); "
        "with `df_gamed`, gives the official length-controlled GLM. null: the labelled offline "
        "estimate.",
    )
    df_gamed: str | None = _field(
        None, "Path to alpaca_eval's `df_gamed.csv` (regularisation toward the gamed baselines)."
    )

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.alpaca_eval.limit must be a positive integer or null, got {self.limit}")
        if (self.instruction_difficulty is None) != (self.df_gamed is None):
            raise ConfigError(
                "eval.alpaca_eval: set both instruction_difficulty and df_gamed (the official GLM "
                "needs both) or neither (offline estimate)"
            )


@dataclasses.dataclass(frozen=True)
class IFEvalConfig:
    """IFEval, scored offline by the rule-based `if-verifiable` checkers."""

    enabled: bool = _field(True, "Run IFEval.")
    input: str = _field(
        "data/evalsets/ifeval/input_data.jsonl.gz",
        "IFEval prompts (`key, prompt, instruction_id_list, kwargs` per line; .jsonl or .jsonl.gz).",
    )
    limit: int | None = _field(8, "Seeded subset of this many prompts (null: all 541).")
    seed: int = _field(42, "Seed of the prompt subset.")
    max_new_tokens: int = _field(256, "Answer-token cap (overrides eval.generation.max_new_tokens).")

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.ifeval.limit must be a positive integer or null, got {self.limit}")
        if self.max_new_tokens < 1:
            raise ConfigError("eval.ifeval.max_new_tokens must be >= 1")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The ``eval`` stage: AlpacaEval 2.0 (WR, LC) and IFEval for the base student and each method."""

    methods: list[str] | None = _field(
        None, "What to evaluate per student: `base` and/or train method names (null: base + all)."
    )
    generation: GenerationConfig = _field(GenerationConfig(), "Student decoding.")
    alpaca_eval: AlpacaEvalConfig = _field(AlpacaEvalConfig(), "AlpacaEval 2.0 set and LC GLM.")
    judge: TeacherConfig = _field(
        _judge_default(),
        "The pairwise judge: a teacher-shaped entry (backend `openai` for any OpenAI-compatible "
        "endpoint, e.g. configs/eval/gpt4-turbo-judge.yaml; `local` offline).",
    )
    judge_decoding: DecodingConfig = _field(
        _judge_decoding_default(),
        "Judge decoding: greedy, one output token, retries and timeouts.",
    )
    judge_file: str | None = _field(
        None, "YAML file with `judge` (and optionally `judge_decoding`) replacing the ones above."
    )
    allow_teacher_judge: bool = _field(
        False,
        "Allow a judge that is also a teacher of the panel (refused otherwise). The offline "
        "default sets it: both packaged models are teachers.",
    )
    ifeval: IFEvalConfig = _field(IFEvalConfig(), "IFEval settings.")

    def __post_init__(self) -> None:
        if self.methods is not None:
            if not self.methods:
                raise ConfigError("eval.methods must be null or a non-empty list")
            if len(set(self.methods)) != len(self.methods):
                raise ConfigError(f"eval.methods must be unique, got {self.methods}")


# --------------------------------------------------------------------------------------------
# registry and loading
# --------------------------------------------------------------------------------------------

#: Sections that are YAML lists of the registered dataclass rather than one mapping.
LIST_SECTIONS: frozenset[str] = frozenset({"teachers"})


def build_list(cls: type, data: Any, where: str) -> list[Any]:
    """Build a list section (``teachers``): each item a ``cls``; absent means an empty list."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise ConfigError(f"{where}: expected a list, got {type(data).__name__}")
    return [build(cls, item, f"{where}[{i}]") for i, item in enumerate(data)]


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "filter": FilterConfig,
    "train": TrainConfig,
    "teachers": TeacherConfig,
    "prompts": PromptsConfig,
    "decoding": DecodingConfig,
    "annotate": AnnotateConfig,
    "aggregate": AggregateConfig,
    "beta": BetaConfig,
    "eval": EvalConfig,
}


@dataclasses.dataclass(frozen=True)
class Params:
    """All sections of ``params.yaml`` as attributes (``params.data.limit``); ``raw`` keeps the
    mapping as read, for logging."""

    sections: Mapping[str, Any]
    raw: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["sections"][name]
        except KeyError:
            raise AttributeError(f"params have no section {name!r}") from None

    def flat(self) -> dict[str, Any]:
        """The raw params flattened to dotted keys (``data.limit``), for MLflow and reports."""
        return flatten(self.raw)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys; lists of mappings use their index."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out.update(flatten(item, f"{name}.{i}."))
        else:
            out[name] = value
    return out


def build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively.

    Args:
        cls: a dataclass type from this module.
        data: the mapping read from YAML (``None`` means all defaults).
        where: dotted location used in error messages (``"data"``, ``"teachers[1]"``).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: on unknown keys, wrong types or values outside a ``Literal``.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches no type")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {value!r} is not allowed; choose one of {allowed}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        items = [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover - programming error


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load(path: str | Path = DEFAULT_PARAMS, *, sections: list[str] | None = None) -> Params:
    """Load and validate ``params.yaml``.

    Args:
        path: the params file.
        sections: validate only these sections (others must still be known names); a stage uses
            this to read just what it needs. Default: all sections.

    Returns:
        A :class:`Params` whose attributes are the section dataclasses.
    """
    raw = read_yaml(path)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(unknown)}; allowed: {', '.join(SECTIONS)}"
        )
    wanted = set(SECTIONS) if sections is None else set(sections)
    built = {}
    for name, cls in SECTIONS.items():
        value = raw.get(name) if name in wanted else None
        try:
            built[name] = (build_list if name in LIST_SECTIONS else build)(cls, value, name)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return Params(sections=built, raw=raw)


def describe(cls: type) -> list[tuple[str, Any, str]]:
    """``(key, default, help)`` for every field of a section: the source of README tables."""
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((f.name, default, f.metadata.get("help", "")))
    return rows


def reference_markdown() -> str:
    """Every params key as markdown tables, one per section (the generated ``docs/params.md``).

    Nested sections appear with dotted keys; list items with ``[]`` (``teachers[].model``).
    """

    def rows(cls: type, prefix: str) -> list[str]:
        out = []
        hints = typing.get_type_hints(cls)
        for key, default, help_text in describe(cls):
            name = f"{prefix}{key}"
            tp = hints[key]
            inner = typing.get_args(tp)[0] if typing.get_origin(tp) in (list, tuple) else tp
            if dataclasses.is_dataclass(inner) and inner is not tp:
                out.append(f"| `{name}` | list | {help_text} |")
                out.extend(rows(inner, f"{name}[]."))
            elif dataclasses.is_dataclass(tp):
                out.extend(rows(tp, f"{name}."))
            else:
                shown = json.dumps(default, default=str) if default is not None else "null"
                text = help_text.replace("|", r"\|")
                out.append(f"| `{name}` | `{shown}` | {text} |")
        return out

    parts = [
        "# params.yaml reference",
        "",
        "Generated from `src/sp2dpo/config.py` by `python -m sp2dpo.config > docs/params.md`;",
        "a test keeps it in sync. Defaults are the dataclass defaults; `params.yaml` may set others.",
    ]
    for section, cls in SECTIONS.items():
        prefix = f"{section}[]." if section in LIST_SECTIONS else f"{section}."
        parts += ["", f"## `{section}`", "", (cls.__doc__ or "").strip().splitlines()[0], "",
                  "| key | default | meaning |", "|---|---|---|", *rows(cls, prefix)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(reference_markdown(), end="")
