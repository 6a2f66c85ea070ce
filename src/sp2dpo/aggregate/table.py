"""The beta artifact: every estimator of the paper (and the configured optional ones) as columns.

Column layout (the first block is pinned: other tools read these names; ``A`` = annotator, ``vK`` = variant):

1. ``prompt_id, prompt_variant_count``;
2. per annotator, per variant (SA): ``category_A_vK, magnitude_A_vK, confidence_A_vK,
   effective_gap_A_vK, beta_A_vK``;
3. per annotator prompt-ensemble (SE): ``category_A_ens, category_A_ens_tie_break,
   effective_gap_A_ens, beta_A_ens``;
4. ``beta_annotators_mean_vK`` per variant (MA), ``beta_annotators_mean_ens`` (JMAMP);
5. ``beta_random``;

then the extra columns, always in this order:

6. ``category_annotators_ens, category_annotators_ens_tie_break``: majority vote (priority
   tie-break) over the annotators' ``category_A_ens``;
7. disagreement diagnostics: ``disagreement_prompt_mad_A`` per annotator (Eq. 36, MAD over
   variants of the call gaps), ``disagreement_annotators_std`` (Eq. 37, population std over
   annotators of ``beta_A_ens``), ``disagreement_annotators_mad`` (Eq. 38);
8. per configured teacher operator ``op`` (``aggregate.teacher_operators``):
   ``beta_annotators_{op}_vK`` per variant and ``beta_annotators_{op}_ens``;
9. with ``aggregate.pooled``: ``effective_gap_pooled, beta_pooled`` (Eq. 43);
10. with ``aggregate.bias_decomposition``: ``effective_gap_debiased, beta_debiased`` (Eq. 44).

Invariants: every ``beta_*`` column is a temperature inside its envelope; every
``effective_gap_*``, ``magnitude_*``, ``confidence_*`` and ``disagreement_*`` column is in [0, 1].

Which knobs move which columns: ``prompt_operator``, ``prompt_weights`` (weighted_mean) and
``damping`` define the per-annotator ensemble gap ``effective_gap_A_ens`` and so every ``_ens``
beta; ``category_envelopes`` change the mapping f for every beta (call betas use the call's
category, ensemble betas the ensemble category, pooled/debiased the cross-annotator category);
teacher operators only add columns. With the defaults every column is the paper's estimator.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo.aggregate import estimators as est
from sp2dpo.aggregate.calls import Panel
from sp2dpo.core.config import AggregateConfig, BetaConfig
from sp2dpo.core.schemas import CATEGORIES, beta_artifact_columns

log = logging.getLogger(__name__)

#: Floats are rounded to this many decimal places, then written in their shortest round-trip
#: form, so a re-run gives the same bytes (and last-bit noise never shows).
FLOAT_DECIMALS = 12


@dataclasses.dataclass(frozen=True)
class Envelope:
    """Per-category ``beta_min``/``beta_max`` arrays, indexed by category code."""

    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def from_config(cls, agg: AggregateConfig, beta: BetaConfig) -> Envelope:
        lo = np.full(len(CATEGORIES), beta.min)
        hi = np.full(len(CATEGORIES), beta.max)
        for name, env in agg.category_envelopes.items():
            i = CATEGORIES.index(name)
            lo[i], hi[i] = env.min, env.max
        return cls(lo=lo, hi=hi)

    def beta(self, gap: np.ndarray, category: np.ndarray) -> np.ndarray:
        """Eq. (30) with the envelope of each value's category."""
        return est.gap_to_beta(gap, self.lo[category], self.hi[category])


class _CategoryNames:
    """``names[codes]`` -> a pandas string array of category names (built in Arrow, fast)."""

    def __getitem__(self, codes: np.ndarray) -> Any:
        import pyarrow as pa
        import pyarrow.compute as pc

        return pd.array(
            pc.take(pa.array(CATEGORIES), pa.array(np.ascontiguousarray(codes))), dtype="str"
        )


def _weights(mapping: dict[str, float], names: tuple[str, ...], key: str, used: bool) -> np.ndarray:
    """Weights in ``names`` order; a name missing from ``mapping`` weighs 1.

    Raises:
        ValueError: when the weights are used and they sum to zero over the panel.
    """
    unknown = sorted(set(mapping) - set(names))
    if unknown and used:
        log.warning("aggregate.%s: %s not in the panel; ignored", key, ", ".join(unknown))
    weights = np.array([float(mapping.get(n, 1.0)) for n in names])
    if used and not weights.sum() > 0:
        raise ValueError(f"aggregate.{key}: the weights of the panel {list(names)} sum to zero")
    return weights


