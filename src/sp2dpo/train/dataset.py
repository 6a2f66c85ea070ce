"""The training dataset: filtered pairs joined with their per-pair beta_i, margins and tuples.

:func:`build_dataset` reads the filtered pairs and the beta schedule (through
:mod:`sp2dpo.core.beta`, the same reader and envelope check as every other stage), keeps the pairs
the schedule covers (the paper trains on the fully annotated pairs only), and stores beta_i in a
float column :data:`BETA_COLUMN` (a constant for a global-beta method). Margin losses get a
:data:`MARGIN_COLUMN` (:func:`pair_margins`); DPO-PoP's rows are tuples of a stronger and a weaker
pair (:mod:`sp2dpo.train.pop`). The result is a ``datasets.Dataset`` in TRL's conversational
preference format.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo.core import artifacts, schemas
from sp2dpo.core.beta import BetaError, first_ids, read_beta_column, read_schedule
from sp2dpo.core.config import MethodConfig, TrainConfig
from sp2dpo.train import pop

log = logging.getLogger(__name__)

#: Name of the per-pair beta column inside the training dataset and the collated batch.
BETA_COLUMN = "beta"
#: The per-pair margin m_i of the margin losses.
MARGIN_COLUMN = "margin"
#: DPO-PoP: the weaker pair of each tuple (texts, then its beta).
WEAK_TEXT_COLUMNS = ("weak_prompt", "weak_chosen", "weak_rejected")
WEAK_BETA_COLUMN = "weak_beta"


def attach_beta(pairs: pd.DataFrame, beta: pd.Series | float, *, drop_missing: bool = False) -> pd.DataFrame:
    """Return ``pairs`` with a float :data:`BETA_COLUMN`: a constant or looked up by ``prompt_id``.

    Args:
        pairs: the filtered pairs (needs ``prompt_id``).
        beta: a global beta, or a Series indexed by prompt_id (NaN = no value).
        drop_missing: drop pairs without a beta_i (the paper) instead of raising.

    Raises:
        BetaError: pairs without a beta_i and ``drop_missing`` is false (names how many and the
            first prompt_ids), or no pair left.
    """
    out = pairs.copy()
    if isinstance(beta, int | float):
        out[BETA_COLUMN] = float(beta)
        return out
    values = out["prompt_id"].astype(str).map(beta)
    missing = values.isna()
    if missing.any():
        ids = out.loc[missing, "prompt_id"].tolist()
        msg = (
            f"{len(ids)} of {len(out)} training pair(s) have no beta in column {beta.name!r}; "
            f"first prompt_id(s): {first_ids(ids)}"
        )
        if not drop_missing:
            raise BetaError(msg + ". Set train.drop_missing_beta=true to drop them, as the paper does.")
        log.warning("%s; dropping them (train.drop_missing_beta)", msg)
        out, values = out.loc[~missing], values[~missing]
    if out.empty:
        raise BetaError("no training pair left after joining the beta artifact")
    out[BETA_COLUMN] = values.astype("float64").to_numpy()
    return out.reset_index(drop=True)


def to_preference_dataset(frame: pd.DataFrame):
    """A ``datasets.Dataset`` in TRL's conversational preference format, plus ``beta``.

    The prompt is one user turn and each reply one assistant turn, so the student's chat template
    renders them; ``prompt_id`` is kept for traceability (Trainer prunes it before collation).
    ``margin`` and DPO-PoP's ``weak_*`` columns travel along when the frame has them.
    """
    from datasets import Dataset

    def user(texts):
        return [[{"role": "user", "content": t}] for t in texts]

    def assistant(texts):
        return [[{"role": "assistant", "content": t}] for t in texts]

    records = {
        "prompt_id": frame["prompt_id"].astype(str).tolist(),
        "prompt": user(frame["prompt"]),
        "chosen": assistant(frame["chosen"]),
        "rejected": assistant(frame["rejected"]),
        BETA_COLUMN: frame[BETA_COLUMN].astype("float64").tolist(),
    }
    if MARGIN_COLUMN in frame.columns:
        records[MARGIN_COLUMN] = frame[MARGIN_COLUMN].astype("float64").tolist()
    if WEAK_TEXT_COLUMNS[0] in frame.columns:
        records["weak_prompt_id"] = frame["weak_prompt_id"].astype(str).tolist()
        records["weak_prompt"] = user(frame["weak_prompt"])
        records["weak_chosen"] = assistant(frame["weak_chosen"])
        records["weak_rejected"] = assistant(frame["weak_rejected"])
        records[WEAK_BETA_COLUMN] = frame[WEAK_BETA_COLUMN].astype("float64").tolist()
    return Dataset.from_dict(records)


def beta_summary(values: np.ndarray | pd.Series) -> dict[str, float]:
    """Count, mean, std, min, quartiles and max of the betas a run trains with."""
    arr = np.asarray(values, dtype=float)
    q = np.quantile(arr, [0.25, 0.5, 0.75])
    return {
        "count": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "min": float(arr.min()),
        "p25": float(q[0]),
        "median": float(q[1]),
        "p75": float(q[2]),
        "max": float(arr.max()),
    }


def pair_margins(
    frame: pd.DataFrame, args: Any, beta_path: str | Path, envelope: tuple[float, float],
    schedule: pd.DataFrame | None,
) -> tuple[np.ndarray, str]:
    """m_i for every row of ``frame`` and the source used (see ``loss_args.margin_source``).

    - ``scores``: score_chosen - score_rejected (every pair must have both);
    - ``semantic``: the teachers' gap S = (beta_i - beta_min) / (beta_max - beta_min) from
      ``margin_column`` (JMAMP by default), times ``semantic_scale``;
    - ``auto``: scores when every pair has them, else semantic; ``fixed``: ``margin``.

    Every margin is then multiplied by ``scale``.

    Raises:
        BetaError: pairs without scores (``scores``) or without a gap (``semantic``), named by
            prompt_id; a negative margin.
    """
    source = args.margin_source
    scores = frame[["score_chosen", "score_rejected"]].astype("float64")
    has_scores = np.isfinite(scores.to_numpy()).all(axis=1)
    if source == "auto":
        source = "scores" if has_scores.all() else "semantic"
    if source == "fixed":
        values = np.full(len(frame), float(args.margin))
    elif source == "scores":
        if not has_scores.all():
            ids = frame.loc[~has_scores, "prompt_id"].tolist()
            raise BetaError(
                f"margin_source scores: {len(ids)} of {len(frame)} pair(s) have no score_chosen/"
                f"score_rejected; first prompt_id(s): {first_ids(ids)}. Use margin_source semantic "
                "(the teachers' gap) or data with scores"
            )
        values = (scores["score_chosen"] - scores["score_rejected"]).to_numpy()
    else:
        lo, hi = envelope
        column = read_beta_column(beta_path, args.margin_column, lo, hi, frame=schedule)
        gap = frame["prompt_id"].astype(str).map(column)
        if gap.isna().any():
            ids = frame.loc[gap.isna(), "prompt_id"].tolist()
            raise BetaError(
                f"margin_source semantic: {len(ids)} pair(s) have no value in {args.margin_column!r}; "
                f"first prompt_id(s): {first_ids(ids)}"
            )
        values = (gap.to_numpy(dtype=float) - lo) / (hi - lo) * float(args.semantic_scale)
    values = values * float(getattr(args, "scale", 1.0))
    if (values < 0).any():
        bad = frame.loc[values < 0, "prompt_id"].tolist()
        raise BetaError(f"negative margin for {len(bad)} pair(s) (source {source}); first: {first_ids(bad)}")
    return values, source


def pop_frame(frame: pd.DataFrame, margins: np.ndarray, args: Any, seed: int) -> tuple[pd.DataFrame, dict]:
    """DPO-PoP rows: each tuple's stronger pair (its columns as they are) and weaker pair
    (``weak_prompt``/``weak_chosen``/``weak_rejected``/``weak_prompt_id``/``weak_beta``).

    Raises:
        BetaError: no tuple can be formed (the message gives the margins' spread).
    """
    try:
        tuples = pop.sample_tuples(
            margins, k=args.k, sampler=args.sampler, min_diff=args.min_margin_diff, seed=seed,
            label_noise=args.label_noise,
        )
    except pop.NoTuples as exc:
        raise BetaError(f"DPO-PoP: {exc}") from None
    strong = frame.iloc[tuples.strong].reset_index(drop=True)
    weak = frame.iloc[tuples.weak].reset_index(drop=True)
    out = strong.copy()
    for col in ("prompt_id", "prompt", "chosen", "rejected"):
        out[f"weak_{col}"] = weak[col].to_numpy()
    out[WEAK_BETA_COLUMN] = weak[BETA_COLUMN].to_numpy()
    return out, tuples.info


def build_dataset(
    cfg: TrainConfig,
    method: MethodConfig,
    pairs_path: str | Path,
    beta_path: str | Path,
    envelope: tuple[float, float],
) -> tuple[Any, dict[str, Any]]:
    """Filtered pairs (first ``cfg.limit``) + beta_i (+ margins, tuples) -> TRL dataset, and a
    description of it.

    The schedule is read once (when the method reads a column, a semantic margin, or
    ``drop_missing_beta`` needs the pairs it covers); every check on it runs here, before any
    model loads.
    """
    pairs = artifacts.read_table(pairs_path, schemas.FilteredPairsTable)
    args = method.args
    semantic = method.spec.margins and args.margin_source in ("auto", "semantic")
    schedule = None
    if method.per_pair or cfg.drop_missing_beta or semantic:
        schedule = read_schedule(beta_path, *envelope)
    if method.per_pair:
        beta: pd.Series | float = read_beta_column(beta_path, method.beta_column, *envelope, frame=schedule)
    else:
        beta = float(method.beta)
    if cfg.drop_missing_beta:
        # The paper trains on the fully annotated pairs only (App. E.3). Every method, global-beta
        # DPO included, then sees the same pairs: those the artifact covers.
        covered = set(schedule["prompt_id"].astype(str))
        pairs = pairs[pairs["prompt_id"].isin(covered)].reset_index(drop=True)
    if cfg.limit is not None:
        pairs = pairs.head(cfg.limit)
    frame = attach_beta(pairs, beta, drop_missing=cfg.drop_missing_beta)
    info: dict[str, Any] = {"n_pairs_in": len(pairs), "n_pairs": len(frame),
                            "n_dropped_missing_beta": len(pairs) - len(frame)}
    beta_mean = getattr(args, "beta_mean", None)
    if beta_mean is not None and method.per_pair:
        # SimPO / alpha-DPO work on a beta scale of 2 to 10: keep the ratios of beta_i.
        factor = beta_mean / float(frame[BETA_COLUMN].mean())
        frame[BETA_COLUMN] = frame[BETA_COLUMN] * factor
        info["beta_rescale_factor"] = factor
    if method.spec.margins:
        margins, source = pair_margins(frame, args, beta_path, envelope, schedule)
        info["margin_source"] = source
        info["margin"] = beta_summary(margins)
        if method.loss == "dpo_pop":
            frame, info["pop"] = pop_frame(frame, margins, args, cfg.seed)
        else:
            if getattr(args, "normalize", False) and method.loss == "scaled_bt":
                margins = margins / max(float(margins.mean()), 1e-12)
            frame[MARGIN_COLUMN] = margins
    info["beta"] = beta_summary(frame[BETA_COLUMN])
    return to_preference_dataset(frame), info
