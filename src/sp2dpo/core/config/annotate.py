"""Sections ``teachers``, ``prompts``, ``decoding`` and ``annotate``: the teacher panel and how it is called."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from sp2dpo.core.config.base import field
from sp2dpo.core.errors import ConfigError
from sp2dpo.core.schemas import ANNOTATOR_PATTERN, VARIANT_PATTERN

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

#: Endpoint presets of the OpenAI-compatible backend (``sp2dpo.llm.client.PRESETS``).
TEACHER_PRESETS = ("openai", "dashscope", "gemini", "vllm", "transformers-serve", "generic")

#: Characters per token of every prompt-size estimate from text (a conservative average for English
#: text): the default of ``annotate.chars_per_token``, re-exported as
#: :data:`sp2dpo.llm.costs.CHARS_PER_TOKEN` for the callers of the ``llm`` layer.
CHARS_PER_TOKEN = 4.0

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """One teacher LLM of the annotation panel (one entry of the top-level ``teachers`` list)."""

    id: str = field(
        "",
        "Short annotator id, used in column names (`beta_<id>_<variant>`): letters, digits, `.`, "
        "`-` (no `_`).",
    )
    backend: Literal["openai", "local"] = field(
        "openai",
        "`openai`: any OpenAI-compatible chat-completions endpoint over HTTP; `local`: the "
        "in-process transformers scorer (offline).",
    )
    model: str = field(
        "",
        "Model id sent to the endpoint (pin dated snapshots, e.g. `gpt-5-mini-2025-08-07`); for "
        "`local`: `local:<name>`, an HF id or a folder.",
    )
    revision: str | None = field(None, "Pinned HF revision of a `local` model given as an HF id.")
    preset: Literal["openai", "dashscope", "gemini", "vllm", "transformers-serve", "generic"] = field(
        "generic",
        "Provider preset (backend openai): default base URL, token-limit field name, which "
        "decoding settings and structured-output mode the endpoint accepts.",
    )
    base_url: str | None = field(
        None, "Endpoint base URL ending in `/v1` (null: the preset's; required for vllm, "
        "transformers-serve and generic)."
    )
    api_key_env: str | None = field(
        None,
        "NAME of the environment variable holding the API key (never the key itself); null: "
        "send no key (local servers).",
    )
    max_concurrency: int = field(4, "Calls in flight at once for this teacher (local: always 1).")
    rpm: int | None = field(None, "Requests-per-minute limit (null: unlimited).")
    tpm: int | None = field(
        None, "Tokens-per-minute limit, counting estimated prompt tokens + max_tokens (null: unlimited)."
    )
    price_in_per_m: float = field(0.0, "USD per 1M input (prompt) tokens, for cost reports.")
    price_out_per_m: float = field(0.0, "USD per 1M output (completion) tokens, for cost reports.")
    structured_output: Literal["auto", "json_schema", "json_object", "none"] = field(
        "auto",
        "`response_format` sent: `json_schema` (the three keys), `json_object`, `none`; `auto`: "
        "the preset's choice.",
    )
    omit_params: list[str] = field(
        [],
        "Decoding settings not sent to this teacher (e.g. reasoning models reject temperature "
        "and top_p).",
    )
    extra_body: dict[str, Any] = field(
        {}, "Extra provider-specific request fields (e.g. `reasoning_effort: minimal`)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field("float32", "Weights dtype (local).")
    max_input_tokens: int = field(1024, "Prompt tokens kept by the local scorer (local).")
    max_input_chars: int = field(
        200_000,
        "Request-size cap of an HTTP teacher, in characters of the rendered messages (about "
        "50k tokens): longer pairs have the middles of their prompt and replies cut to a common "
        "length, marked `[...]` (the call records `truncated`).",
    )

    def __post_init__(self) -> None:
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
        if self.max_input_chars < 1000:
            raise ConfigError(f"teacher {self.id!r}: max_input_chars must be >= 1000, got {self.max_input_chars}")


@dataclasses.dataclass(frozen=True)
class PromptVariantConfig:
    """One prompt variant: a name (`v1`..`vK`) and its system-prompt template file."""

    name: str = field("v1", "Variant name (`v1`, `v2`, ...), used in column names.")
    system: str = field(
        "v1_conservative_auditor.txt", "System-prompt template file, relative to `prompts.dir`."
    )

    def __post_init__(self) -> None:
        if not re.match(VARIANT_PATTERN, self.name):
            raise ConfigError(f"variant name {self.name!r} must match {VARIANT_PATTERN}")


@dataclasses.dataclass(frozen=True)
class PromptsConfig:
    """The K prompt variants (paper App. B): template files under ``dir``."""

    dir: str = field("prompts/annotate", "Folder of the template files (a DVC dependency of annotate).")
    user: str = field(
        "user.txt",
        "User-message template: `${prompt}`, `${winner}`, `${loser}` and the per-pair "
        "delimiter code `${boundary}`.",
    )
    variants: list[PromptVariantConfig] = field(
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

    temperature: float = field(0.1, "Sampling temperature (paper: 0.1).")
    top_p: float = field(0.8, "Nucleus sampling mass (paper: 0.8).")
    top_k: int | None = field(None, "Top-k cut-off (paper: unset); sent only where supported.")
    max_tokens: int = field(
        64,
        "Output-token cap (paper: 64), sent as max_tokens or max_completion_tokens per provider.",
    )
    seed: int = field(42, "Sampling seed, best effort on hosted APIs (paper: 42).")
    frequency_penalty: float = field(0.0, "Frequency penalty (paper: 0).")
    presence_penalty: float = field(0.0, "Presence penalty (paper: 0).")
    repetition_penalty: float = field(1.0, "Repetition penalty, vLLM/DashScope only (paper: 1.0).")
    n: int = field(1, "Completions per call; must be 1 (robustness comes from the variants).")
    stop: list[str] | None = field(None, "Stop sequences (paper: none).")
    timeout_s: float = field(180.0, "Per-request timeout in seconds (paper: 180).")
    max_retries: int = field(
        3, "Retries after the first attempt, for transient errors and invalid outputs (paper: 3)."
    )
    backoff_base_s: float = field(
        5.0, "Base of the exponential backoff: base * 2^attempt seconds, with jitter (paper: 5)."
    )
    backoff_max_s: float = field(120.0, "Cap of one backoff wait, in seconds.")
    retry_after_max_s: float = field(
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
        for name, value, low, strict in (
            ("timeout_s", self.timeout_s, 0, True),
            ("max_retries", self.max_retries, 0, False),
            ("backoff_base_s", self.backoff_base_s, 0, False),
            ("backoff_max_s", self.backoff_max_s, 0, False),
            ("retry_after_max_s", self.retry_after_max_s, 0, False),
        ):
            if value < low or (strict and value == low):
                raise ConfigError(
                    f"decoding.{name} must be {'>' if strict else '>='} {low}, got {value}"
                )


@dataclasses.dataclass(frozen=True)
class AnnotateConfig:
    """Knobs of the ``annotate`` stage itself (which pairs, resume policy, operator output)."""

    max_pairs: int | None = field(
        8,
        "Annotate a deterministic subset of this many pairs (smallest sha256(subset_seed:"
        "prompt_id)); growing it keeps earlier pairs. null: all pairs (the paper). Offline "
        "default: 8 pairs, 48 local calls.",
    )
    subset_seed: int = field(42, "Seed of the `max_pairs` subset order.")
    redo_statuses: list[str] = field(
        [],
        "Statuses found in the call log that a re-run calls again (e.g. [http_error, timeout]); "
        "default: every finished call is final.",
    )
    progress: bool = field(True, "Show a progress bar (ETA, ok/failed counts, running cost).")
    chars_per_token: float = field(
        CHARS_PER_TOKEN, "Characters per token used by `--estimate` and the tpm limiter to size prompts."
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


def check_panel(teachers: list[TeacherConfig], where: str) -> None:
    """A usable panel: at least one teacher, unique ids (they name the artifact's columns)."""
    if not teachers:
        raise ConfigError(f"{where}: `teachers` is empty; configure at least one teacher")
    ids = [t.id for t in teachers]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{where}: teacher ids must be unique; repeated: {', '.join(dupes)}")
