"""The call table, screened: bad calls and incomplete pairs excluded with counts, the rest dense.

The panel (teachers x variants) is every annotator x every variant present in the table.
A pair enters the artifact only with exactly one ``ok``, well-formed call for every cell of that
panel (the paper's completeness rule, App. E.3). Each excluded pair is counted under one reason,
the first of :data:`REASONS` that applies to it:

``duplicate_call``
    two or more rows share (prompt_id, annotator, variant);
``unknown_status``
    ``status`` empty or not one of :data:`sp2dpo.core.schemas.CALL_STATUSES`;
``missing_value``
    an ``ok`` call with an empty category, magnitude or confidence;
``unknown_category``
    an ``ok`` call whose category is not in the taxonomy (exact, case-sensitive match);
``non_numeric``
    magnitude or confidence that does not parse as a number;
``out_of_range``
    magnitude or confidence outside [0, 1] (or infinite);
``failed_call``
    a recorded non-``ok`` status (``timeout``, ``http_error``, ...): the annotate stage's failures;
``missing_call``
    no row at all for some (annotator, variant) of the panel.

Under ``strict``, every reason except ``failed_call`` is an error that names the file, the row
and the field; ``failed_call`` pairs are excluded in both modes, as the paper does with API
failures. A malformed key (empty ``prompt_id``, an annotator or variant id that cannot form a
column name) is always an error: it makes the panel itself ill-defined.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from sp2dpo.core.errors import UserError
from sp2dpo.core.schemas import ANNOTATOR_PATTERN, CALL_STATUSES, CATEGORIES, VARIANT_PATTERN

log = logging.getLogger(__name__)

#: Columns the call table must have; ``status`` is optional.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "prompt_id",
    "annotator",
    "variant",
    "category",
    "magnitude",
    "confidence",
)

#: Exclusion reasons, in precedence order (an excluded pair counts under the first that applies).
REASONS: tuple[str, ...] = (
    "duplicate_call",
    "unknown_status",
    "missing_value",
    "unknown_category",
    "non_numeric",
    "out_of_range",
    "failed_call",
    "missing_call",
)

#: Annotator ids that would collide with the cross-annotator columns (``category_annotators_ens``).
RESERVED_ANNOTATORS: frozenset[str] = frozenset({"annotators"})

_NONE = len(REASONS)  # "no problem" sentinel, larger than every reason index
_R = {name: i for i, name in enumerate(REASONS)}


class CallTableError(UserError, ValueError):
    """A call table that cannot be aggregated; the message names the file, row and field."""


@dataclasses.dataclass(frozen=True)
class Panel:
    """Complete pairs as dense arrays, axes (pair, annotator, variant).

    Attributes:
        prompt_ids: sorted prompt ids of the kept pairs, shape (N,).
        annotators: annotator ids, sorted (they name artifact columns).
        variants: variant names, in numeric order (``v1, v2, ..., v10``).
        category: category codes, indexes into :data:`sp2dpo.core.schemas.CATEGORIES` (priority order).
        magnitude: shape (N, J, K).
        confidence: shape (N, J, K).
    """

    prompt_ids: np.ndarray
    annotators: tuple[str, ...]
    variants: tuple[str, ...]
    category: np.ndarray
    magnitude: np.ndarray
    confidence: np.ndarray


@dataclasses.dataclass(frozen=True)
class Screening:
    """The outcome of :func:`screen`: the complete pairs plus exact counts."""

    panel: Panel
    n_calls: int
    n_pairs: int
    call_problems: dict[str, int]
    missing_calls: int
    excluded_by_reason: dict[str, int]
    excluded: pd.DataFrame = dataclasses.field(
        default_factory=lambda: pd.DataFrame({"prompt_id": [], "reason": []}, dtype=str)
    )
    """Every excluded pair with its reason (``prompt_id, reason``), sorted by prompt_id."""

    @property
    def n_kept(self) -> int:
        return len(self.panel.prompt_ids)

    def counts(self) -> dict[str, object]:
        """The counts as a JSON-ready mapping (``reports/aggregate.json``: ``calls``, ``pairs``)."""
        return {
            "calls": {
                "rows": self.n_calls,
                "problems": dict(self.call_problems),
                "missing": self.missing_calls,
            },
            "pairs": {
                "total": self.n_pairs,
                "kept": self.n_kept,
                "excluded": self.n_pairs - self.n_kept,
                "excluded_by_reason": dict(self.excluded_by_reason),
            },
        }


def read_calls(path: str | Path) -> pd.DataFrame:
    """Read a call table (``.parquet`` or ``.csv``) with its key and value columns as read.

    CSV cells are read as text (``prompt_id`` ``"007"`` stays ``"007"``) and parsed by
    :func:`screen`; only the required columns and ``status`` are loaded.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    wanted = (*REQUIRED_COLUMNS, "status")
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        _check_columns(schema.names, path)
        columns = [c for c in wanted if c in schema.names]
        # Text keys read as dictionaries (pandas categoricals): no per-row strings to hash.
        text = [
            c
            for c in columns
            if pa.types.is_string(schema.field(c).type)
            or pa.types.is_large_string(schema.field(c).type)
        ]
        return pd.read_parquet(path, columns=columns, read_dictionary=text)
    if suffix == ".csv":
        try:
            header = pd.read_csv(path, nrows=0).columns
        except pd.errors.EmptyDataError:
            raise CallTableError(f"{path}: empty file (no header line)") from None
        _check_columns(list(header), path)
        return pd.read_csv(
            path,
            usecols=[c for c in wanted if c in header],
            dtype=str,
            keep_default_na=False,
            na_values=[""],
        )
    raise CallTableError(f"{path}: unknown call table type {suffix!r}; expected .parquet or .csv")