def beta_table(
    panel: Panel, agg: AggregateConfig, beta: BetaConfig
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Compute every estimator on a complete panel and lay out the artifact.

    Args:
        panel: the complete pairs (:func:`sp2dpo.aggregate.calls.screen`).
        agg: operators and knobs (``params.yaml`` section ``aggregate``).
        beta: envelope and seed (section ``beta``).

    Returns:
        ``(frame, info)``: the artifact, rows in ``prompt_id`` order, floats rounded to
        :data:`FLOAT_DECIMALS` places; ``info`` holds non-column results (bias offsets).
    """
    anns, vars_ = panel.annotators, panel.variants
    n_var = len(vars_)
    env = Envelope.from_config(agg, beta)
    cats = panel.category.astype(np.intp)
    names = _CategoryNames()
    info: dict[str, Any] = {}

    # Call level (SA): g_ijk and beta_ijk.
    g = est.effective_gap(panel.magnitude, panel.confidence)
    beta_call = env.beta(g, cats)

    # Prompt level (SE): category vote, ensemble gap (optionally weighted, damped), beta_ij.
    cat_ens, tie_ens = est.majority_vote(cats, len(CATEGORIES))
    use_gamma = agg.prompt_operator == "weighted_mean" or agg.pooled
    gamma = _weights(agg.prompt_weights, vars_, "prompt_weights", use_gamma)
    if agg.prompt_operator == "weighted_mean":
        gap_ens = est.weighted_mean(g, gamma)
    else:
        gap_ens = est.median(g)
    prompt_mad = est.mad(g)
    if agg.damping != "none":
        gap_ens = gap_ens * est.damping_factor(prompt_mad, agg.damping, agg.damping_lambda)
    beta_ens = env.beta(gap_ens, cat_ens)

    # Teacher level: MA per variant and JMAMP (means), plus configured operators.
    use_alpha = "weighted_mean" in agg.teacher_operators or agg.pooled
    alpha = _weights(agg.teacher_weights, anns, "teacher_weights", use_alpha)
    ops = ["mean", *[op for op in est.TEACHER_OPERATORS if op in agg.teacher_operators]]
    teacher: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for op in ops:
        fn = est.teacher_operator(
            op, trim_fraction=agg.trim_fraction, huber_delta=agg.huber_delta, weights=alpha
        )
        per_variant = np.stack([fn(beta_call[:, :, k]) for k in range(n_var)], axis=1)
        teacher[op] = (per_variant, fn(beta_ens))

    cat_all, tie_all = est.majority_vote(cat_ens, len(CATEGORIES))
    u = est.uniform_from_ids(panel.prompt_ids, beta.seed)

    cols: dict[str, Any] = {
        "prompt_id": pd.array(panel.prompt_ids, dtype="str"),
        "prompt_variant_count": np.full(len(panel.prompt_ids), n_var, dtype=np.int64),
    }
    for j, a in enumerate(anns):
        for k, v in enumerate(vars_):
            cols[f"category_{a}_{v}"] = names[cats[:, j, k]]
            cols[f"magnitude_{a}_{v}"] = panel.magnitude[:, j, k]
            cols[f"confidence_{a}_{v}"] = panel.confidence[:, j, k]
            cols[f"effective_gap_{a}_{v}"] = g[:, j, k]
            cols[f"beta_{a}_{v}"] = beta_call[:, j, k]
    for j, a in enumerate(anns):
        cols[f"category_{a}_ens"] = names[cat_ens[:, j]]
        cols[f"category_{a}_ens_tie_break"] = tie_ens[:, j]
        cols[f"effective_gap_{a}_ens"] = gap_ens[:, j]
        cols[f"beta_{a}_ens"] = beta_ens[:, j]
    mean_v, mean_ens = teacher["mean"]
    for k, v in enumerate(vars_):
        cols[f"beta_annotators_mean_{v}"] = mean_v[:, k]
    cols["beta_annotators_mean_ens"] = mean_ens
    cols["beta_random"] = est.gap_to_beta(u, beta.min, beta.max)
    if list(cols) != beta_artifact_columns(anns, vars_):  # pragma: no cover - programming error
        raise RuntimeError("column layout drifted from schemas.beta_artifact_columns")

    cols["category_annotators_ens"] = names[cat_all]
    cols["category_annotators_ens_tie_break"] = tie_all
    for j, a in enumerate(anns):
        cols[f"disagreement_prompt_mad_{a}"] = prompt_mad[:, j]
    cols["disagreement_annotators_std"] = est.std(beta_ens)
    cols["disagreement_annotators_mad"] = est.mad(beta_ens)
    for op in ops[1:]:
        per_variant, ens = teacher[op]
        for k, v in enumerate(vars_):
            cols[f"beta_annotators_{op}_{v}"] = per_variant[:, k]
        cols[f"beta_annotators_{op}_ens"] = ens
    if agg.pooled:
        w = alpha[:, None] * gamma[None, :]
        pooled = (g * w).sum(axis=(1, 2)) / w.sum()
        cols["effective_gap_pooled"] = pooled
        cols["beta_pooled"] = env.beta(pooled, cat_all)
    if agg.bias_decomposition:
        g_hat, b, d = est.bias_decomposition(g, agg.bias_ridge)
        cols["effective_gap_debiased"] = g_hat
        cols["beta_debiased"] = env.beta(g_hat, cat_all)
        info["bias_decomposition"] = {
            "ridge": agg.bias_ridge,
            "annotator_offsets": {a: float(x) for a, x in zip(anns, b, strict=True)},
            "variant_offsets": {v: float(x) for v, x in zip(vars_, d, strict=True)},
        }

    for name, values in cols.items():
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":
            # Round to fixed decimals; "+ 0.0" turns a -0.0 into 0.0.
            cols[name] = np.round(values, FLOAT_DECIMALS) + 0.0
    return pd.DataFrame(cols), info


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Write the artifact atomically with a fixed, fast text format.

    Floats: shortest round-trip text of the (already rounded) value, as Arrow formats it
    (``0.1245``, ``0.3``, ``1e-7``), whole numbers with a ``.0`` (``0.0``, ``1.0``); booleans ``True``/``False``; strings unquoted unless they
    contain a comma, quote or line break (then RFC 4180 quoting); ``\\n`` line ends. Lines are
    assembled in Arrow and written from its buffer: the pandas writer is ~10x slower on
    60,000 x 70 cells.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from sp2dpo.core.artifacts import atomic_path

    text = pa.large_string()
    parts = []
    for name in frame.columns:
        col = frame[name]
        if pd.api.types.is_bool_dtype(col):
            part = pc.if_else(pa.array(col.to_numpy()), "True", "False").cast(text)
        elif pd.api.types.is_float_dtype(col):
            # Format each distinct value once (call-level columns have few), then gather.
            distinct, index = np.unique(col.to_numpy(), return_inverse=True)
            formatted = pc.cast(pa.array(distinct), text)
            whole = distinct == np.floor(distinct)
            if whole.any():  # Arrow writes 1.0 as "1": keep floats recognisable ("1.0")
                dotted = pc.binary_join_element_wise(
                    formatted, pa.scalar(".0", text), pa.scalar("", text)
                )
                formatted = pc.if_else(pa.array(whole), dotted, formatted)
            part = pc.take(formatted, pa.array(index.astype(np.int32)))
        elif pd.api.types.is_numeric_dtype(col):
            part = pc.cast(pa.array(col.to_numpy()), text)
        else:
            part = _quote(pa.array(col, type=text))
        parts.append(part)
    header = ",".join(_quote_one(str(c)) for c in frame.columns) + "\n"
    parts[-1] = pc.binary_join_element_wise(parts[-1], pa.scalar("\n", text), pa.scalar("", text))
    lines = (
        pc.binary_join_element_wise(*parts, pa.scalar(",", text)) if len(parts) > 1 else parts[0]
    )
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[
        lines.offset : lines.offset + len(lines) + 1
    ]
    data = lines.buffers()[2]
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(header.encode("utf-8"))
        if len(lines):
            fh.write(memoryview(data)[int(offsets[0]) : int(offsets[-1])])


def _quote(arr: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    needs = pc.match_substring_regex(arr, r'[",\r\n]')
    if not pc.any(needs).as_py():
        return arr
    quote, empty = pa.scalar('"', arr.type), pa.scalar("", arr.type)
    quoted = pc.binary_join_element_wise(quote, pc.replace_substring(arr, '"', '""'), quote, empty)
    return pc.if_else(needs, quoted, arr)


def _quote_one(text: str) -> str:
    if any(ch in text for ch in '",\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text
