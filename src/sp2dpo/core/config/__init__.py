"""``params.yaml`` as typed, frozen dataclasses: one module per section group, one loader.

- :mod:`.base`: field helper and the checked construction of a section from YAML;
- :mod:`.data`, :mod:`.annotate`, :mod:`.aggregate`, :mod:`.train`, :mod:`.evaluate`,
  :mod:`.sweep`: the sections;
- :mod:`.params`: the section registry, :func:`load`, :func:`defaults` and the reference page.

Import the names from here: ``from sp2dpo.core import config; config.load().train``.
"""

from sp2dpo.core.config.aggregate import AggregateConfig, BetaConfig, EnvelopeConfig
from sp2dpo.core.config.annotate import (
    CHARS_PER_TOKEN,
    DECODE_PARAMS,
    TEACHER_PRESETS,
    AnnotateConfig,
    DecodingConfig,
    PromptsConfig,
    PromptVariantConfig,
    TeacherConfig,
    check_panel,
)
from sp2dpo.core.config.base import DEFAULT_PARAMS, build, build_list, flatten, read_yaml
from sp2dpo.core.config.data import DataConfig, FilterConfig
from sp2dpo.core.config.evaluate import (
    AlpacaEvalConfig,
    AnswerServerConfig,
    ArenaHardConfig,
    EvalConfig,
    GenerationConfig,
    IFEvalConfig,
    MTBenchConfig,
    PrefEvalConfig,
)
from sp2dpo.core.config.losses import LOSS_SPECS, LossSpec, build_loss_args, loss_spec
from sp2dpo.core.config.params import (
    DEFAULT_TEACHERS,
    LIST_SECTIONS,
    SECTIONS,
    Params,
    defaults,
    describe,
    load,
    reference_markdown,
)
from sp2dpo.core.config.sweep import SweepConfig
from sp2dpo.core.config.train import (
    TRAIN_ARG_KEYS,
    LoraSettings,
    MatrixConfig,
    MethodConfig,
    StudentConfig,
    TrainArgs,
    TrainConfig,
)
from sp2dpo.core.errors import ConfigError

__all__ = [
    "CHARS_PER_TOKEN",
    "DECODE_PARAMS",
    "DEFAULT_PARAMS",
    "DEFAULT_TEACHERS",
    "LIST_SECTIONS",
    "LOSS_SPECS",
    "SECTIONS",
    "TEACHER_PRESETS",
    "TRAIN_ARG_KEYS",
    "AggregateConfig",
    "AlpacaEvalConfig",
    "AnnotateConfig",
    "AnswerServerConfig",
    "ArenaHardConfig",
    "BetaConfig",
    "ConfigError",
    "DataConfig",
    "DecodingConfig",
    "EnvelopeConfig",
    "EvalConfig",
    "FilterConfig",
    "GenerationConfig",
    "IFEvalConfig",
    "LoraSettings",
    "LossSpec",
    "MTBenchConfig",
    "MatrixConfig",
    "MethodConfig",
    "Params",
    "PrefEvalConfig",
    "PromptVariantConfig",
    "PromptsConfig",
    "StudentConfig",
    "SweepConfig",
    "TeacherConfig",
    "TrainArgs",
    "TrainConfig",
    "build",
    "build_list",
    "build_loss_args",
    "check_panel",
    "defaults",
    "describe",
    "flatten",
    "load",
    "loss_spec",
    "read_yaml",
    "reference_markdown",
]
