"""Section ``eval``: student decoding, AlpacaEval 2.0, the judge and IFEval."""

from __future__ import annotations

import dataclasses
import re

from sp2dpo.core.config.annotate import DecodingConfig, TeacherConfig
from sp2dpo.core.config.base import field
from sp2dpo.core.errors import ConfigError

#: The folder of the evaluation files: a DVC dependency of the eval stage.
EVALSETS = "data/evalsets"


def _judge_default() -> TeacherConfig:
    return TeacherConfig(
        id="gemma3-judge", backend="local", model="local:gemma3-270m", max_input_tokens=1536
    )


def _judge_decoding_default() -> DecodingConfig:
    return DecodingConfig(temperature=0.0, top_p=1.0, max_tokens=1, seed=42)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Fixed decoding of the students when they answer evaluation instructions."""

    max_new_tokens: int = field(
        64, "Answer-token cap per instruction (AlpacaEval runs: 2048; offline default: 64)."
    )
    temperature: float = field(0.0, "0: greedy decoding; > 0: sampling with `seed`.")
    top_p: float = field(1.0, "Nucleus mass when sampling.")
    repetition_penalty: float = field(1.0, "transformers repetition penalty (1.0: off).")
    batch_size: int = field(8, "Instructions generated together (left-padded batches).")
    max_input_tokens: int = field(512, "Prompt tokens kept (the instruction's start is kept).")
    seed: int = field(42, "Seed of sampling (unused when greedy).")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.max_input_tokens < 8:
            raise ConfigError("eval.generation: max_new_tokens, batch_size >= 1; max_input_tokens >= 8")
        if not 0.0 <= self.temperature <= 2.0 or not 0.0 < self.top_p <= 1.0:
            raise ConfigError("eval.generation: temperature in [0, 2], top_p in (0, 1]")


@dataclasses.dataclass(frozen=True)
class AlpacaEvalConfig:
    """AlpacaEval 2.0: instructions, reference outputs and the length-controlled GLM."""

    enabled: bool = field(
        True, "Run AlpacaEval 2.0 (answers, pairwise judge, WR and LC); false e.g. in a sweep "
        "that selects by the held-out metric alone."
    )
    reference_outputs: str = field(
        "data/evalsets/alpaca_eval/gpt4_1106_preview.json.gz",
        "Reference (baseline) outputs in AlpacaEval's model-outputs format; their instructions are "
        "the evaluation set (805, AlpacaEval order).",
    )
    limit: int | None = field(
        8, "Evaluate a seeded subset of this many instructions (null: all 805). Offline default: 8."
    )
    seed: int = field(42, "Seed of the instruction subset and of the per-item side order.")
    instruction_difficulty: str | None = field(
        None,
        "Path to alpaca_eval's `instruction_difficulty.csv` (HF dataset tatsu-lab/alpaca_eval); "
        "with `df_gamed`, gives the official length-controlled GLM. null: the labelled offline "
        "estimate.",
    )
    df_gamed: str | None = field(
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
        for name in ("instruction_difficulty", "df_gamed"):
            value = getattr(self, name)
            if value is not None and not value.replace("\\", "/").startswith(EVALSETS + "/"):
                raise ConfigError(
                    f"{name}: put the file under {EVALSETS}/ (a dependency of the "
                    f"eval stage, versioned by evalsets.dvc), got {value!r}"
                )


@dataclasses.dataclass(frozen=True)
class IFEvalConfig:
    """IFEval, scored offline by the rule-based `if-verifiable` checkers."""

    enabled: bool = field(True, "Run IFEval.")
    input: str = field(
        "data/evalsets/ifeval/input_data.jsonl.gz",
        "IFEval prompts (`key, prompt, instruction_id_list, kwargs` per line; .jsonl or .jsonl.gz).",
    )
    limit: int | None = field(8, "Seeded subset of this many prompts (null: all 541).")
    seed: int = field(42, "Seed of the prompt subset.")
    max_new_tokens: int = field(
        64, "Answer-token cap (overrides eval.generation.max_new_tokens; official runs: 1280)."
    )

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"eval.ifeval.limit must be a positive integer or null, got {self.limit}")
        if self.max_new_tokens < 1:
            raise ConfigError("eval.ifeval.max_new_tokens must be >= 1")


def _check_limit(section: str, limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ConfigError(f"eval.{section}.limit must be a positive integer or null, got {limit}")


def _check_evalsets(section: str, name: str, value: str) -> None:
    if not value.replace("\\", "/").startswith(EVALSETS + "/"):
        raise ConfigError(
            f"eval.{section}.{name}: put the file under {EVALSETS}/ (a dependency of the eval "
            f"stage, versioned by evalsets.dvc), got {value!r}"
        )


@dataclasses.dataclass(frozen=True)
class MTBenchConfig:
    """MT-Bench: 80 two-turn questions, single-answer grading 1-10 per turn (FastChat's
    protocol and judge templates)."""

    enabled: bool = field(True, "Run MT-Bench.")
    questions: str = field(
        "data/evalsets/mt_bench/question.jsonl.gz", "The 80 questions (FastChat's question.jsonl)."
    )
    reference_answers: str = field(
        "data/evalsets/mt_bench/reference_answer/gpt-4.jsonl.gz",
        "GPT-4 reference answers, shown to the judge for math, reasoning and coding.",
    )
    judge_prompts: str = field(
        "data/evalsets/mt_bench/judge_prompts.jsonl",
        "FastChat's judge templates (official text, loaded from the data folder).",
    )
    limit: int | None = field(4, "Seeded subset of this many questions (null: all 80).")
    seed: int = field(42, "Seed of the question subset.")
    max_new_tokens: int = field(
        64, "Answer-token cap per turn (FastChat: 1024; offline default: 64)."
    )
    judge_max_tokens: int = field(
        2048, "Judge output-token cap (HTTP judges: the evaluation text and the rating)."
    )

    def __post_init__(self) -> None:
        _check_limit("mt_bench", self.limit)
        if self.max_new_tokens < 1 or self.judge_max_tokens < 1:
            raise ConfigError("eval.mt_bench: max_new_tokens and judge_max_tokens must be >= 1")
        for name in ("questions", "reference_answers", "judge_prompts"):
            _check_evalsets("mt_bench", name, getattr(self, name))


@dataclasses.dataclass(frozen=True)
class ArenaHardConfig:
    """Arena-Hard-Auto v0.1: 500 prompts, two games per prompt against the gpt-4-0314 baseline,
    Bradley-Terry score with a bootstrap interval."""

    enabled: bool = field(True, "Run Arena-Hard-Auto.")
    questions: str = field(
        "data/evalsets/arena_hard/question.jsonl.gz", "The 500 v0.1 prompts."
    )
    baseline_answers: str = field(
        "data/evalsets/arena_hard/model_answer/gpt-4-0314.jsonl.gz",
        "The baseline's answers (official answer file).",
    )
    baseline: str = field("gpt-4-0314", "The baseline model's name (score 50 by definition).")
    limit: int | None = field(4, "Seeded subset of this many prompts (null: all 500).")
    seed: int = field(42, "Seed of the prompt subset.")
    max_new_tokens: int = field(
        64, "Answer-token cap (official runs: 4096; offline default: 64)."
    )
    judge_max_tokens: int = field(4096, "Judge output-token cap (HTTP judges).")
    bootstrap_rounds: int = field(100, "Bootstrap rounds of the 95% interval (official: 100).")
    bootstrap_seed: int = field(42, "Seed of the bootstrap.")

    def __post_init__(self) -> None:
        _check_limit("arena_hard", self.limit)
        if self.max_new_tokens < 1 or self.judge_max_tokens < 1 or self.bootstrap_rounds < 1:
            raise ConfigError(
                "eval.arena_hard: max_new_tokens, judge_max_tokens and bootstrap_rounds must be >= 1"
            )
        for name in ("questions", "baseline_answers"):
            _check_evalsets("arena_hard", name, getattr(self, name))


_SERVER_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


@dataclasses.dataclass(frozen=True)
class AnswerServerConfig:
    """Where the students' answers come from: in-process transformers (``base_url: null``, the
    offline default) or an OpenAI-compatible server that serves the base model and every adapter
    (vLLM with ``--enable-lora``). Answers are cached by model, adapter digest, conversation and
    decoding, whichever backend produced them."""

    base_url: str | None = field(
        None,
        "Chat-completions endpoint ending in `/v1` (e.g. `http://127.0.0.1:8000/v1`); null: "
        "answer in-process with transformers.",
    )
    api_key_env: str | None = field(
        None,
        "NAME of the environment variable holding the server's API key (never the key itself); "
        "null: send no key (local servers).",
    )
    models: dict[str, str] = field(
        {},
        "Served model name per evaluated method (`base` or a method name). Unset: `base` -> the "
        "student's model (an HF id, or the converted folder of a `local:` spec), a method -> its "
        "own name, as `vllm serve BASE --enable-lora --lora-modules NAME=models/<student>/NAME` "
        "exposes it.",
    )
    max_concurrency: int = field(8, "Answer requests in flight at once.")
    timeout_s: float = field(600.0, "Per-request timeout in seconds.")
    max_retries: int = field(
        3, "Retries after the first attempt of a request (transient errors), with backoff."
    )

    def __post_init__(self) -> None:
        if self.base_url is not None and not re.match(r"^https?://[^\s/]+", self.base_url):
            raise ConfigError(
                f"eval.server.base_url must be an http(s) URL ending in /v1 or null, got "
                f"{self.base_url!r}"
            )
        if self.api_key_env is not None and not re.match(_SERVER_ENV_NAME, self.api_key_env):
            # Never echo the value: it may be a key pasted in the wrong place.
            raise ConfigError(
                "eval.server.api_key_env must be the NAME of an environment variable (letters, "
                "digits, '_'), not the key itself"
            )
        for method, served in self.models.items():
            if not method or not served.strip():
                raise ConfigError(
                    f"eval.server.models: method {method!r} needs a non-empty served model name"
                )
        if self.max_concurrency < 1:
            raise ConfigError(f"eval.server.max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.timeout_s <= 0:
            raise ConfigError(f"eval.server.timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ConfigError(f"eval.server.max_retries must be >= 0, got {self.max_retries}")


@dataclasses.dataclass(frozen=True)
class PrefEvalConfig:
    """Held-out preference accuracy (``sp2dpo prefeval``): the implicit-reward margin of each
    evaluated model against the model without adapter on held-out preference pairs."""

    enabled: bool = field(True, "Score the held-out pairs for every evaluated model.")
    pairs: str = field(
        "data/evalsets/ultrafeedback/uf_binarized_h4_test_prefs_500.jsonl.gz",
        "Held-out pairs (canonical table or the Hub layout of ultrafeedback_binarized); the "
        "offline default is 500 real rows of H4 test_prefs.",
    )
    limit: int | None = field(
        8, "The first N usable pairs in file order (null: all). Offline default: 8."
    )
    max_length: int = field(
        256, "Prompt + completion tokens kept, as training truncates (full runs: 1024)."
    )
    max_prompt_length: int = field(128, "Prompt tokens kept (its end), < max_length.")
    batch_size: int = field(4, "Pairs per forward pass.")
    rounds: int = field(1000, "Bootstrap resamples of the 95% intervals (0: none).")
    seed: int = field(42, "Seed of the bootstrap.")

    def __post_init__(self) -> None:
        _check_limit("prefeval", self.limit)
        _check_evalsets("prefeval", "pairs", self.pairs)
        if not 1 <= self.max_prompt_length < self.max_length:
            raise ConfigError("eval.prefeval: need 1 <= max_prompt_length < max_length")
        if self.batch_size < 1 or self.rounds < 0:
            raise ConfigError("eval.prefeval: batch_size >= 1 and rounds >= 0")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The ``eval`` stage: AlpacaEval 2.0 (WR, LC) and IFEval for the base student and each method."""

    methods: list[str] | None = field(
        None,
        "What to evaluate per student: `base` and/or trained method names (null: `base` and "
        "every method of `matrix.methods`).",
    )
    generation: GenerationConfig = field(GenerationConfig(), "Student decoding.")
    server: AnswerServerConfig = field(
        AnswerServerConfig(),
        "Where answers come from: in-process transformers (offline default) or an "
        "OpenAI-compatible server (vLLM serving the base model and every adapter).",
    )
    alpaca_eval: AlpacaEvalConfig = field(AlpacaEvalConfig(), "AlpacaEval 2.0 set and LC GLM.")
    judge: TeacherConfig = field(
        _judge_default(),
        "The pairwise judge: a teacher-shaped entry (backend `openai` for any OpenAI-compatible "
        "endpoint, e.g. the `gpt4-turbo-judge` profile; `local` offline).",
    )
    judge_decoding: DecodingConfig = field(
        _judge_decoding_default(),
        "Judge decoding: greedy, one output token, retries and timeouts.",
    )
    allow_teacher_judge: bool = field(
        True,
        "Allow a judge that is also a teacher of the panel (refused when false, as real runs "
        "should set it). The offline default allows it: both packaged models are teachers, and "
        "the report records it.",
    )
    ifeval: IFEvalConfig = field(IFEvalConfig(), "IFEval settings.")
    mt_bench: MTBenchConfig = field(MTBenchConfig(), "MT-Bench settings.")
    arena_hard: ArenaHardConfig = field(ArenaHardConfig(), "Arena-Hard-Auto v0.1 settings.")
    prefeval: PrefEvalConfig = field(PrefEvalConfig(), "Held-out preference accuracy settings.")

    def __post_init__(self) -> None:
        if self.methods is not None:
            if not self.methods:
                raise ConfigError("eval.methods must be null or a non-empty list")
            if len(set(self.methods)) != len(self.methods):
                raise ConfigError(f"eval.methods must be unique, got {self.methods}")
