"""The ``report`` stage: the results table (Table 2 of the paper) and the reports index.

Reads every stage's report under the reports folder; writes ``eval.json``, ``eval.md``,
``eval_plot.{csv,png}`` (:mod:`.results`) and ``index.md`` (:mod:`.index`) there.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sp2dpo.report import index, results


@dataclasses.dataclass(frozen=True)
class ReportPaths:
    """The reports folder read and written; :meth:`pipeline` gives the DVC stage's."""

    reports: Path

    @classmethod
    def pipeline(cls) -> ReportPaths:
        return cls(reports=Path("reports"))


def run(paths: ReportPaths) -> dict[str, Any]:
    """Write the results table and plot, then the index; returns the combined eval metrics."""
    combined = results.write_results(Path(paths.reports))
    index.write_index(paths.reports)
    return combined
