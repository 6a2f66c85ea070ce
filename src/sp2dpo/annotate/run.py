"""The ``annotate`` stage: plan every call, skip cached ones, run the rest, write table and report.

One call per (pair, teacher, variant). Calls already in the call log (same key) are skipped, so a
re-run, a run after a crash, or a run with one more teacher or variant only calls what is new.
Each teacher runs on its own pool of ``max_concurrency`` threads (one for a local model) behind
its rpm/tpm limiter; every finished call is appended to the log at once. When all calls have
ended, the call table (one row per call, whatever its status) and ``reports/annotate.json`` are
written from the log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo import artifacts, config, schemas
from sp2dpo.annotate.cache import LOG_VERSION, CallLog, call_key, pair_sha256
from sp2dpo.annotate.client import PRESETS, AuthError
from sp2dpo.annotate.prompts import Variant, load_variants, messages_sha256
from sp2dpo.annotate.teachers import CallResult, Teacher, signature
from sp2dpo.config import (
    AnnotateConfig,
    ConfigError,
    DecodingConfig,
    PromptsConfig,
    TeacherConfig,
)
from sp2dpo.sampling import seeded_subset

log = logging.getLogger(__name__)

#: The params sections the stage reads (and lists in dvc.yaml).
PARAM_SECTIONS = ["teachers", "prompts", "decoding", "annotate"]

#: Columns of the call table, in order: the pinned seven, then bookkeeping.
TABLE_COLUMNS = [
    "prompt_id", "annotator", "variant", "category", "magnitude", "confidence", "status",
    "model", "call_key", "template_sha256", "request_sha256", "attempts", "latency_s",
    "prompt_tokens", "completion_tokens", "cost_usd", "response_text", "error", "timestamp",
]


@dataclasses.dataclass(frozen=True)
class AnnotateParams:
    """The four params sections of the stage, with the teacher panel resolved."""

    teachers: list[TeacherConfig]
    prompts: PromptsConfig
    decoding: DecodingConfig
    annotate: AnnotateConfig


@dataclasses.dataclass(frozen=True, slots=True)
class CallSpec:
    """One planned call; messages are rendered only when the call is made."""

    key: str
    row: int
    teacher: int
    variant: int


def load_params(path: str | Path = config.DEFAULT_PARAMS) -> AnnotateParams:
    """Read the stage's sections from ``path``; ``annotate.teachers_file`` replaces the panel.

    Raises:
        ConfigError: bad values, an empty panel or duplicate teacher ids.
    """
    params = config.load(path, sections=PARAM_SECTIONS)
    teachers = params.teachers
    if params.annotate.teachers_file:
        file = params.annotate.teachers_file
        raw = config.read_yaml(file)
        try:
            teachers = config.build_list(TeacherConfig, raw.get("teachers"), "teachers")
        except ConfigError as exc:
            raise ConfigError(f"{file}: {exc}") from None
    check_panel(teachers, str(path))
    return AnnotateParams(teachers, params.prompts, params.decoding, params.annotate)


def check_panel(teachers: list[TeacherConfig], where: str) -> None:
    """At least one teacher, unique ids."""
    if not teachers:
        raise ConfigError(f"{where}: `teachers` is empty; configure at least one teacher")
    ids = [t.id for t in teachers]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{where}: teacher ids must be unique; repeated: {', '.join(dupes)}")


#: Hash domain of the deterministic pair subset (see :func:`select_pairs`).
SUBSET_DOMAIN = "annotate-subset"


def select_pairs(pairs: pd.DataFrame, max_pairs: int | None, seed: int) -> pd.DataFrame:
    """A deterministic subset of ``max_pairs`` pairs, in input order.

    The pairs with the smallest ``sha256(f"annotate-subset:{seed}:{prompt_id}")`` are kept, so
    the subset does not depend on row order and growing ``max_pairs`` keeps every earlier pair
    (their calls stay cached). The ``annotate-subset:`` prefix separates this hash from the one
    behind ``beta_random`` (``sha256(f"{seed}:{prompt_id}")``): with the same seed the subset
    would otherwise be exactly the pairs with the smallest random betas.
    """
    keep = seeded_subset(list(pairs["prompt_id"]), max_pairs, seed, SUBSET_DOMAIN)
    return pairs.iloc[keep].sort_index().reset_index(drop=True)


def plan_calls(
    pairs: pd.DataFrame,
    teachers: list[TeacherConfig],
    variants: list[Variant],
    decoding: DecodingConfig,
) -> list[CallSpec]:
    """Every call of the run, pair-major (pair, then teacher, then variant)."""
    signatures = [signature(t, decoding) for t in teachers]
    specs = []
    for row, pair in enumerate(pairs.itertuples(index=False)):
        content = pair_sha256(pair.prompt, pair.chosen, pair.rejected)
        for ti, teacher in enumerate(teachers):
            for vi, variant in enumerate(variants):
                key = call_key(
                    prompt_id=pair.prompt_id,
                    pair_sha256=content,
                    teacher_id=teacher.id,
                    model=teacher.model,
                    variant=variant.name,
                    template_sha256=variant.template_sha256,
                    decode=signatures[ti],
                )
                specs.append(CallSpec(key, row, ti, vi))
    return specs


def _is_done(record: dict[str, Any] | None, redo: set[str]) -> bool:
    return record is not None and record["status"] not in redo and record["status"] != "auth_error"


# --------------------------------------------------------------------------------------------
# estimate (dry run)
# --------------------------------------------------------------------------------------------


def estimate(
    params: AnnotateParams, pairs: pd.DataFrame, variants: list[Variant], records: dict[str, Any]
) -> dict[str, Any]:
    """Calls, tokens and cost per teacher, before spending anything.

    Input tokens are estimated as characters / ``annotate.chars_per_token`` of the rendered
    messages; output tokens are bounded by ``decoding.max_tokens`` per call, so the cost is an
    upper bound. Calls already in the log are counted as cached and cost nothing.
    """
    specs = plan_calls(pairs, params.teachers, variants, params.decoding)
    redo = set(params.annotate.redo_statuses)
    lengths = (pairs["prompt"].str.len() + pairs["chosen"].str.len() + pairs["rejected"].str.len()).tolist()
    fixed = [len(v.system) + len(v.user) for v in variants]
    per_teacher: dict[str, dict[str, Any]] = {}
    for ti, teacher in enumerate(params.teachers):
        todo = [s for s in specs if s.teacher == ti and not _is_done(records.get(s.key), redo)]
        total = sum(1 for s in specs if s.teacher == ti)
        chars = sum(lengths[s.row] + fixed[s.variant] for s in todo)
        tokens_in = math.ceil(chars / params.annotate.chars_per_token)
        tokens_out = len(todo) * params.decoding.max_tokens
        per_teacher[teacher.id] = {
            "model": teacher.model,
            "backend": teacher.backend,
            "calls": total,
            "cached": total - len(todo),
            "to_call": len(todo),
            "input_tokens_est": tokens_in,
            "output_tokens_max": tokens_out,
            "cost_usd_max": round(
                (tokens_in * teacher.price_in_per_m + tokens_out * teacher.price_out_per_m) / 1e6, 4
            ),
        }
    return {
        "pairs": len(pairs),
        "variants": [v.name for v in variants],
        "per_teacher": per_teacher,
        "to_call": sum(t["to_call"] for t in per_teacher.values()),
        "cost_usd_max": round(sum(t["cost_usd_max"] for t in per_teacher.values()), 4),
        "note": (
            f"input tokens ~ characters / {params.annotate.chars_per_token:g}; output tokens at "
            f"decoding.max_tokens={params.decoding.max_tokens} per call (an upper bound)"
        ),
    }


# --------------------------------------------------------------------------------------------
# execution
# --------------------------------------------------------------------------------------------


class _Progress:
    """Counts, running cost and the progress bar, updated under one lock."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.lock = threading.Lock()
        self.ok = self.failed = 0
        self.cost = 0.0
        self.made: Counter[str] = Counter()
        self.bar = tqdm(total=total, desc="annotate", unit="call", disable=not enabled or total == 0,
                        file=sys.stderr, dynamic_ncols=True)

    def update(self, teacher: str, status: str, cost: float) -> None:
        with self.lock:
            self.made[teacher] += 1
            if status == "ok":
                self.ok += 1
            else:
                self.failed += 1
            self.cost += cost
            self.bar.set_postfix(ok=self.ok, failed=self.failed, cost=f"${self.cost:.4f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _record(
    spec: CallSpec,
    pair: Any,
    teacher: Teacher,
    variant: Variant,
    messages: list[dict[str, str]],
    sig: dict[str, Any],
    content_sha: str,
    result: CallResult,
) -> dict[str, Any]:
    cfg = teacher.cfg
    endpoint = None
    if cfg.backend == "openai":
        endpoint = (cfg.base_url or PRESETS[cfg.preset].base_url or "").rstrip("/")
    return {
        "v": LOG_VERSION,
        "key": spec.key,
        "prompt_id": pair.prompt_id,
        "annotator": cfg.id,
        "variant": variant.name,
        "model": cfg.model,
        "backend": cfg.backend,
        "preset": cfg.preset if cfg.backend == "openai" else None,
        "endpoint": endpoint,
        "status": result.status,
        "category": result.category,
        "magnitude": result.magnitude,
        "confidence": result.confidence,
        "response_text": result.text,
        "raw_response": result.raw,
        "error": result.error,
        "attempts": result.attempts,
        "latency_s": None if result.latency_s is None else round(result.latency_s, 4),
        "elapsed_s": round(result.elapsed_s, 4),
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost_usd": round(teacher.cost(result.prompt_tokens, result.completion_tokens), 8),
        "http_status": result.http_status,
        "response_model": result.response_model,
        "system_fingerprint": result.fingerprint,
        "finish_reason": result.finish_reason,
        "template_sha256": variant.template_sha256,
        "request_sha256": messages_sha256(messages),
        "pair_sha256": content_sha,
        "decode": sig,
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    }


