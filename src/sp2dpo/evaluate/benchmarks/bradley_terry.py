"""Bradley-Terry scores of an Arena-Hard battle table, with a seeded bootstrap interval.

The statistics half of :mod:`sp2dpo.evaluate.benchmarks.arenahard` (which builds the battle tables from
judge verdicts and re-exports these functions): the official code fits a logistic regression
without intercept or penalty on the battle table stacked twice (a tie is a win for ``model_a``
in the first copy and for ``model_b`` in the second); here the same likelihood is maximised by
Newton's method, each battle row counting as 2 trials with 2, 1 or 0 successes for ``model_a``.
Ratings are on the Elo scale (400 points per factor 10 in odds, 1000 for the baseline); a score
is the predicted win rate against the baseline, in percent; the interval is a percentile
bootstrap over the rows of the whole table with ``numpy.random.default_rng(seed)``.

A battle is anything with ``question_id``, ``model_a``, ``model_b`` and ``winner`` attributes
(:class:`sp2dpo.evaluate.benchmarks.arenahard.Battle`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from sp2dpo.core.errors import UserError


class Battle(Protocol):
    """What the fit reads of a battle row (:class:`sp2dpo.evaluate.benchmarks.arenahard.Battle`)."""

    @property
    def model_a(self) -> str: ...

    @property
    def model_b(self) -> str: ...

    @property
    def winner(self) -> str: ...

log = logging.getLogger(__name__)

#: The Arena-Hard v0.1 baseline (score 50 by definition).
DEFAULT_BASELINE = "gpt-4-0314"
#: Bootstrap rounds and seed (the official defaults: 100 rounds, seed 42).
DEFAULT_ROUNDS = 100
DEFAULT_SEED = 42

#: Convergence of the Bradley-Terry fit: largest gradient entry of the mean log-likelihood. The
#: official lbfgs stops at 1e-8; Newton's method gets 100x further in about one more step, so a
#: score no longer depends on where the optimiser happened to stop (agreement: ~1e-4 Elo).
FIT_TOL = 1e-10
FIT_MAX_ITER = 100

#: Elo scale of the official ratings: ``SCALE`` points per factor ``BASE`` in odds; baseline 1000.
SCALE, BASE, BASELINE_RATING = 400.0, 10.0, 1000.0


# ------------------------------------------------------------------------------ Bradley-Terry


@dataclasses.dataclass(frozen=True)
class _Table:
    """A battle table as index arrays: ``a``/``b`` model indices, ``s`` model_a successes of 2."""

    models: tuple[str, ...]
    a: np.ndarray
    b: np.ndarray
    s: np.ndarray

    @classmethod
    def of(cls, battles: Sequence[Battle]) -> _Table:
        names: dict[str, int] = {}
        for battle in battles:  # model_a column first, then model_b, as the official code
            names.setdefault(battle.model_a, len(names))
        for battle in battles:
            names.setdefault(battle.model_b, len(names))
        a = np.fromiter((names[x.model_a] for x in battles), dtype=np.int64, count=len(battles))
        b = np.fromiter((names[x.model_b] for x in battles), dtype=np.int64, count=len(battles))
        points = {"model_a": 2.0, "tie": 1.0, "model_b": 0.0}
        s = np.fromiter((points[x.winner] for x in battles), dtype=float, count=len(battles))
        return cls(tuple(names), a, b, s)


def _expit(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow for large ``|x|``."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _connected(n: int, a: np.ndarray, b: np.ndarray, root: int) -> np.ndarray:
    """Which of ``n`` models are linked to ``root`` through battles (others have no rating)."""
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for i, j in zip(a.tolist(), b.tolist(), strict=True):
        neighbours[i].add(j)
        neighbours[j].add(i)
    seen = np.zeros(n, dtype=bool)
    seen[root] = True
    todo = [root]
    while todo:
        for j in neighbours[todo.pop()]:
            if not seen[j]:
                seen[j] = True
                todo.append(j)
    return seen


def _fit(
    n: int, a: np.ndarray, b: np.ndarray, s: np.ndarray, root: int, tol: float, max_iter: int
) -> np.ndarray:
    """Maximum-likelihood log-odds strengths (``root`` = 0; NaN where not linked to ``root``).

    Each row is 2 Bernoulli trials of "model_a wins" with ``s`` successes: the official stacked
    table. Rows are pooled per (model_a, model_b) pair, then Newton's method with step halving runs
    until the largest gradient entry of the mean log-likelihood is at most ``tol``.
    """
    pair, inverse = np.unique(a * n + b, return_inverse=True)
    successes = np.bincount(inverse, weights=s, minlength=len(pair))
    counts = 2.0 * np.bincount(inverse, minlength=len(pair))
    pa, pb = pair // n, pair % n
    linked = _connected(n, pa, pb, root)
    free = np.flatnonzero(linked & (np.arange(n) != root))
    theta = np.zeros(n)
    total = counts.sum()

    def loglik(t: np.ndarray) -> float:
        eta = t[pa] - t[pb]
        return float(np.sum(successes * eta - counts * np.logaddexp(0.0, eta)))

    for _ in range(max_iter):
        eta = theta[pa] - theta[pb]
        prob = _expit(eta)
        resid = successes - counts * prob
        grad = np.bincount(pa, weights=resid, minlength=n) - np.bincount(pb, weights=resid, minlength=n)
        if free.size == 0 or np.max(np.abs(grad[free])) / total <= tol:
            break
        w = counts * prob * (1.0 - prob)
        info = np.zeros((n, n))
        np.add.at(info, (pa, pa), w)
        np.add.at(info, (pb, pb), w)
        np.add.at(info, (pa, pb), -w)
        np.add.at(info, (pb, pa), -w)
        step = np.linalg.lstsq(info[np.ix_(free, free)], grad[free], rcond=None)[0]
        before, t = loglik(theta), 1.0
        while True:
            candidate = theta.copy()
            candidate[free] += t * step
            if loglik(candidate) >= before or t < 1e-12:
                break
            t /= 2.0
        theta = candidate
    else:
        log.warning("Bradley-Terry fit stopped after %d Newton steps without reaching tol=%g",
                    max_iter, tol)
    theta[~linked] = np.nan
    return theta


def _to_rating(theta: np.ndarray | float) -> Any:
    """Log-odds strength relative to the baseline -> Elo rating (baseline 1000)."""
    return BASELINE_RATING + SCALE * np.asarray(theta) / math.log(BASE)


def _check_table(battles: Sequence[Battle], baseline: str) -> _Table:
    if not battles:
        raise UserError("no battles to score")
    table = _Table.of(battles)
    if baseline not in table.models:
        raise UserError(f"baseline {baseline!r} plays in no battle (models: "
                        f"{', '.join(sorted(table.models))}); pass --baseline")
    root = table.models.index(baseline)
    linked = _connected(len(table.models), table.a, table.b, root)
    if not linked.all():
        lost = sorted(m for m, ok in zip(table.models, linked, strict=True) if not ok)
        raise UserError(f"models with no chain of battles to the baseline {baseline!r}: "
                        f"{', '.join(lost)}")
    return table


def bradley_terry(
    battles: Sequence[Battle],
    baseline: str = DEFAULT_BASELINE,
    tol: float = FIT_TOL,
    max_iter: int = FIT_MAX_ITER,
) -> dict[str, float]:
    """Bradley-Terry ratings of every model of a battle table on the Elo scale, baseline = 1000.

    The fit is the official one (module docstring, 2.): unpenalised, no intercept, ties split.
    The win rate of model ``m`` against the baseline is ``1 / (1 + 10 ** ((1000 - r_m) / 400))``.

    Raises:
        UserError: an empty table, a baseline that plays in no battle, or a model not linked to
            the baseline by a chain of battles (its rating would be arbitrary).
    """
    table = _check_table(battles, baseline)
    root = table.models.index(baseline)
    theta = _fit(len(table.models), table.a, table.b, table.s, root, tol, max_iter)
    return {m: float(_to_rating(t)) for m, t in zip(table.models, theta, strict=True)}


def win_rate(rating: float) -> float:
    """Predicted win rate (percent) of a model with Elo ``rating`` against the baseline (1000)."""
    return 100.0 / (1.0 + BASE ** ((BASELINE_RATING - rating) / SCALE))


def score_battles(
    battles: Sequence[Battle],
    baseline: str = DEFAULT_BASELINE,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = DEFAULT_SEED,
) -> dict[str, dict[str, Any]]:
    """Arena-Hard scores with 95% bootstrap intervals for every model of a battle table.

    Args:
        battles: the pooled table (all models scored together, as the leaderboard does).
        baseline: the anchor (score 50.0, interval [50.0, 50.0]).
        rounds: bootstrap refits on row resamples of the whole table; 0 skips the interval.
        seed: seed of ``numpy.random.default_rng`` for the resamples.

    Returns:
        ``{model: {...}}`` with ``score`` (percent win rate vs the baseline), ``ci`` ([2.5th,
        97.5th] percentile, percent; None without rounds), ``rating`` and ``rating_ci`` (Elo),
        ``n_battles`` (rows the model plays in), ``wins`` / ``ties`` / ``losses`` (those rows from
        its side), ``is_baseline``, ``rounds`` and ``seed``.

    Raises:
        UserError: as :func:`bradley_terry`, or a negative ``rounds``.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise UserError(f"rounds must be an integer >= 0, got {rounds!r}")
    table = _check_table(battles, baseline)
    n, root = len(table.models), table.models.index(baseline)
    theta = _fit(n, table.a, table.b, table.s, root, FIT_TOL, FIT_MAX_ITER)
    draws = np.full((rounds, n), np.nan)
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        idx = rng.integers(0, len(battles), size=len(battles))
        draws[r] = _fit(n, table.a[idx], table.b[idx], table.s[idx], root, FIT_TOL, FIT_MAX_ITER)

    out: dict[str, dict[str, Any]] = {}
    for j, model in enumerate(table.models):
        plays_a, plays_b = table.a == j, table.b == j
        won = (plays_a & (table.s == 2.0)) | (plays_b & (table.s == 0.0))
        lost = (plays_a & (table.s == 0.0)) | (plays_b & (table.s == 2.0))
        tied = (plays_a | plays_b) & (table.s == 1.0)
        rating = float(_to_rating(theta[j]))
        rating_ci: list[float] | None = None
        column = draws[:, j][~np.isnan(draws[:, j])]
        if column.size:
            rating_ci = [float(_to_rating(q)) for q in np.percentile(column, [2.5, 97.5])]
        is_baseline = model == baseline
        out[model] = {
            "score": 50.0 if is_baseline else win_rate(rating),
            "ci": None if rating_ci is None else (
                [50.0, 50.0] if is_baseline else [win_rate(q) for q in rating_ci]
            ),
            "rating": rating,
            "rating_ci": rating_ci,
            "n_battles": int(np.sum(plays_a | plays_b)),
            "wins": int(won.sum()),
            "ties": int(tied.sum()),
            "losses": int(lost.sum()),
            "is_baseline": is_baseline,
            "rounds": rounds,
            "seed": seed,
        }
    return out


def format_text(scores: Mapping[str, Mapping[str, Any]], baseline: str = DEFAULT_BASELINE) -> str:
    """A readable table of :func:`score_battles`, best model first, with the bootstrap setting."""
    any_row = next(iter(scores.values()), {})
    lines = [
        f"Arena-Hard-Auto v0.1 win rate vs {baseline} (percent); 95% CI: "
        f"{any_row.get('rounds', 0)} bootstrap rounds, seed {any_row.get('seed')}",
        f"{'model':<40} {'score':>7}  {'95% CI':<17} {'battles':>7}",
    ]
    for model, row in sorted(scores.items(), key=lambda kv: (-kv[1]["score"], kv[0])):
        ci = row["ci"]
        interval = "-" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"
        lines.append(f"{model:<40} {row['score']:>7.2f}  {interval:<17} {row['n_battles']:>7}")
    return "\n".join(lines) + "\n"
