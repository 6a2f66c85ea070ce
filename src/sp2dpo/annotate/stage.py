"""The ``annotate`` stage: plan every call, skip stored ones, run the rest, write table and report.

One call per (pair, teacher, variant) (:mod:`.plan`). Calls already in the call store with a
final outcome are skipped, so a re-run, a run after a crash, or a run with one more teacher or
variant only calls what is new. Each teacher runs on its own pool of ``max_concurrency`` threads
(one for a local model) behind its rpm/tpm limiter; every finished call is stored at once
(:mod:`.execute`). When all calls have ended, the call table (one row per call, whatever its
status) and the report are written from the store (:mod:`.report`); what the run measured
(latency per call, attempts, finish times) goes to the run log and, from the pipeline, to an
MLflow run, never into those DVC outputs. Calls that ended with a
transient failure (connection, timeout, 429/5xx after the retries) are written too, and the
stage then fails with :class:`TransientFailures`: a re-run calls exactly those again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from sp2dpo import tracking
from sp2dpo.annotate.execute import execute
from sp2dpo.annotate.plan import estimate, is_done, plan_calls, select_pairs
from sp2dpo.annotate.prompts import load_variants
from sp2dpo.annotate.report import TABLE_COLUMNS, call_table, latency_summary, report, stable_report
from sp2dpo.core import artifacts, runlog, schemas
from sp2dpo.core.config import (
    AnnotateConfig,
    DecodingConfig,
    PromptsConfig,
    TeacherConfig,
    check_panel,
    flatten,
)
from sp2dpo.core.errors import UserError
from sp2dpo.llm.callstore import CallStore
from sp2dpo.llm.teachers import RetryingCaller

log = logging.getLogger(__name__)

#: Call-table formats (by suffix) the stage writes.
CALL_TABLE_SUFFIXES = (".parquet", ".csv")


class TransientFailures(UserError):
    """Some calls ended with a failure that may pass; everything else is written."""


@dataclasses.dataclass(frozen=True)
class AnnotatePaths:
    """Where the stage reads and writes; :meth:`pipeline` gives the DVC stage's paths.

    Attributes:
        pairs: pairs table (parquet, jsonl, csv) with prompt_id, prompt, chosen, rejected.
        out: the call table (``.parquet`` or ``.csv``).
        log: the call store, also the cache: a folder of segments (or one ``.jsonl`` file);
            None: ``out`` without its suffix (``data/annotate/calls/``).
        report: the metrics JSON (None: not written).
        prompts_root: the folder ``prompts.dir`` is relative to.
        run_log: folder of the run logs (latencies, attempts, finish time of every call made;
            None: not written).
    """

    pairs: Path
    out: Path
    log: Path | None = None
    report: Path | None = None
    prompts_root: Path = Path(".")
    run_log: Path | None = None

    @classmethod
    def pipeline(cls) -> AnnotatePaths:
        return cls(
            pairs=Path("data/pairs/filtered.parquet"),
            out=Path("data/annotate/calls.parquet"),
            log=Path("data/annotate/calls"),
            report=Path("reports/annotate.json"),
            run_log=runlog.PIPELINE_DIR / "annotate",
        )

    @property
    def call_store(self) -> Path:
        return self.log if self.log is not None else Path(self.out).with_suffix("")

    @property
    def legacy_log(self) -> Path:
        """Where earlier versions kept the call log (one file beside the call table): read too."""
        return Path(self.out).with_suffix(".jsonl")


def run(
    teachers: list[TeacherConfig],
    prompts: PromptsConfig,
    decoding: DecodingConfig,
    settings: AnnotateConfig,
    paths: AnnotatePaths,
    *,
    estimate_only: bool = False,
    track: bool = False,
) -> dict[str, Any]:
    """Annotate the pairs with the panel: sections ``teachers``, ``prompts``, ``decoding`` and
    ``annotate`` of the params.

    Args:
        teachers, prompts, decoding, settings: the four params sections.
        paths: inputs and outputs (:class:`AnnotatePaths`).
        estimate_only: return the estimate of calls, tokens and cost; nothing is called or written.
        track: log the run (params, calls made, cost, latency per teacher) to MLflow.

    Returns:
        The report (or the estimate).

    Raises:
        ConfigError: an empty panel, duplicate teacher ids, a bad template or output suffix.
        AuthError: a missing or rejected key (the stage stops at once).
    """
    check_panel(teachers, "teachers")
    out_path = Path(paths.out)
    if out_path.suffix.lower() not in CALL_TABLE_SUFFIXES:
        raise ValueError(
            f"{out_path}: the call table must be {' or '.join(CALL_TABLE_SUFFIXES)} "
            "(checked before any call is made)"
        )
    variants = load_variants(prompts, paths.prompts_root)
    pairs = artifacts.read_table(paths.pairs, schemas.PairsToAnnotate)
    if pairs.empty:
        raise ValueError(f"{paths.pairs}: no pairs to annotate")
    pairs = select_pairs(pairs, settings.max_pairs, settings.subset_seed)
    legacy = paths.legacy_log
    has_legacy = legacy.is_file() and legacy != paths.call_store
    # An estimate writes nothing: it reads the earlier call log where it is.
    store = CallStore(paths.call_store, extra=(legacy,) if has_legacy and estimate_only else ())
    if has_legacy and not estimate_only:
        imported = store.import_log(legacy)
        if imported is not None:
            log.info("annotate: imported the earlier call log %s into the store as %s", legacy, imported)
    # Only what the plan and the call table read is kept of each record (a 540k-call store read
    # whole takes several GB); whole records where a shared or earlier store may lend some.
    slim = None if store.shared is not None or store.extra else TABLE_COLUMNS
    records = store.read() if estimate_only else store.read(slim)
    if estimate_only:
        return estimate(teachers, decoding, settings, pairs, variants, records)

    specs = plan_calls(pairs, teachers, variants, decoding)
    redo = set(settings.redo_statuses)
    todo = [s for s in specs if not is_done(records.get(s.key), redo)]
    log.info(
        "annotate: %d pairs x %d teachers x %d variants = %d calls; %d cached, %d to call",
        len(pairs), len(teachers), len(variants), len(specs), len(specs) - len(todo), len(todo),
    )
    # Building a teacher reads its key: a missing key stops the stage before any call.
    backends: list[RetryingCaller | None] = [None] * len(teachers)
    for ti in sorted({s.teacher for s in todo}):
        backends[ti] = RetryingCaller(teachers[ti], decoding, chars_per_token=settings.chars_per_token)
    made: Counter[str] = Counter()
    timings: list[dict[str, Any]] = []

    def log_run(completed: bool, **counts: Any) -> None:
        """What this run measured, to the run log (``counts``: the summary's run facts)."""
        if paths.run_log is not None:
            runlog.write(paths.run_log, {"stage": "annotate", "completed": completed, **counts,
                                         "latency_s": latency_summary(timings), "calls": timings})

    # Final records this run needs that only the shared store holds: copied into the run's own
    # store, which stays self-contained (a re-run without the shared store calls nothing).
    borrowed = [records[s.key] for s in specs
                if s.key in records and is_done(records[s.key], redo) and not store.holds(records[s.key])]
    store.ensure()
    if todo or borrowed:
        try:
            with store:
                for record in borrowed:
                    store.adopt(record)
                if todo:
                    made = execute(todo, pairs, backends, variants, store, progress=settings.progress,
                                   timings=timings)
        except BaseException:
            if timings:  # what the stopped run measured
                log_run(False)
            raise
        del records
        records = store.read(TABLE_COLUMNS)
    table = call_table(specs, records)
    artifacts.write_table(table, out_path, schemas.AnnotatedCallTable)
    summary = report(table, teachers, variants, made, store.skipped_lines)
    summary["latency_s"] = latency_summary(timings)
    if paths.report is not None:
        artifacts.write_json(stable_report(summary), paths.report)
    log_run(True, **{k: summary[k] for k in ("calls", "calls_made", "calls_cached",
                                             "log_lines_skipped", "cost_usd")})
    if track:
        _track(summary, teachers, prompts, decoding, settings)
    log.info(
        "annotate: %d calls (%d made now), %d ok, %d pairs complete, cost $%.4f -> %s",
        summary["calls"], summary["calls_made"], summary["status"]["ok"], summary["pairs_complete"],
        summary["cost_usd"], out_path,
    )
    transient = table[table["transient"]]
    if len(transient):
        by_status = transient["status"].value_counts().sort_index()
        raise TransientFailures(
            f"annotate: {len(transient)} of {len(table)} calls ended with a transient failure "
            f"({', '.join(f'{s} {n}' for s, n in by_status.items())}; first: "
            f"{transient.iloc[0]['annotator']}/{transient.iloc[0]['prompt_id']}: "
            f"{transient.iloc[0]['error']}); the call table and report are written; re-run when "
            f"the endpoint is back to call exactly those again (finished calls are stored in "
            f"{store.path})"
        )
    return summary


def _track(
    summary: dict[str, Any],
    teachers: list[TeacherConfig],
    prompts: PromptsConfig,
    decoding: DecodingConfig,
    settings: AnnotateConfig,
) -> None:
    """One MLflow run per annotate run: the four sections as params, calls and cost, and each
    teacher's latency percentiles (measured on the calls made now)."""
    params = flatten({
        "teachers": [dataclasses.asdict(t) for t in teachers],
        "prompts": dataclasses.asdict(prompts),
        "decoding": dataclasses.asdict(decoding),
        "annotate": dataclasses.asdict(settings),
    })
    metrics: dict[str, float] = {
        k: float(summary[k]) for k in ("calls", "calls_made", "calls_cached", "pairs_complete", "cost_usd")
    }
    for teacher, row in summary["per_teacher"].items():
        metrics[f"{teacher}/calls_made"] = float(row.get("calls_made", 0))
        metrics[f"{teacher}/ok_rate"] = float(row["ok_rate"] or 0.0)
    for teacher, pct in summary["latency_s"].items():
        metrics.update({f"{teacher}/latency_{q}_s": float(v) for q, v in pct.items() if v is not None})
    with tracking.start_run("annotate", params, {"stage": "annotate"},
                            experiment=tracking.ANNOTATE_EXPERIMENT) as tracker:
        tracker.log_metrics(metrics)
        log.info("annotate: logged to MLflow run %s", tracker.run_id)