def execute(
    todo: list[CallSpec],
    pairs: pd.DataFrame,
    teachers: list[Teacher],
    variants: list[Variant],
    call_log: CallLog,
    *,
    progress: bool = True,
) -> Counter[str]:
    """Make the ``todo`` calls, appending each finished one to the (open) ``call_log``.

    Returns:
        Calls made per teacher id.

    Raises:
        AuthError: a teacher's key is missing or rejected (other teachers' calls in flight are
            still logged; nothing else starts).
        KeyboardInterrupt: after the calls in flight have been logged.
    """
    by_teacher: dict[int, list[CallSpec]] = {}
    for spec in todo:
        by_teacher.setdefault(spec.teacher, []).append(spec)
    sigs = {ti: signature(teachers[ti].cfg, teachers[ti].decoding) for ti in by_teacher}
    rows = list(pairs.itertuples(index=False))
    contents: dict[int, str] = {}
    stop = threading.Event()
    errors: list[BaseException] = []
    bar = _Progress(len(todo), progress)

    def worker(ti: int, queue: list[CallSpec], lock: threading.Lock) -> None:
        teacher = teachers[ti]
        try:
            while not stop.is_set():
                with lock:
                    if not queue:
                        return
                    spec = queue.pop()
                pair = rows[spec.row]
                variant = variants[spec.variant]
                messages = variant.render(pair.prompt, pair.chosen, pair.rejected)
                result = teacher.judge(messages, stop)
                if result is None:  # stopped before the call finished: not logged, redone later
                    return
                content = contents.get(spec.row) or pair_sha256(pair.prompt, pair.chosen, pair.rejected)
                contents[spec.row] = content
                record = _record(spec, pair, teacher, variant, messages, sigs[ti], content, result)
                call_log.append(record)
                bar.update(teacher.cfg.id, result.status, record["cost_usd"])
        except BaseException as exc:  # re-raised by the main thread
            errors.append(exc)
            stop.set()

    threads = []
    for ti, specs in by_teacher.items():
        queue = list(reversed(specs))  # pop() from the end keeps pair-major order
        lock = threading.Lock()
        workers = 1 if teachers[ti].cfg.backend == "local" else min(teachers[ti].cfg.max_concurrency, len(specs))
        for _ in range(workers):
            thread = threading.Thread(target=worker, args=(ti, queue, lock), daemon=True)
            thread.start()
            threads.append(thread)
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.2)
    except KeyboardInterrupt:
        stop.set()
        log.warning("interrupted: waiting for the calls in flight to be logged")
        for thread in threads:
            thread.join()
        raise
    finally:
        bar.close()
    if errors:
        auth = [e for e in errors if isinstance(e, AuthError)]
        raise (auth or errors)[0]
    return bar.made


