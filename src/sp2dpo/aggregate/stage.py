"""The ``aggregate`` stage: teacher calls -> the per-pair beta artifact (paper App. C, App. E.3).

One public entry point serves both doors, the DVC stage (``stages/aggregate.py``) and
``sp2dpo aggregate``: :func:`run` reads a call table, screens it (:mod:`.calls`), computes every
estimator (:mod:`.estimators`, laid out by :mod:`.table`), validates the artifact
(:func:`sp2dpo.core.beta.validate_artifact`, the schema the readers use too), writes it
byte-deterministically and writes the reports (:mod:`.reports`).

Example:
    >>> from sp2dpo.core import config
    >>> from sp2dpo.aggregate import aggregate
    >>> calls = pd.DataFrame({
    ...     "prompt_id": ["p1"] * 3, "annotator": ["q"] * 3, "variant": ["v1", "v2", "v3"],
    ...     "category": ["Style", "Safety", "Style"],
    ...     "magnitude": [0.5, 0.9, 1.0], "confidence": [0.8, 1.0, 0.2]})
    >>> result = aggregate(calls, config.AggregateConfig(), config.BetaConfig())
    >>> row = result.frame.iloc[0]
    >>> row["category_q_ens"], float(row["effective_gap_q_ens"]), float(row["beta_q_ens"])
    ('Style', 0.4, 0.138)
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from sp2dpo.aggregate import reports
from sp2dpo.aggregate.calls import CallTableError, Screening, read_calls, screen
from sp2dpo.aggregate.table import beta_table, write_csv
from sp2dpo.core.beta import validate_artifact
from sp2dpo.core.config import AggregateConfig, BetaConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AggregateResult:
    """The artifact frame, the screening counts and non-column results (bias offsets)."""

    frame: pd.DataFrame
    screening: Screening
    info: dict[str, Any]


def _check_envelopes(agg: AggregateConfig, beta: BetaConfig) -> None:
    for name, env in agg.category_envelopes.items():
        if env.min < beta.min or env.max > beta.max:
            raise ValueError(
                f"aggregate.category_envelopes.{name}: [{env.min}, {env.max}] must lie inside the "
                f"global envelope [beta.min, beta.max] = [{beta.min}, {beta.max}]"
            )


def aggregate(
    calls: pd.DataFrame,
    agg: AggregateConfig,
    beta: BetaConfig,
    *,
    strict: bool = False,
    where: str = "calls",
) -> AggregateResult:
    """Screen a call table and compute the validated artifact frame (no file is written).

    Args:
        calls: call table with at least ``prompt_id, annotator, variant, category, magnitude,
            confidence`` (``status`` optional).
        agg: section ``aggregate`` of the params.
        beta: section ``beta`` (envelope, seed).
        strict: fail on bad or missing calls (also on when ``agg.strict``).
        where: name of the input, for messages.

    Raises:
        CallTableError: malformed keys, no complete pair, or (strict) a bad or missing call.
        SchemaViolation: the artifact breaks its schema (a bug, never expected).
    """
    _check_envelopes(agg, beta)
    screening = screen(calls, where, strict=strict or agg.strict)
    panel = screening.panel
    if len(panel.prompt_ids) == 0:
        reasons = ", ".join(f"{k}={v}" for k, v in screening.excluded_by_reason.items() if v)
        raise CallTableError(
            f"{where}: no pair has a complete ok call set for the panel "
            f"{list(panel.annotators)} x {list(panel.variants)} (excluded: {reasons})"
        )
    frame, info = beta_table(panel, agg, beta)
    envelopes = {c: (e.min, e.max) for c, e in agg.category_envelopes.items()}
    validate_artifact(
        frame, panel.annotators, panel.variants, beta.min, beta.max,
        category_envelopes=envelopes, where=where,
    )
    return AggregateResult(frame=frame, screening=screening, info=info)


@dataclasses.dataclass(frozen=True)
class AggregatePaths:
    """Where the stage reads and writes; :meth:`pipeline` gives the DVC stage's paths.

    ``report_dir`` receives ``aggregate.json`` and the ``aggregate/`` plots (None: no reports).
    """

    calls: Path
    out: Path
    report_dir: Path | None = None

    @classmethod
    def pipeline(cls) -> AggregatePaths:
        return cls(
            calls=Path("data/annotate/calls.parquet"),
            out=Path("data/beta/beta.csv"),
            report_dir=Path("reports"),
        )


def run(
    agg: AggregateConfig,
    beta: BetaConfig,
    paths: AggregatePaths,
    *,
    strict: bool = False,
) -> dict[str, Any]:
    """Call table file -> validated beta artifact CSV (+ reports). The stage and the CLI call this.

    Args:
        agg: section ``aggregate``.
        beta: section ``beta`` (the CLI's ``--beta-min/--beta-max/--seed`` replace its values).
        paths: the call table (``.parquet`` or ``.csv``), the artifact (written atomically,
            byte-identical on re-run) and the report folder.
        strict: see :func:`aggregate`.

    Returns:
        The metrics written to ``aggregate.json``.
    """
    result = aggregate(read_calls(paths.calls), agg, beta, strict=strict, where=str(paths.calls))
    write_csv(result.frame, paths.out)
    anns = result.screening.panel.annotators
    counts = result.screening.counts()
    obj = reports.metrics(result.frame, anns, counts, result.info)
    obj["envelope"] = {"beta_min": beta.min, "beta_max": beta.max}
    if paths.report_dir is not None:
        reports.write(result.frame, anns, obj, paths.report_dir, beta.min, beta.max,
                      excluded=result.screening.excluded)
    log.info("wrote %s: %d pairs x %d columns", paths.out, *result.frame.shape)
    excluded = result.screening.excluded
    if len(excluded):
        shown = ", ".join(f"{r.prompt_id} ({r.reason})" for r in excluded.head(5).itertuples())
        where = paths.report_dir / "aggregate" / "excluded.csv" if paths.report_dir else "--report-dir"
        log.warning("excluded %d pair(s): %s%s; all of them in %s", len(excluded), shown,
                    " ..." if len(excluded) > 5 else "", where)
    return obj
