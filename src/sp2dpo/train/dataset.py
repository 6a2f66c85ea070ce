"""The training dataset: filtered pairs joined with their per-pair beta_i.

:func:`build_dataset` reads the filtered pairs and the beta schedule (through
:mod:`sp2dpo.core.beta`, the same reader and envelope check as every other stage), keeps the pairs
the schedule covers (the paper trains on the fully annotated pairs only), and stores beta_i in a
float column :data:`BETA_COLUMN` (a constant for a global-beta method). The result is a
``datasets.Dataset`` in TRL's conversational preference format.
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

log = logging.getLogger(__name__)

#: Name of the per-pair beta column inside the training dataset and the collated batch.
BETA_COLUMN = "beta"


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
    """
    from datasets import Dataset

    records = {
        "prompt_id": frame["prompt_id"].astype(str).tolist(),
        "prompt": [[{"role": "user", "content": p}] for p in frame["prompt"]],
        "chosen": [[{"role": "assistant", "content": c}] for c in frame["chosen"]],
        "rejected": [[{"role": "assistant", "content": r}] for r in frame["rejected"]],
        BETA_COLUMN: frame[BETA_COLUMN].astype("float64").tolist(),
    }
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


def build_dataset(
    cfg: TrainConfig,
    method: MethodConfig,
    pairs_path: str | Path,
    beta_path: str | Path,
    envelope: tuple[float, float],
) -> tuple[Any, dict[str, Any]]:
    """Filtered pairs (first ``cfg.limit``) + beta_i -> TRL dataset, and a description of it.

    The schedule is read once (when the method reads a column, or ``drop_missing_beta`` needs the
    pairs it covers); every check on it runs here, before any model loads.
    """
    pairs = artifacts.read_table(pairs_path, schemas.FilteredPairsTable)
    schedule = None
    if method.type != "dpo" or cfg.drop_missing_beta:
        schedule = read_schedule(beta_path, *envelope)
    if method.type == "dpo":
        beta: pd.Series | float = float(method.beta)
    else:
        beta = read_beta_column(beta_path, method.beta_column, *envelope, frame=schedule)
    if cfg.drop_missing_beta:
        # The paper trains on the fully annotated pairs only (App. E.3). Every method, global-beta
        # DPO included, then sees the same pairs: those the artifact covers.
        covered = set(schedule["prompt_id"].astype(str))
        pairs = pairs[pairs["prompt_id"].isin(covered)].reset_index(drop=True)
    if cfg.limit is not None:
        pairs = pairs.head(cfg.limit)
    frame = attach_beta(pairs, beta, drop_missing=cfg.drop_missing_beta)
    info = {
        "n_pairs_in": len(pairs),
        "n_pairs": len(frame),
        "n_dropped_missing_beta": len(pairs) - len(frame),
        "beta": beta_summary(frame[BETA_COLUMN]),
    }
    return to_preference_dataset(frame), info