# --------------------------------------------------------------------------------------------
# call table and report
# --------------------------------------------------------------------------------------------


def call_table(specs: list[CallSpec], records: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per planned call from its log record, in plan order (pair, teacher, variant)."""
    rows = []
    for spec in specs:
        rec = records[spec.key]
        row = {c: rec.get(c) for c in TABLE_COLUMNS if c != "call_key"}
        row["call_key"] = spec.key
        rows.append(row)
    frame = pd.DataFrame.from_records(rows, columns=TABLE_COLUMNS)
    for column in ("magnitude", "confidence", "latency_s", "prompt_tokens", "completion_tokens", "cost_usd"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    frame["attempts"] = frame["attempts"].astype("int64")
    return frame


def _percentiles(values: pd.Series) -> dict[str, float | None]:
    values = values.dropna()
    if values.empty:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    q = np.percentile(values.to_numpy(), [50, 90, 99])
    return {"p50": round(float(q[0]), 4), "p90": round(float(q[1]), 4), "p99": round(float(q[2]), 4),
            "max": round(float(values.max()), 4)}


def report(
    table: pd.DataFrame,
    teachers: list[TeacherConfig],
    variants: list[Variant],
    made: Counter[str],
    skipped_lines: int,
) -> dict[str, Any]:
    """Metrics of the run: per teacher status counts, incomplete pairs, latency, tokens, cost."""
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
            "ok_rate": round(float((part["status"] == "ok").mean()), 4) if len(part) else None,
            "pairs_incomplete": int(part["prompt_id"].nunique() - complete),
            "latency_s": _percentiles(part["latency_s"]),
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
        "cost_usd": round(float(table["cost_usd"].sum()), 6),
        "log_lines_skipped": skipped_lines,
        "per_teacher": per_teacher,
    }


#: Facts about one run (what the cache answered, torn log lines), not about the call table:
#: logged and returned, but kept out of ``reports/annotate.json`` so a re-run writes the same bytes.
RUN_STATE_KEYS = frozenset({"calls_made", "calls_cached", "log_lines_skipped"})


def stable_report(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary without :data:`RUN_STATE_KEYS`, at the top level and per teacher."""
    out = {k: v for k, v in summary.items() if k not in RUN_STATE_KEYS}
    out["per_teacher"] = {
        t: {k: v for k, v in row.items() if k not in RUN_STATE_KEYS}
        for t, row in summary["per_teacher"].items()
    }
    return out


# --------------------------------------------------------------------------------------------
# entry point (stage and CLI)
# --------------------------------------------------------------------------------------------


def run_annotate(
    params_path: str | Path,
    pairs_path: str | Path,
    out_path: str | Path,
    *,
    log_path: str | Path | None = None,
    report_path: str | Path | None = "reports/annotate.json",
    estimate_only: bool = False,
    root: str | Path = ".",
) -> dict[str, Any]:
    """Annotate the pairs at ``pairs_path`` with the panel in ``params_path``.

    Args:
        params_path: YAML with the ``teachers``, ``prompts``, ``decoding``, ``annotate`` sections.
        pairs_path: pairs table (parquet, jsonl, csv) with prompt_id, prompt, chosen, rejected.
        out_path: the call table to write (parquet or csv).
        log_path: the call log / cache (default: ``out_path`` with suffix ``.jsonl``).
        report_path: metrics JSON (None: not written).
        estimate_only: print-ready estimate of calls, tokens and cost; nothing is called or written.
        root: folder that ``prompts.dir`` is relative to.

    Returns:
        The report (or the estimate).

    Raises:
        AuthError: a missing or rejected key (the stage stops at once).
    """
    params = load_params(params_path)
    variants = load_variants(params.prompts, root)
    pairs = artifacts.read_table(pairs_path, schemas.PairsToAnnotate)
    pairs = select_pairs(pairs, params.annotate.max_pairs, params.annotate.subset_seed)
    out_path = Path(out_path)
    call_log = CallLog(log_path if log_path is not None else out_path.with_suffix(".jsonl"))
    records = call_log.read()
    if estimate_only:
        return estimate(params, pairs, variants, records)

    specs = plan_calls(pairs, params.teachers, variants, params.decoding)
    redo = set(params.annotate.redo_statuses)
    todo = [s for s in specs if not _is_done(records.get(s.key), redo)]
    log.info(
        "annotate: %d pairs x %d teachers x %d variants = %d calls; %d cached, %d to call",
        len(pairs), len(params.teachers), len(variants), len(specs), len(specs) - len(todo), len(todo),
    )
    needed = sorted({s.teacher for s in todo})
    # Building a teacher reads its key: a missing key stops the stage before any call.
    teachers: list[Teacher] = [None] * len(params.teachers)  # type: ignore[list-item]
    for ti in needed:
        teachers[ti] = Teacher(params.teachers[ti], params.decoding,
                               chars_per_token=params.annotate.chars_per_token)
    made: Counter[str] = Counter()
    if todo:
        with call_log:
            made = execute(todo, pairs, teachers, variants, call_log, progress=params.annotate.progress)
        records = call_log.read()
    table = call_table(specs, records)
    artifacts.write_table(table, out_path, schemas.AnnotatedCallTable)
    summary = report(table, params.teachers, variants, made, call_log.skipped_lines)
    if report_path is not None:
        artifacts.write_json(stable_report(summary), report_path)
    log.info(
        "annotate: %d calls (%d made now), %d ok, %d pairs complete, cost $%.4f -> %s",
        summary["calls"], summary["calls_made"], summary["status"]["ok"], summary["pairs_complete"],
        summary["cost_usd"], out_path,
    )
    return summary
