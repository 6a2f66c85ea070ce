"""pandera schemas for every table the pipeline reads or writes.

Tables are validated at every boundary by :mod:`sp2dpo.core.artifacts` (``read``/``write``), lazily, so
one error lists every violated rule with its column and first offending rows. Math functions take
validated frames and do not re-check.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

#: Non-empty after stripping white space (at least one non-space character).
_NOT_BLANK = r"(?s).*\S"


class PairsTable(pa.DataFrameModel):
    """Canonical preference pairs, as written by ``fetch``: replies are the assistant text.

    Empty replies are still allowed here; the ``filter`` stage removes them and counts them.
    """

    prompt_id: Series[str] = pa.Field(nullable=False)
    prompt: Series[str] = pa.Field(nullable=False)
    chosen: Series[str] = pa.Field(nullable=False)
    rejected: Series[str] = pa.Field(nullable=False)
    score_chosen: Series[float] = pa.Field(nullable=True)
    score_rejected: Series[float] = pa.Field(nullable=True)
    source: Series[str] = pa.Field(nullable=False)

    class Config:
        strict = True
        ordered = True
        coerce = False


class FilteredPairsTable(PairsTable):
    """Pairs after ``filter``: unique ``prompt_id`` and no empty field."""

    prompt_id: Series[str] = pa.Field(nullable=False, unique=True)
    prompt: Series[str] = pa.Field(nullable=False, str_matches=_NOT_BLANK)
    chosen: Series[str] = pa.Field(nullable=False, str_matches=_NOT_BLANK)
    rejected: Series[str] = pa.Field(nullable=False, str_matches=_NOT_BLANK)


#: Column order of the canonical pairs table.
PAIR_COLUMNS: list[str] = list(PairsTable.to_schema().columns)


# --------------------------------------------------------------------------------------------
# semantic-gap taxonomy and the annotate -> aggregate call table
# --------------------------------------------------------------------------------------------

#: The six gap categories, in tie-break priority order (first wins a tied vote).
CATEGORIES: tuple[str, ...] = ("Safety", "Factuality", "Instruction", "Reasoning", "Helpfulness", "Style")

#: Every terminal status of one teacher call.
CALL_STATUSES: tuple[str, ...] = (
    "ok",
    "invalid_json",
    "out_of_range",
    "http_error",
    "timeout",
    "content_filter",
    "auth_error",
)

#: Teacher ids and variant names appear inside artifact column names (`beta_{annotator}_{variant}`),
#: so they may not contain the `_` separator.
ANNOTATOR_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.-]*$"
VARIANT_PATTERN = r"^v[1-9][0-9]*$"


class CallTable(pa.DataFrameModel):
    """One row per (prompt_id, annotator, variant) teacher call, as written by ``annotate``.

    Rows whose ``status`` is not ``ok`` carry nulls in the parsed fields. Extra bookkeeping
    columns are allowed (``strict = False``).
    """

    prompt_id: Series[str] = pa.Field(nullable=False)
    annotator: Series[str] = pa.Field(nullable=False, str_matches=ANNOTATOR_PATTERN)
    variant: Series[str] = pa.Field(nullable=False, str_matches=VARIANT_PATTERN)
    category: Series[str] = pa.Field(nullable=True, isin=list(CATEGORIES))
    magnitude: Series[float] = pa.Field(nullable=True, ge=0.0, le=1.0)
    confidence: Series[float] = pa.Field(nullable=True, ge=0.0, le=1.0)
    status: Series[str] = pa.Field(nullable=False, isin=list(CALL_STATUSES))

    class Config:
        strict = False
        coerce = False
        unique = ["prompt_id", "annotator", "variant"]


_SHA256 = r"^[0-9a-f]{64}$"


class PairsToAnnotate(pa.DataFrameModel):
    """Input of ``annotate``: any pairs table (parquet, jsonl, csv) with at least these columns."""

    prompt_id: Series[str] = pa.Field(nullable=False, unique=True)
    prompt: Series[str] = pa.Field(nullable=False, str_matches=_NOT_BLANK)
    chosen: Series[str] = pa.Field(nullable=False, str_matches=_NOT_BLANK)
    rejected: Series[str] = pa.Field(nullable=False, str_matches=_NOT_BLANK)

    class Config:
        strict = False
        coerce = True


class AnnotatedCallTable(CallTable):
    """The call table as ``annotate`` writes it: :class:`CallTable` plus checked bookkeeping.

    ``call_key`` is the call-store key (sha256 of pair content, teacher and model, template and
    decoding settings); ``template_sha256`` hashes the variant's template files and
    ``request_sha256`` the exact rendered messages sent. Tokens and cost sum over all attempts.
    ``transient`` marks a failure that may pass (connection, timeout, 429/5xx): a re-run calls it
    again.
    """

    model: Series[str] = pa.Field(nullable=False)
    call_key: Series[str] = pa.Field(nullable=False, unique=True, str_matches=_SHA256)
    template_sha256: Series[str] = pa.Field(nullable=False, str_matches=_SHA256)
    request_sha256: Series[str] = pa.Field(nullable=False, str_matches=_SHA256)
    attempts: Series[int] = pa.Field(nullable=False, ge=1)
    prompt_tokens: Series[float] = pa.Field(nullable=True, ge=0.0)
    completion_tokens: Series[float] = pa.Field(nullable=True, ge=0.0)
    cost_usd: Series[float] = pa.Field(nullable=False, ge=0.0)
    response_text: Series[str] = pa.Field(nullable=True)
    error: Series[str] = pa.Field(nullable=True)
    transient: Series[bool] = pa.Field(nullable=False)

    class Config:
        strict = False
        coerce = False
        unique = ["prompt_id", "annotator", "variant"]

    @pa.dataframe_check(error="ok rows carry category, magnitude and confidence; other rows none")
    def parsed_fields_match_status(cls, df):
        parsed = df[["category", "magnitude", "confidence"]].notna()
        ok = df["status"] == "ok"
        return (parsed.all(axis=1) & ok) | (~parsed.any(axis=1) & ~ok)

    @pa.dataframe_check(error="only http_error and timeout rows can be transient")
    def transient_only_for_transport_failures(cls, df):
        return ~df["transient"] | df["status"].isin(["http_error", "timeout"])


# --------------------------------------------------------------------------------------------
# the beta artifact (aggregate -> train, audit); columns depend on the panel, so the schema is
# built per panel by a function rather than declared as a DataFrameModel
# --------------------------------------------------------------------------------------------

#: Slack allowed on envelope bounds for the artifact's fixed 12-decimal float format.
BETA_ENVELOPE_TOLERANCE = 1e-12

#: Extra columns ``aggregate`` may write after the pinned block (see ``sp2dpo.aggregate.table``).
BETA_EXTRA_PATTERNS: tuple[str, ...] = (
    r"^category_annotators_ens(_tie_break)?$",
    r"^disagreement_prompt_mad_[A-Za-z0-9][A-Za-z0-9.-]*$",
    r"^disagreement_annotators_(std|mad)$",
    r"^beta_annotators_(median|trimmed_mean|huber|weighted_mean)_(v[1-9][0-9]*|ens)$",
    r"^(effective_gap|beta)_(pooled|debiased)$",
)


def beta_artifact_columns(annotators: Sequence[str], variants: Sequence[str]) -> list[str]:
    """The pinned leading columns of the beta artifact for a panel, in order (pinned: other tools read these names).

    >>> beta_artifact_columns(["q"], ["v1"])[:4]
    ['prompt_id', 'prompt_variant_count', 'category_q_v1', 'magnitude_q_v1']
    """
    cols = ["prompt_id", "prompt_variant_count"]
    for a in annotators:
        for v in variants:
            cols += [
                f"{m}_{a}_{v}"
                for m in ("category", "magnitude", "confidence", "effective_gap", "beta")
            ]
    for a in annotators:
        cols += [
            f"category_{a}_ens",
            f"category_{a}_ens_tie_break",
            f"effective_gap_{a}_ens",
            f"beta_{a}_ens",
        ]
    cols += [f"beta_annotators_mean_{v}" for v in variants]
    cols += ["beta_annotators_mean_ens", "beta_random"]
    return cols


def _beta_column(name: str, n_variants: int, lo: float, hi: float) -> pa.Column:
    """The pandera column for an artifact column, by its name's family."""
    if name == "prompt_id":
        return pa.Column(str, nullable=False, unique=True, checks=pa.Check.str_matches(_NOT_BLANK))
    if name == "prompt_variant_count":
        return pa.Column(int, pa.Check.eq(n_variants), nullable=False)
    if name.endswith("_tie_break"):
        return pa.Column(bool, nullable=False)
    if name.startswith("category_"):
        return pa.Column(str, pa.Check.isin(list(CATEGORIES)), nullable=False)
    if name.startswith("beta_"):
        tol = BETA_ENVELOPE_TOLERANCE
        return pa.Column(float, pa.Check.in_range(lo - tol, hi + tol), nullable=False)
    return pa.Column(float, pa.Check.in_range(0.0, 1.0), nullable=False)


