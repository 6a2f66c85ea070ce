"""The paired test behind a sweep's "distinguishable": every experiment scores the same held-out
pairs, so the difference between two settings is best judged pair by pair.

The eval stage writes each method's per-pair held-out numbers to
``data/eval/<student>/<method>/prefeval.jsonl`` (one record per pair: ``prompt_id``, ``margin``,
``chosen_logratio``, ``rejected_logratio``, ``policy_chosen_logp``, ``policy_rejected_logp``).
:data:`PER_PAIR` maps each ``prefeval.*`` selection metric to its per-pair value, so the mean of
those values is the metric the eval report gives. :func:`paired_interval` takes the per-pair
difference d_i = a_i - b_i over the pairs both experiments scored and resamples pairs (a seeded
percentile bootstrap of mean(d)): the interval of the *difference*, which is far narrower than two
marginal intervals when the settings' errors are correlated, as they are on shared pairs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Rounds and seed of the paired bootstrap (those of the held-out metric's own intervals).
ROUNDS = 1000
SEED = 42


def _win(diff: float) -> float:
    """1 above 0, 1/2 at 0, 0 below (a tie counts half, as the held-out accuracy does)."""
    return 0.5 if diff == 0 else float(diff > 0)


#: Selection metric -> its per-pair value from one ``prefeval.jsonl`` record.
PER_PAIR: dict[str, Callable[[Mapping[str, Any]], float]] = {
    "prefeval.accuracy": lambda r: _win(r["margin"]),
    "prefeval.mean_margin": lambda r: r["margin"],
    "prefeval.mean_chosen_logratio": lambda r: r["chosen_logratio"],
    "prefeval.mean_rejected_logratio": lambda r: r["rejected_logratio"],
    "prefeval.likelihood_accuracy": lambda r: _win(r["policy_chosen_logp"] - r["policy_rejected_logp"]),
    "prefeval.mean_chosen_logp": lambda r: r["policy_chosen_logp"],
    "prefeval.mean_rejected_logp": lambda r: r["policy_rejected_logp"],
}


def per_pair_path(student: str, method: str) -> str:
    """Where the eval stage writes a method's per-pair held-out records."""
    return f"data/eval/{student}/{method}/prefeval.jsonl"


#: Reads an experiment's per-pair records: ``(rev, path) -> records or None``.
PairReader = Callable[[str, str], list[dict[str, Any]] | None]


def dvc_reader(repo: str | Path = ".") -> PairReader:
    """A :data:`PairReader` through DVC: the per-pair file is a DVC-tracked output, so each
    experiment's version is read from its commit's ``dvc.lock`` and the cache (or a remote)."""

    def read(rev: str, path: str) -> list[dict[str, Any]] | None:
        from dvc.api import DVCFileSystem

        try:
            text = DVCFileSystem(str(repo), rev=rev).read_text(path)
        except Exception:  # no such output at that revision, or its data is in no cache
            return None
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    return read


def values(records: list[Mapping[str, Any]], metric: str) -> dict[str, float] | None:
    """``prompt_id -> per-pair value`` of ``metric`` (None: the metric has no per-pair form, or
    a record lacks its fields)."""
    value = PER_PAIR.get(metric)
    if value is None:
        return None
    try:
        out = {str(r["prompt_id"]): float(value(r)) for r in records}
    except (KeyError, TypeError, ValueError):
        return None
    return out if out and all(math.isfinite(v) for v in out.values()) else None


def paired_interval(
    a: Mapping[str, float], b: Mapping[str, float], *, rounds: int = ROUNDS, seed: int = SEED
) -> dict[str, Any] | None:
    """Mean and 95% percentile-bootstrap interval of a_i - b_i over the pairs both scored.

    Returns:
        ``{"diff", "ci": [low, high], "n", "rounds", "seed"}``, or None when no pair is shared.
    """
    shared = sorted(set(a) & set(b))
    if not shared:
        return None
    d = np.asarray([a[k] - b[k] for k in shared], dtype=float)
    index = np.random.default_rng(seed).integers(0, len(d), size=(rounds, len(d)))
    means = d[index].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"diff": float(d.mean()), "ci": [float(low), float(high)], "n": len(shared),
            "rounds": rounds, "seed": seed}
