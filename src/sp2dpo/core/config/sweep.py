"""Section ``sweep``: the APO outer loop's search space, selection metric and budget.

The paper frames SP2DPO as a bilevel problem: the student is trained for process variables
lambda (filters, teacher panel, prompt variants, aggregation operator, envelope, global beta,
method) and lambda* maximises a held-out metric of the trained student. ``sp2dpo sweep run``
turns this section into DVC experiments (``dvc exp run --queue -S key=value``, run by
``dvc queue start -j jobs``), and ``sp2dpo sweep select`` reads them back. No stage reads it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from typing import Any, Literal

from sp2dpo.core.config.base import field
from sp2dpo.core.errors import ConfigError

#: A sweep name: DVC experiment names are ``<name>-<n>`` and must be valid git ref components.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*(?:-[A-Za-z0-9_.]+)*$")
#: A params key as ``dvc exp run -S`` takes it (dotted, no list indices).
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")
#: Keys a sweep may not vary: they name the sweep itself.
_RESERVED = "sweep."


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """The APO outer loop (`sp2dpo sweep run` / `sp2dpo sweep select`): which process variables to
    vary, the held-out metric that picks lambda*, and the budget."""

    name: str = field(
        "sweep",
        "Name of the sweep: its DVC experiments are `<name>-1`, `<name>-2`, ... and its MLflow "
        "parent run is `<name>`.",
    )
    variables: dict[str, list[Any]] = field(
        {},
        "Process variables to vary: params key (as `dvc exp run -S` takes it, e.g. `beta.max` or "
        "`matrix.methods`) -> list of values; the sweep runs their grid (every combination, in "
        "the order written).",
    )
    set: dict[str, Any] = field(
        {},
        "Params every experiment of the sweep sets besides the swept ones (e.g. a reduced "
        "`train.max_steps`); `profile` composes a whole profile.",
    )
    profile: str | None = field(
        None,
        "A profile of `profiles/` composed into every experiment (`-S +profiles=NAME`), e.g. "
        "`apo-offline`.",
    )
    targets: list[str] = field(
        [],
        "DVC stages each experiment runs (with their upstream); empty: the whole pipeline.",
    )
    metric: str = field(
        "prefeval.accuracy",
        "Selection metric: a key of `methods.<method>` in `reports/eval/<student>.json` (dotted), "
        "e.g. `prefeval.accuracy`, `prefeval.mean_margin`, `alpaca_eval.length_controlled_winrate`; "
        "its 95% interval is read from the key + `_ci` where the report has one.",
    )
    direction: Literal["maximize", "minimize"] = field(
        "maximize", "Whether a larger or a smaller metric is better."
    )
    student: str | None = field(
        None, "The student whose report holds the metric (null: the first of `matrix.students`)."
    )
    method: str | None = field(
        None,
        "The method whose metric selects (null: each experiment's only trained method, so a "
        "sweep over `matrix.methods` compares methods).",
    )
    budget: int = field(16, "Most experiments one sweep may queue (the grid must fit).")
    jobs: int = field(2, "Parallel DVC queue workers (`dvc queue start -j`).")

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"sweep.name: {self.name!r} is not a valid experiment name prefix "
                "(letters, digits, `_`, `.`, single `-` between parts)"
            )
        for key, values in self.variables.items():
            if not _KEY.match(key) or key.startswith(_RESERVED):
                raise ConfigError(
                    f"sweep.variables: {key!r} is not a params key to vary (dotted, e.g. beta.max; "
                    "not a sweep.* key)"
                )
            if not values:
                raise ConfigError(f"sweep.variables.{key}: give at least one value")
            for i, value in enumerate(values):
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(f"sweep.variables.{key}[{i}]: {value!r} is not finite")
        for key in self.set:
            if not _KEY.match(key) or key.startswith(_RESERVED) or key in self.variables:
                raise ConfigError(
                    f"sweep.set: {key!r} must be a dotted params key that is not swept"
                )
        if self.budget < 1 or self.jobs < 1:
            raise ConfigError(f"need budget >= 1 and jobs >= 1, got {self.budget}, {self.jobs}")
        if self.variables and self.size() > self.budget:
            raise ConfigError(
                f"the grid has {self.size()} settings, more than sweep.budget={self.budget}"
            )
        if self.metric.strip(".") != self.metric or not self.metric:
            raise ConfigError(f"sweep.metric: {self.metric!r} is not a dotted key")

    def size(self) -> int:
        """Number of settings in the grid."""
        return math.prod(len(v) for v in self.variables.values()) if self.variables else 0

    def settings(self) -> list[dict[str, Any]]:
        """The grid: one ``{key: value}`` per experiment, the first variable varying slowest."""
        keys = list(self.variables)
        if not keys:
            return []
        return [dict(zip(keys, combo, strict=True))
                for combo in itertools.product(*(self.variables[k] for k in keys))]