def _check_columns(names: list[str], where: object) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise CallTableError(
            f"{where}: call table lacks column(s) {', '.join(missing)}; required: "
            f"{', '.join(REQUIRED_COLUMNS)} (optional: status)"
        )


def screen(frame: pd.DataFrame, where: str = "calls", *, strict: bool = False) -> Screening:
    """Check every call, exclude incomplete pairs, and build the dense :class:`Panel`.

    Args:
        frame: the call table (see :func:`read_calls`).
        where: the file name used in error messages.
        strict: raise :class:`CallTableError` on the first bad call or missing call instead of
            excluding the pair (``failed_call`` pairs are excluded in both modes).

    Returns:
        The :class:`Screening` with the kept pairs and counts per reason.
    """
    _check_columns(list(frame.columns), where)
    n_rows = len(frame)
    if n_rows == 0:
        raise CallTableError(f"{where}: the call table has no rows")
    is_csv = where.lower().endswith(".csv")

    pid_codes, pair_ids = _key_codes(frame, "prompt_id", where, is_csv)
    ann_codes, annotators = _key_codes(frame, "annotator", where, is_csv, pattern=ANNOTATOR_PATTERN)
    var_codes, variants = _key_codes(frame, "variant", where, is_csv, pattern=VARIANT_PATTERN)
    variants_t = tuple(variants)
    n_pairs, n_ann, n_var = len(pair_ids), len(annotators), len(variants_t)

    # One reason code per row: the first problem by precedence (_NONE: a good ok call).
    reason = np.full(n_rows, _NONE, dtype=np.int8)
    cell = (pid_codes.astype(np.int64) * n_ann + ann_codes) * n_var + var_codes
    per_cell = np.bincount(cell, minlength=n_pairs * n_ann * n_var)

    ok = np.ones(n_rows, dtype=bool)
    if "status" in frame.columns:
        status, _ = _codes_in(frame["status"], CALL_STATUSES)
        ok = status == CALL_STATUSES.index("ok")
        known = status >= 0
        _mark(reason, ~ok & known, "failed_call")
        _mark(reason, ~known, "unknown_status")

    cat_codes, cat_null = _codes_in(frame["category"], CATEGORIES)
    values = {}
    for name in ("magnitude", "confidence"):
        parsed, null, non_numeric = _numeric(frame[name])
        values[name] = parsed
        out_of_range = ~null & ~non_numeric & ~((parsed >= 0.0) & (parsed <= 1.0))
        _mark(reason, ok & out_of_range, "out_of_range")
        _mark(reason, ok & non_numeric, "non_numeric")
        _mark(reason, ok & null, "missing_value")
    _mark(reason, ok & ~cat_null & (cat_codes < 0), "unknown_category")
    _mark(reason, ok & cat_null, "missing_value")
    _mark(reason, per_cell[cell] > 1, "duplicate_call")

    pair_reason = np.full(n_pairs, _NONE, dtype=np.int8)
    np.minimum.at(pair_reason, pid_codes, reason)
    covered = (per_cell > 0).reshape(n_pairs, n_ann * n_var)
    incomplete = ~covered.all(axis=1)
    pair_reason[incomplete] = np.minimum(pair_reason[incomplete], _R["missing_call"])
    missing_calls = int((~covered).sum())

    row_counts = np.bincount(reason, minlength=_NONE + 1)
    call_problems = {name: int(row_counts[i]) for i, name in enumerate(REASONS[:-1])}
    pair_counts = np.bincount(pair_reason, minlength=_NONE + 1)
    excluded = {name: int(pair_counts[i]) for i, name in enumerate(REASONS)}

    if strict:
        _raise_first(frame, reason, covered, pair_ids, annotators, variants_t, where, is_csv)

    empty_cells = [
        f"{annotators[a]}/{variants_t[v]}"
        for a in range(n_ann)
        for v in range(n_var)
        if not (per_cell.reshape(n_pairs, n_ann, n_var)[:, a, v] > 0).any()
    ]
    if empty_cells:
        log.warning(
            "%s: no call at all for %s; every pair is incomplete for that panel cell",
            where,
            ", ".join(empty_cells),
        )

    keep = pair_reason == _NONE
    new_index = np.cumsum(keep) - 1
    rows = keep[pid_codes]
    n_kept = int(keep.sum())
    kept_cell = (new_index[pid_codes[rows]] * n_ann + ann_codes[rows]) * n_var + var_codes[rows]
    shape = (n_kept, n_ann, n_var)
    category = np.empty(n_kept * n_ann * n_var, dtype=np.int8)
    magnitude = np.empty(n_kept * n_ann * n_var, dtype=float)
    confidence = np.empty(n_kept * n_ann * n_var, dtype=float)
    category[kept_cell] = cat_codes[rows]
    magnitude[kept_cell] = values["magnitude"][rows]
    confidence[kept_cell] = values["confidence"][rows]
    panel = Panel(
        prompt_ids=np.asarray(pair_ids, dtype=object)[keep],
        annotators=annotators,
        variants=variants_t,
        category=category.reshape(shape),
        magnitude=magnitude.reshape(shape),
        confidence=confidence.reshape(shape),
    )
    log.info(
        "%s: %d calls, %d pairs, %d kept (panel %d annotators x %d variants); excluded: %s",
        where,
        n_rows,
        n_pairs,
        n_kept,
        n_ann,
        n_var,
        ", ".join(f"{k}={v}" for k, v in excluded.items() if v) or "none",
    )
    dropped = ~keep
    excluded_pairs = pd.DataFrame(
        {
            "prompt_id": np.asarray(pair_ids, dtype=object)[dropped].astype(str),
            "reason": np.asarray(REASONS, dtype=object)[pair_reason[dropped]].astype(str),
        }
    ).sort_values("prompt_id", kind="stable", ignore_index=True)
    return Screening(
        panel=panel,
        n_calls=n_rows,
        n_pairs=n_pairs,
        call_problems=call_problems,
        missing_calls=missing_calls,
        excluded_by_reason=excluded,
        excluded=excluded_pairs,
    )


