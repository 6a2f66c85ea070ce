"""DPO-PoP's preference-over-preference tuples: which pair is the stronger preference of two.

A tuple (s, w) says pair s is a stronger preference than pair w; it is simulated from a margin
per pair (UltraFeedback's score difference, or the teachers' semantic gap) and kept only when the
two margins differ by at least ``min_diff``. Two samplers (DPO-PoP paper, Sec. 4.1):

- ``iter``: every pair is the stronger member of k tuples, each against a weaker pair drawn
  uniformly without replacement among those ``min_diff`` below it; with fewer than k such
  partners the draw is with replacement, and a pair with none is skipped [U: the paper does not
  say; both are counted];
- ``random``: uniform (i, j), i != j, with replacement, ordered by margin and kept when the
  margins differ enough, until there are k x N tuples [U].

``label_noise`` flips each tuple's order with that probability (the paper's App. F ablation).
Everything is drawn from one seeded generator: the same inputs give the same tuples.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tuples:
    """Row indices of the stronger and weaker pair of every tuple, and how they were drawn."""

    strong: np.ndarray
    weak: np.ndarray
    info: dict[str, int]


class NoTuples(ValueError):
    """No two pairs' margins differ by ``min_diff``: DPO-PoP has nothing to train on."""


def sample_tuples(
    margins: np.ndarray, *, k: int, sampler: str, min_diff: float, seed: int, label_noise: float = 0.0
) -> Tuples:
    """``k x N`` tuples (at most, for ``iter``) from the pairs' margins.

    Raises:
        NoTuples: no pair has a partner ``min_diff`` below it (the message gives the spread).
    """
    g = np.asarray(margins, dtype=float)
    n = g.size
    if n < 2 or not np.isfinite(g).all():
        raise NoTuples(f"DPO-PoP needs at least 2 pairs with finite margins, got {n}")
    if g.max() - g.min() < min_diff:
        raise NoTuples(
            f"no two of the {n} pairs' margins differ by min_margin_diff={min_diff} (margins "
            f"{g.min():.3g} to {g.max():.3g}); lower loss_args.min_margin_diff or use pairs with "
            "more spread"
        )
    rng = np.random.default_rng(seed)
    info = {"pairs": n, "skipped_no_partner": 0, "with_replacement": 0, "flipped": 0}
    if sampler == "iter":
        strong, weak = _iterative(g, k, min_diff, rng, info)
    elif sampler == "random":
        strong, weak = _random(g, k, min_diff, rng)
    else:
        raise ValueError(f"unknown DPO-PoP sampler {sampler!r}; choose iter or random")
    if label_noise > 0:
        flip = rng.random(strong.size) < label_noise
        strong, weak = np.where(flip, weak, strong), np.where(flip, strong, weak)
        info["flipped"] = int(flip.sum())
    info["tuples"] = int(strong.size)
    return Tuples(strong.astype(np.int64), weak.astype(np.int64), info)


def _iterative(g: np.ndarray, k: int, min_diff: float, rng: np.random.Generator,
               info: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    strong, weak = [], []
    for i in range(g.size):
        partners = np.flatnonzero(g[i] - g >= min_diff)
        if partners.size == 0:
            info["skipped_no_partner"] += 1
            continue
        replace = partners.size < k
        info["with_replacement"] += int(replace)
        chosen = rng.choice(partners, size=k, replace=replace)
        strong += [i] * k
        weak += chosen.tolist()
    return np.asarray(strong), np.asarray(weak)


def _random(g: np.ndarray, k: int, min_diff: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n, want = g.size, k * g.size
    strong: list[int] = []
    weak: list[int] = []
    while len(strong) < want:
        i = rng.integers(0, n, size=4 * want)
        j = rng.integers(0, n, size=4 * want)
        ok = (i != j) & (np.abs(g[i] - g[j]) >= min_diff)
        i, j = i[ok], j[ok]
        hi = np.where(g[i] >= g[j], i, j)
        lo = np.where(g[i] >= g[j], j, i)
        strong += hi.tolist()
        weak += lo.tolist()
    return np.asarray(strong[:want]), np.asarray(weak[:want])
