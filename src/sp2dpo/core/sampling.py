"""Seeded, order-stable subsets: the one rule every stage uses to pick a sample.

An item is ranked by ``sha256(f"{domain}:{seed}:{key}")``; the ``limit`` smallest are kept, in
their input order. The subset therefore does not depend on row order, growing ``limit`` keeps every
earlier item (cached work stays valid), and distinct ``domain`` strings keep the subsets of
different stages independent of each other and of ``beta_random`` (``sha256(f"{seed}:{id}")``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

T = TypeVar("T")


def rank(domain: str, seed: int, key: Hashable) -> str:
    """The hex digest that orders ``key`` within ``domain`` for ``seed``."""
    return hashlib.sha256(f"{domain}:{seed}:{key}".encode()).hexdigest()


def seeded_subset(keys: Sequence[Hashable], limit: int | None, seed: int, domain: str) -> list[int]:
    """Positions of the kept items, ascending (input order); all of them when ``limit`` is None
    or not smaller than ``len(keys)``.

    Example:
        >>> len(seeded_subset(["a", "b", "c", "d"], 2, 42, "demo"))
        2
    """
    if limit is None or limit >= len(keys):
        return list(range(len(keys)))
    order = sorted(range(len(keys)), key=lambda i: (rank(domain, seed, keys[i]), i))
    return sorted(order[:limit])


def seeded_items(
    items: Sequence[T], key: Callable[[T], Hashable], limit: int | None, seed: int, domain: str
) -> list[T]:
    """The kept items themselves (:func:`seeded_subset` of their ``key``), in input order."""
    return [items[i] for i in seeded_subset([key(item) for item in items], limit, seed, domain)]
