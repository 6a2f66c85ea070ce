"""Section ``eval``: student decoding, AlpacaEval 2.0, the judge and IFEval."""

from __future__ import annotations

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The ``eval`` stage: AlpacaEval 2.0 (WR, LC) and IFEval for the base student and each method."""

    methods: list[str] | None = field(
        None,
        "What to evaluate per student: `base` and/or trained method names (null: `base` and "
        "every method of `matrix.methods`).",
    )
    generation: GenerationConfig = field(GenerationConfig(), "Student decoding.")
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

    def __post_init__(self) -> None:
        if self.methods is not None:
            if not self.methods:
                raise ConfigError("eval.methods must be null or a non-empty list")
            if len(set(self.methods)) != len(self.methods):
                raise ConfigError(f"eval.methods must be unique, got {self.methods}")