def beta_table_schema(
    annotators: Sequence[str],
    variants: Sequence[str],
    beta_min: float,
    beta_max: float,
    extra_columns: Sequence[str] = (),
    category_envelopes: Mapping[str, tuple[float, float]] | None = None,
) -> pa.DataFrameSchema:
    """The pandera schema of a beta artifact for one panel and envelope.

    Checks: exactly the pinned columns for the panel, then ``extra_columns`` (each from
    :data:`BETA_EXTRA_PATTERNS`), in order; unique, non-blank ``prompt_id``; every ``beta_*`` in
    [``beta_min``, ``beta_max``] (the union of all envelopes); ``category_*`` in the taxonomy;
    gaps, magnitudes, confidences and disagreement measures in [0, 1]; no missing value;
    ``prompt_variant_count`` equal to the number of variants; ``effective_gap_A_vK`` equal to
    ``magnitude_A_vK * confidence_A_vK``. With ``category_envelopes`` (category -> (min, max)),
    each ``beta_A_vK``/``beta_A_ens`` must also lie in the envelope of its own category.

    Raises:
        ValueError: an extra column name that no family matches, or a duplicate column.
    """
    import re

    unknown = [c for c in extra_columns if not any(re.match(p, c) for p in BETA_EXTRA_PATTERNS)]
    if unknown:
        raise ValueError(f"unknown beta artifact column(s): {', '.join(unknown)}")
    names = [*beta_artifact_columns(annotators, variants), *extra_columns]
    if len(set(names)) != len(names):
        raise ValueError("beta artifact columns are not unique for this panel")
    columns = {n: _beta_column(n, len(variants), beta_min, beta_max) for n in names}
    cells = [(a, v) for a in annotators for v in variants]

    def gap_is_product(df: pd.DataFrame) -> pd.Series:
        ok = pd.Series(True, index=df.index)
        for a, v in cells:
            product = df[f"magnitude_{a}_{v}"] * df[f"confidence_{a}_{v}"]
            ok &= (df[f"effective_gap_{a}_{v}"] - product).abs() <= 1e-9
        return ok

    checks = [pa.Check(gap_is_product, name="effective_gap_is_magnitude_x_confidence")]
    if category_envelopes:
        lo = {c: beta_min for c in CATEGORIES} | {c: e[0] for c, e in category_envelopes.items()}
        hi = {c: beta_max for c in CATEGORIES} | {c: e[1] for c, e in category_envelopes.items()}
        pairs = [(f"beta_{a}_{v}", f"category_{a}_{v}") for a, v in cells]
        pairs += [(f"beta_{a}_ens", f"category_{a}_ens") for a in annotators]

        def within_category_envelope(df: pd.DataFrame) -> pd.Series:
            tol = BETA_ENVELOPE_TOLERANCE
            ok = pd.Series(True, index=df.index)
            for b, c in pairs:
                cat = df[c].astype(object)
                ok &= (df[b] >= cat.map(lo) - tol) & (df[b] <= cat.map(hi) + tol)
            return ok

        checks.append(pa.Check(within_category_envelope, name="beta_within_category_envelope"))
    return pa.DataFrameSchema(columns, checks=checks, strict=True, ordered=True, name="BetaTable")


def beta_schedule_schema(columns: Sequence[str], beta_min: float, beta_max: float) -> pa.DataFrameSchema:
    """The schema of a minimal beta schedule (``prompt_id`` plus ``beta_*`` columns, e.g. written
    by hand): the artifact's rules for those columns (unique non-blank ``prompt_id``; every
    ``beta_*`` a number in [``beta_min``, ``beta_max``], none missing). Other columns pass as they
    are.

    Raises:
        ValueError: no ``prompt_id`` or no ``beta_*`` column.
    """
    betas = [c for c in columns if str(c).startswith("beta_")]
    if "prompt_id" not in columns or not betas:
        raise ValueError("not a beta schedule: it needs a prompt_id column and at least one beta_* column")
    names = ["prompt_id", *betas]
    return pa.DataFrameSchema(
        {n: _beta_column(n, 0, beta_min, beta_max) for n in names}, strict=False, name="BetaSchedule"
    )
