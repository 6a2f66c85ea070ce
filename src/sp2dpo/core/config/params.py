"""The registry of params sections and :func:`load`, the one way a stage reads ``params.yaml``.

Each section of ``params.yaml`` (one per pipeline stage, plus ``teachers``, ``beta`` and
``matrix``) maps to a frozen dataclass with a typed, defaulted, documented field per key (see the
sibling modules). :func:`load` rejects unknown sections and keys and values of the wrong type,
listing what is allowed, so a typo in ``params.yaml`` or in ``dvc exp run -S key=value`` fails
before any work starts. The dataclass defaults are the offline default run: they equal
``params.yaml`` key for key (a test keeps them so), and ``docs/params.md`` is generated from them.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sp2dpo.core.config.aggregate import AggregateConfig, BetaConfig
from sp2dpo.core.config.annotate import (
    AnnotateConfig,
    DecodingConfig,
    PromptsConfig,
    TeacherConfig,
    check_panel,
)
from sp2dpo.core.config.base import DEFAULT_PARAMS, build, build_list, flatten, read_yaml
from sp2dpo.core.config.data import DataConfig, FilterConfig
from sp2dpo.core.config.evaluate import EvalConfig
from sp2dpo.core.config.losses import LOSS_SPECS
from sp2dpo.core.config.sweep import SweepConfig
from sp2dpo.core.config.train import MatrixConfig, TrainConfig
from sp2dpo.core.errors import ConfigError

#: Every section, in ``params.yaml`` order.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "filter": FilterConfig,
    "teachers": TeacherConfig,
    "prompts": PromptsConfig,
    "decoding": DecodingConfig,
    "annotate": AnnotateConfig,
    "aggregate": AggregateConfig,
    "beta": BetaConfig,
    "train": TrainConfig,
    "matrix": MatrixConfig,
    "eval": EvalConfig,
    "sweep": SweepConfig,
}

#: Sections that are YAML lists of the registered dataclass rather than one mapping.
LIST_SECTIONS: frozenset[str] = frozenset({"teachers"})

#: The default teacher panel (a list section has no dataclass default of its own).
DEFAULT_TEACHERS: tuple[TeacherConfig, ...] = (
    TeacherConfig(id="smollm2", backend="local", model="local:smollm2-135m-instruct", max_input_tokens=768),
    TeacherConfig(id="gemma3", backend="local", model="local:gemma3-270m", max_input_tokens=768),
)


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


def _build_section(name: str, value: Any) -> Any:
    cls = SECTIONS[name]
    if name in LIST_SECTIONS:
        if value is None:
            return list(DEFAULT_TEACHERS)
        return build_list(cls, value, name)
    return build(cls, value, name)


def defaults() -> Params:
    """Every section at its dataclass default: the offline default run."""
    return Params(sections={name: _build_section(name, None) for name in SECTIONS}, raw={})


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
    bad = sorted(wanted - set(SECTIONS))
    if bad:
        raise ValueError(f"unknown params section(s) requested: {', '.join(bad)}")
    built = {}
    for name in SECTIONS:
        try:
            built[name] = _build_section(name, raw.get(name) if name in wanted else None)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if "teachers" in wanted:
        check_panel(built["teachers"], f"{path}: teachers")
    if {"train", "matrix"} <= wanted:
        try:
            built["matrix"].check(built["train"])
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return Params(sections=built, raw=raw)

def describe(cls: type) -> list[tuple[str, Any, str]]:
    """``(key, default, help)`` for every field of a section: the source of docs/params.md."""
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
        "Generated from `src/sp2dpo/core/config/` by `sp2dpo params docs > docs/params.md`; a test",
        "keeps it in sync. The defaults are the offline default run: `params.yaml` sets exactly these",
        "values (a test checks that too), and a key left out of a params file takes its default.",
    ]
    for section, cls in SECTIONS.items():
        prefix = f"{section}[]." if section in LIST_SECTIONS else f"{section}."
        parts += ["", f"## `{section}`", "", (cls.__doc__ or "").strip().splitlines()[0], ""]
        if section in LIST_SECTIONS:
            panel = ", ".join(f"`{t.id}` ({t.model})" for t in DEFAULT_TEACHERS)
            parts += [f"A list; each entry has the keys below. Default panel: {panel}.", ""]
        parts += ["| key | default | meaning |", "|---|---|---|", *rows(cls, prefix)]
    parts += [
        "",
        "## `train.methods[].loss_args`",
        "",
        "The knobs of each loss (docs/losses.md gives the formulas); a key left out takes its default.",
    ]
    for name, spec in LOSS_SPECS.items():
        facts = [
            "reference" if spec.reference else "reference-free",
            "token averages" if spec.averaged else "sums",
            *(["per-token reference"] if spec.token_level else []),
            *(["margins"] if spec.margins else []),
            "per-pair beta" if spec.per_pair_beta else "global beta only",
        ]
        parts += ["", f"### `{name}`: {spec.summary}", "", f"{', '.join(facts)}.", ""]
        arg_rows = rows(spec.args, "")
        parts += ["| key | default | meaning |", "|---|---|---|", *arg_rows] if arg_rows else ["No knobs."]
    return "\n".join(parts) + "\n"
