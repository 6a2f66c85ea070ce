"""The ``aggregate`` stage: teacher calls -> the per-pair beta artifact (paper App. C).

- :mod:`.calls`: reading and screening the call table (complete panels, exclusion counts);
- :mod:`.estimators`: the pure estimators (median, means, Huber, majority vote, ...);
- :mod:`.table`: the artifact's columns, laid out per panel, and its byte-stable CSV writer;
- :mod:`.reports`: ``aggregate.json`` and the diagnostic plots;
- :mod:`.stage`: :func:`aggregate` (frame in, artifact frame out) and :func:`run` (the stage).

The artifact is read back through :mod:`sp2dpo.core.beta`.
"""

from sp2dpo.aggregate.calls import REASONS, CallTableError, Panel, Screening, read_calls, screen
from sp2dpo.aggregate.stage import AggregatePaths, AggregateResult, aggregate, run
from sp2dpo.aggregate.table import FLOAT_DECIMALS, beta_table, write_csv

__all__ = [
    "FLOAT_DECIMALS",
    "REASONS",
    "AggregatePaths",
    "AggregateResult",
    "CallTableError",
    "Panel",
    "Screening",
    "aggregate",
    "beta_table",
    "read_calls",
    "run",
    "screen",
    "write_csv",
]