def _mark(reason: np.ndarray, mask: np.ndarray, name: str) -> None:
    """Record ``name`` on rows in ``mask`` unless they already carry an earlier reason."""
    code = _R[name]
    np.minimum(reason, np.where(mask, code, _NONE).astype(np.int8), out=reason)


def _row_label(row: int, is_csv: bool) -> str:
    return f"row {row} (line {row + 2})" if is_csv else f"row {row}"


def _codes_in(col: pd.Series, allowed: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, blank)``: index of each value in ``allowed`` (exact match; -1 for anything
    else), and whether the value is missing or white space only."""
    codes, uniques = pd.factorize(col)
    lookup = np.array([allowed.index(u) if u in allowed else -1 for u in uniques] + [-1])
    is_blank = np.array([str(u).strip() == "" for u in uniques] + [True])
    return lookup[codes].astype(np.int8), is_blank[codes]  # code -1 (missing) picks the last


def _key_codes(
    frame: pd.DataFrame, name: str, where: str, is_csv: bool, pattern: str | None = None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes of a key column and its sorted distinct values (variants: numeric order).

    An empty or malformed key is always an error (it would make the panel ill-defined).
    """
    col = frame[name]
    null = col.isna().to_numpy()
    if null.any():
        row = int(np.flatnonzero(null)[0])
        raise CallTableError(f"{where}: {_row_label(row, is_csv)}: field '{name}' is empty")
    codes, uniques = pd.factorize(col)
    values = [str(u) for u in uniques]
    for i, value in enumerate(values):
        if value.strip() == "":
            why = "is blank"
        elif name == "annotator" and value in RESERVED_ANNOTATORS:
            why = "is reserved for the cross-annotator columns"
        elif pattern is not None and not re.match(pattern, value):
            why = f"does not match {pattern} (it becomes part of artifact column names)"
        else:
            continue
        row = int(np.flatnonzero(codes == i)[0])
        raise CallTableError(
            f"{where}: {_row_label(row, is_csv)}: field '{name}' = {value!r} {why}"
        )
    if name == "variant":
        order = sorted(range(len(values)), key=lambda i: int(values[i][1:]))
    else:
        order = list(np.argsort(np.array(values, dtype=object), kind="stable"))
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    return rank[codes], tuple(values[i] for i in order)


