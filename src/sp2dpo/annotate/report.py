"""The outputs of the ``annotate`` stage: the call table (one row per planned call), the report
(status counts, incomplete pairs, tokens and cost per teacher) and the run's timings.

The call table and the report are DVC outputs, so they hold only what the calls answered:
re-running on the same recorded calls writes the same bytes. Latencies belong to one run; they
go to the run log and MLflow (:func:`latency_summary`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo.annotate.plan import CallSpec
from sp2dpo.annotate.prompts import Variant
from sp2dpo.core import schemas
from sp2dpo.core.config import TeacherConfig
from sp2dpo.llm.teachers import TRANSIENT_STATUSES

#: Columns of the call table, in order: the pinned seven, then bookkeeping.
TABLE_COLUMNS = [
    "prompt_id", "annotator", "variant", "category", "magnitude", "confidence", "status",
    "model", "call_key", "template_sha256", "request_sha256", "attempts",
    "prompt_tokens", "completion_tokens", "cost_usd", "response_text", "error", "transient",
]


def call_table(specs: list[CallSpec], records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per planned call from its log record, in plan order (pair, teacher, variant)."""
    rows = []
    for spec in specs:
        rec = records[spec.key]
        row = {c: rec.get(c) for c in TABLE_COLUMNS if c != "call_key"}
        row["call_key"] = spec.key
        rows.append(row)
    frame = pd.DataFrame.from_records(rows, columns=TABLE_COLUMNS)
    for column in ("magnitude", "confidence", "prompt_tokens", "completion_tokens", "cost_usd"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["attempts"] = frame["attempts"].astype("int64")
    # Records from before the flag existed: a connection error or timeout counts as transient.
    legacy = frame["transient"].isna()
    frame.loc[legacy, "transient"] = frame.loc[legacy, "status"].isin(sorted(TRANSIENT_STATUSES))
    frame["transient"] = frame["transient"].astype(bool)
    return frame


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    q = np.percentile(np.asarray(values, dtype=float), [50, 90, 99])
    return {"p50": round(float(q[0]), 4), "p90": round(float(q[1]), 4), "p99": round(float(q[2]), 4),
            "max": round(max(values), 4)}


def latency_summary(timings: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Latency percentiles (seconds, last attempt) per teacher over the calls made in this run."""
    by_teacher: dict[str, list[float]] = {}
    for t in timings:
        if t.get("latency_s") is not None:
            by_teacher.setdefault(t["annotator"], []).append(float(t["latency_s"]))
    return {teacher: _percentiles(values) for teacher, values in sorted(by_teacher.items())}


def report(
    table: pd.DataFrame,
    teachers: list[TeacherConfig],
    variants: list[Variant],
    made: Counter[str],
    skipped_lines: int,
) -> dict[str, Any]:
    """Metrics of the call table: per teacher status counts, incomplete pairs, tokens, cost."""
    per_teacher = {}
    n_variants = len(variants)
    for t in teachers:
        part = table[table["annotator"] == t.id]
        counts = part["status"].value_counts()
        ok_per_pair = part[part["status"] == "ok"].groupby("prompt_id").size()
        complete = int((ok_per_pair == n_variants).sum())
        per_teacher[t.id] = {
            "model": t.model,
            "calls": len(part),
            "calls_made": int(made.get(t.id, 0)),
            "status": {s: int(counts.get(s, 0)) for s in schemas.CALL_STATUSES},
            "transient": int(part["transient"].sum()),
            "ok_rate": round(float((part["status"] == "ok").mean()), 4) if len(part) else None,
            "pairs_incomplete": int(part["prompt_id"].nunique() - complete),
            "prompt_tokens": int(part["prompt_tokens"].fillna(0).sum()),
            "completion_tokens": int(part["completion_tokens"].fillna(0).sum()),
            "cost_usd": round(float(part["cost_usd"].sum()), 6),
        }
    ok = table[table["status"] == "ok"].groupby("prompt_id").size()
    n_pairs = table["prompt_id"].nunique()
    return {
        "pairs": int(n_pairs),
        "teachers": [t.id for t in teachers],
        "variants": [v.name for v in variants],
        "calls": len(table),
        "calls_made": int(sum(made.values())),
        "calls_cached": len(table) - int(sum(made.values())),
        "pairs_complete": int((ok == len(teachers) * n_variants).sum()),
        "status": {s: int((table["status"] == s).sum()) for s in schemas.CALL_STATUSES},
        "transient": int(table["transient"].sum()),
        "cost_usd": round(float(table["cost_usd"].sum()), 6),
        "log_lines_skipped": skipped_lines,
        "per_teacher": per_teacher,
    }


#: Facts about one run (what the cache answered, torn log lines), not about the call table:
#: logged and returned, but kept out of ``reports/annotate.json`` so a re-run writes the same bytes.
RUN_STATE_KEYS = frozenset({"calls_made", "calls_cached", "log_lines_skipped", "latency_s"})


def stable_report(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary without :data:`RUN_STATE_KEYS`, at the top level and per teacher."""
    out = {k: v for k, v in summary.items() if k not in RUN_STATE_KEYS}
    out["per_teacher"] = {
        t: {k: v for k, v in row.items() if k not in RUN_STATE_KEYS}
        for t, row in summary["per_teacher"].items()
    }
    return out
