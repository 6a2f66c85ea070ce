"""The beta artifact on the reading side: its header, its typed reader and its one envelope check.

The ``aggregate`` stage writes the artifact; ``train`` and ``audit`` read it; all three go
through this module, so the column layout (:func:`sp2dpo.core.schemas.beta_artifact_columns`),
the dtypes and the envelope check exist once.

- :func:`validate_artifact`: the schema of the artifact's panel, envelope included;
- :func:`read_beta_artifact`: a full artifact file, validated (the panel read from its header);
- :func:`read_beta_column`: one beta column by ``prompt_id`` for training, checked against the
  envelope; a minimal schedule (``prompt_id`` plus beta columns, e.g. written by hand) is
  accepted too.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sp2dpo.core import artifacts
from sp2dpo.core.errors import SchemaViolation, UserError
from sp2dpo.core.schemas import (
    BETA_ENVELOPE_TOLERANCE,
    beta_artifact_columns,
    beta_schedule_schema,
    beta_table_schema,
)

#: The paper's default beta column (JMAMP: mean over teachers of the prompt-ensemble beta).
JMAMP_COLUMN = "beta_annotators_mean_ens"

_ENS_CATEGORY = re.compile(r"^category_(?P<a>[A-Za-z0-9][A-Za-z0-9.-]*)_ens$")
_MA_BETA = re.compile(r"^beta_annotators_mean_(?P<v>v[1-9][0-9]*)$")


class BetaError(UserError, ValueError):
    """The per-pair beta is missing, misnamed, out of its envelope or does not cover the pairs."""


def validate_artifact(
    frame: pd.DataFrame,
    annotators: Sequence[str],
    variants: Sequence[str],
    beta_min: float,
    beta_max: float,
    *,
    category_envelopes: Mapping[str, tuple[float, float]] | None = None,
    where: str = "beta artifact",
) -> pd.DataFrame:
    """Validate an artifact frame against its panel's schema (lazily, every rule at once).

    Args:
        frame: the artifact.
        annotators, variants: the panel (column order).
        beta_min, beta_max: the global envelope every ``beta_*`` column must lie in.
        category_envelopes: category -> (min, max), when the artifact was built with them.
        where: the file or source, for messages.

    Raises:
        SchemaViolation: naming ``where``, each failed column/check and the first rows.
    """
    pinned = beta_artifact_columns(annotators, variants)
    extras = [c for c in frame.columns if c not in set(pinned)]
    try:
        schema = beta_table_schema(
            annotators, variants, beta_min, beta_max, extras, category_envelopes or None
        )
    except ValueError as exc:
        raise SchemaViolation(f"{where}: {exc}") from None
    return artifacts.validate(frame, schema, where)


def panel_of(columns: Sequence[str]) -> tuple[list[str], list[str]]:
    """The (annotators, variants) of an artifact, from its header, in column order."""
    annotators = [
        m["a"] for c in columns if (m := _ENS_CATEGORY.match(c)) and m["a"] != "annotators"
    ]
    variants = [m["v"] for c in columns if (m := _MA_BETA.match(c))]
    return annotators, variants


def _column_dtype(name: str) -> type:
    """The dtype an artifact column is read as (the schema then checks it)."""
    if name == "prompt_id" or (name.startswith("category_") and not name.endswith("_tie_break")):
        return str
    if name == "prompt_variant_count":
        return int
    if name.endswith("_tie_break"):
        return bool
    return float


def read_artifact_frame(content: bytes, header: list[str], where: str = "") -> pd.DataFrame:
    """Read an artifact CSV's bytes with each column's type (no validation): ``prompt_id`` and
    the category columns as text, counts as int, tie-break flags as bool, the rest as float with
    empty cells as NaN. ``header`` is the file's column list (read it first with ``nrows=0``).

    Raises:
        SchemaViolation: a cell that is not of its column's type, named by row and column.
    """
    dtypes = {c: _column_dtype(c) for c in header}
    try:
        return pd.read_csv(
            io.BytesIO(content),
            dtype={c: t for c, t in dtypes.items() if t is not bool},
            keep_default_na=False,
            na_values={c: [""] for c, t in dtypes.items() if t is float},
        )
    except (ValueError, TypeError) as exc:
        raise SchemaViolation(_bad_cell(content, dtypes, where) or f"{where}: {exc}") from None


def _bad_cell(content: bytes, dtypes: Mapping[str, type], where: str) -> str | None:
    """The first cell that does not read as its column's type, as ``WHERE: row R (line L),
    column C: 'abc' is not a number`` (None when none is found)."""
    text = pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False)
    for column, kind in dtypes.items():
        if kind is str or column not in text:
            continue
        cells = text[column]
        if kind is bool:
            bad = ~cells.isin(["True", "False", "true", "false", "TRUE", "FALSE"])
            want = "true or false"
        else:
            parsed = pd.to_numeric(cells.where(cells != ""), errors="coerce")
            bad = parsed.isna() & (cells != "")
            if kind is int:
                bad |= cells == ""
                bad |= parsed.notna() & (parsed != parsed.round())
            want = "an integer" if kind is int else "a number"
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            return f"{where}: row {row} (line {row + 2}), column {column!r}: {cells.iloc[row]!r} is not {want}"
    return None


def check_field_counts(content: bytes, where: str) -> None:
    """Every record of a CSV has exactly as many fields as its header (pandas pads a short row
    with empty cells and would read a truncated file as whole).

    Raises:
        SchemaViolation: ``WHERE: line L has N of M fields``.
    """
    reader = csv.reader(io.StringIO(content.decode("utf-8", errors="replace"), newline=""))
    header = next(reader, None)
    if header is None:
        raise SchemaViolation(f"{where}: empty file, no header")
    line = reader.line_num
    for record in reader:
        if record and len(record) != len(header):
            raise SchemaViolation(
                f"{where}: line {line + 1} has {len(record)} of {len(header)} fields "
                "(a truncated or malformed row)"
            )
        line = reader.line_num


def parse_beta_table(
    content: bytes,
    where: str,
    beta_min: float,
    beta_max: float,
    *,
    category_envelopes: Mapping[str, tuple[float, float]] | None = None,
) -> pd.DataFrame:
    """A beta table checked as strictly as the aggregate stage writes it, before anyone compares
    or trains with it: every row has the header's field count, every cell its column's type; a
    full artifact (its panel's columns) gets its whole schema (:func:`validate_artifact`), a
    minimal schedule (``prompt_id`` plus ``beta_*`` columns) the same rules for those columns: one
    row per pair, no blank, finite values inside [``beta_min``, ``beta_max``].

    Raises:
        SchemaViolation: naming ``where``, the line or row, the column and the rule.
    """
    check_field_counts(content, where)
    try:
        header = list(pd.read_csv(io.BytesIO(content), nrows=0).columns)
    except (ValueError, pd.errors.ParserError) as exc:
        raise SchemaViolation(f"{where}: not a readable CSV ({exc})") from None
    annotators, variants = panel_of(header)
    if annotators and variants:
        _check_column_order(header, annotators, variants, where)
        frame = read_artifact_frame(content, header, where)
        return validate_artifact(frame, annotators, variants, beta_min, beta_max,
                                 category_envelopes=category_envelopes, where=where)
    try:
        schema = beta_schedule_schema(header, beta_min, beta_max)
    except ValueError as exc:
        raise SchemaViolation(f"{where}: {exc}") from None
    frame = read_artifact_frame(content, header, where)
    return artifacts.validate(frame, schema, where)


def _check_column_order(header: list[str], annotators: list[str], variants: list[str], where: str) -> None:
    pinned = beta_artifact_columns(annotators, variants)
    if header[: len(pinned)] != pinned:
        got = [*header, *[None] * len(pinned)][: len(pinned)]
        i = next(i for i in range(len(pinned)) if got[i] != pinned[i])
        raise SchemaViolation(
            f"{where}: column {i} should be {pinned[i]!r} for panel {annotators} x {variants}, "
            f"found {got[i] if got[i] is not None else 'nothing'!r}"
        )


def read_beta_artifact(path: str | Path, beta_min: float, beta_max: float) -> pd.DataFrame:
    """Read and validate a beta artifact CSV; the panel is inferred from its header.

    ``prompt_id`` and the category columns are read as text (``"007"`` stays ``"007"``). The
    check is the write-time schema with the global envelope [``beta_min``, ``beta_max``]
    (category envelopes always lie inside it). The caller checks its chosen column and coverage.

    Raises:
        FileNotFoundError, SchemaViolation.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    header = list(pd.read_csv(path, nrows=0).columns)
    annotators, variants = panel_of(header)
    if not annotators or not variants:
        raise SchemaViolation(
            f"{path}: not a beta artifact (no category_<annotator>_ens or "
            "beta_annotators_mean_v<k> column)"
        )
    return parse_beta_table(path.read_bytes(), str(path), beta_min, beta_max)


def read_schedule(path: str | Path, beta_min: float, beta_max: float) -> pd.DataFrame:
    """A beta schedule for training: a full artifact (validated by :func:`read_beta_artifact`),
    or a minimal one (``prompt_id`` plus beta columns) read as is and checked column by column
    in :func:`read_beta_column`.

    Raises:
        BetaError: the file is missing, or a full artifact breaks its schema.
    """
    path = Path(path)
    if not path.exists():
        raise BetaError(f"{path}: beta artifact not found (run the aggregate stage first)")
    annotators, variants = panel_of(list(pd.read_csv(path, nrows=0).columns))
    if annotators and variants:
        try:
            return read_beta_artifact(path, beta_min, beta_max)
        except (ValueError, KeyError) as exc:
            raise BetaError(f"{path}: invalid beta artifact: {exc}") from None
    return pd.read_csv(path, dtype={"prompt_id": str})


def outside_envelope(values: np.ndarray, beta_min: float, beta_max: float) -> np.ndarray:
    """Mask of finite values outside ``[beta_min, beta_max]``, beyond the artifact's float
    tolerance (:data:`sp2dpo.core.schemas.BETA_ENVELOPE_TOLERANCE`): the one envelope check of
    every reader. NaN (no value) is not flagged here; coverage is the caller's check."""
    values = np.asarray(values, dtype=float)
    tol = BETA_ENVELOPE_TOLERANCE
    with np.errstate(invalid="ignore"):
        return np.isfinite(values) & ((values < beta_min - tol) | (values > beta_max + tol))


def first_ids(ids: Sequence[str] | pd.Series, n: int = 5) -> str:
    """The first ``n`` ids, comma-separated, with how many more there are."""
    ids = list(ids)
    more = f" (and {len(ids) - n} more)" if len(ids) > n else ""
    return ", ".join(map(str, ids[:n])) + more


def read_beta_column(
    path: str | Path, column: str, beta_min: float, beta_max: float, frame: pd.DataFrame | None = None
) -> pd.Series:
    """One beta column of the schedule at ``path``, indexed by ``prompt_id``, checked against the
    envelope: present, numeric, finite or empty, inside ``[beta_min, beta_max]``.

    Empty cells (a pair the column has no value for) come back as NaN: the caller checks coverage.
    ``frame``: the schedule already read with :func:`read_schedule` (read once per run).

    Raises:
        BetaError: missing file or column (the message lists the artifact's beta columns),
            duplicate prompt_ids, non-numeric, non-finite or out-of-envelope values.
    """
    path = Path(path)
    frame = read_schedule(path, beta_min, beta_max) if frame is None else frame
    if "prompt_id" not in frame.columns:
        raise BetaError(f"{path}: beta artifact has no prompt_id column")
    if column not in frame.columns:
        available = [c for c in frame.columns if str(c).startswith("beta_")]
        raise BetaError(
            f"{path}: beta column {column!r} not found; the artifact's beta columns are: "
            f"{', '.join(available) or '(none)'}"
        )
    ids = frame["prompt_id"].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise BetaError(f"{path}: {len(dup)} duplicate prompt_id(s), first: {', '.join(dup[:5])}")
    values = pd.to_numeric(frame[column], errors="coerce")
    bad_type = values.isna() & frame[column].notna()
    if bad_type.any():
        raise BetaError(
            f"{path}: column {column!r} has non-numeric values at prompt_id(s) {first_ids(ids[bad_type])}"
        )
    arr = values.to_numpy(dtype=float)
    nonfinite = np.isinf(arr)
    outside = outside_envelope(arr, beta_min, beta_max)
    if nonfinite.any() or outside.any():
        bad = nonfinite | outside
        shown = ", ".join(f"{i}={v:g}" for i, v in list(zip(ids[bad], arr[bad], strict=True))[:5])
        raise BetaError(
            f"{path}: column {column!r} has {int(bad.sum())} value(s) outside the envelope "
            f"[{beta_min}, {beta_max}] (beta.min/beta.max): {shown}"
        )
    return pd.Series(arr, index=ids.to_numpy(), name=column)