def _numeric(col: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, null, non_numeric)`` of a magnitude/confidence column of any dtype."""
    if pd.api.types.is_bool_dtype(col):
        n = len(col)
        return np.full(n, np.nan), col.isna().to_numpy(), ~col.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(col):
        values = col.to_numpy(dtype=float, na_value=np.nan)
        null = np.isnan(values)
        return values, null, np.zeros(len(col), dtype=bool)
    text = col.astype(object)
    null = (col.isna() | (col.astype(str).str.strip() == "")).to_numpy(dtype=bool)
    values = pd.to_numeric(text.where(~null, None), errors="coerce").to_numpy(
        dtype=float, na_value=np.nan
    )
    non_numeric = ~null & np.isnan(values)
    return values, null, non_numeric


def _raise_first(
    frame: pd.DataFrame,
    reason: np.ndarray,
    covered: np.ndarray,
    pair_ids: tuple[str, ...],
    annotators: tuple[str, ...],
    variants: tuple[str, ...],
    where: str,
    is_csv: bool,
) -> None:
    """Strict mode: raise for the first bad row (in file order), else the first missing call."""
    bad = (reason < _NONE) & (reason != _R["failed_call"])
    n_bad = int(bad.sum())
    n_missing = int((~covered).sum())
    total = f"{n_bad} bad call(s) and {n_missing} missing call(s) in all"
    hint = "without --strict, their pairs are excluded and counted"
    if n_bad:
        row = int(np.flatnonzero(bad)[0])
        rec = frame.iloc[row]
        key = (
            f"prompt_id={rec['prompt_id']!r}, annotator={rec['annotator']!r}, "
            f"variant={rec['variant']!r}"
        )
        detail = _describe(frame, row, REASONS[reason[row]])
        raise CallTableError(
            f"{where}: {_row_label(row, is_csv)} ({key}): {detail} ({total}; {hint})"
        )
    if n_missing:
        flat = int(np.flatnonzero(~covered.reshape(-1))[0])
        n_cells = len(annotators) * len(variants)
        p, rest = divmod(flat, n_cells)
        a, v = divmod(rest, len(variants))
        raise CallTableError(
            f"{where}: prompt_id {pair_ids[p]!r} has no call for annotator {annotators[a]!r}, "
            f"variant {variants[v]!r} ({total}; {hint})"
        )


def _describe(frame: pd.DataFrame, row: int, why: str) -> str:
    """One phrase naming the field and value that made ``row`` bad."""
    rec = frame.iloc[row]
    if why == "duplicate_call":
        return "duplicate (prompt_id, annotator, variant): the key appears more than once"
    if why == "unknown_status":
        return f"field 'status' has unknown value {rec['status']!r}; allowed: {', '.join(CALL_STATUSES)}"
    if why == "unknown_category":
        return f"field 'category' has unknown value {rec['category']!r}; allowed: {', '.join(CATEGORIES)}"
    for name in ("category", "magnitude", "confidence"):
        value = rec[name]
        if why == "missing_value" and (pd.isna(value) or str(value).strip() == ""):
            return f"field '{name}' is empty in an ok call"
        if name == "category":
            continue
        parsed, null, non_numeric = _numeric(pd.Series([value]))
        if why == "non_numeric" and non_numeric[0]:
            return f"field '{name}' is not a number: {value!r}"
        if (
            why == "out_of_range"
            and not null[0]
            and not non_numeric[0]
            and not 0.0 <= parsed[0] <= 1.0
        ):
            return f"field '{name}' = {value!r} is outside [0, 1]"
    return why.replace("_", " ")  # pragma: no cover - every reason is described above
