"""The semantic-gap answer the local scorer writes: its keys and layout, the category pick and
the grid mean of magnitude and confidence.

Pure arithmetic and formatting, no model: the categories are scored as whole strings and the
argmax wins, exact ties going to the category that comes first in the priority order
:data:`sp2dpo.core.schemas.CATEGORIES` (:func:`pick_category`); magnitude and confidence are
scored over the discretised grid :data:`GRID`, renormalised (:func:`grid_probabilities`) and
summarised by the probability-weighted mean rounded to :data:`DECIMALS` decimals
(:func:`grid_mean`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

from sp2dpo.core.schemas import CATEGORIES
from sp2dpo.llm.parse import KEYS

CATEGORY_KEY, MAGNITUDE_KEY, CONFIDENCE_KEY = KEYS

#: The start of the answer, appended to the rendered prompt before the categories are scored.
CATEGORY_CUE = '{"' + CATEGORY_KEY + '": "'

#: The discretised [0, 1] grid scored for magnitude and confidence.
GRID: tuple[float, ...] = tuple(i / 10 for i in range(11))

#: Decimals kept in the probability-weighted mean of the grid.
DECIMALS = 2


def pick_category(logprobs: Mapping[str, float]) -> str:
    """The highest-scoring category; exact ties go to the first in priority order.

    Args:
        logprobs: a score for each of :data:`sp2dpo.core.schemas.CATEGORIES`.

    Returns:
        The winning category name.

    >>> pick_category({c: 0.0 for c in CATEGORIES})
    'Safety'
    """
    missing = [name for name in CATEGORIES if name not in logprobs]
    if missing:
        raise ValueError(f"no score for categories {missing}; expected all of {list(CATEGORIES)}")
    best = CATEGORIES[0]
    for name in CATEGORIES[1:]:
        if logprobs[name] > logprobs[best]:
            best = name
    return best


def grid_probabilities(logprobs: Sequence[float]) -> tuple[float, ...]:
    """Softmax of the grid log-probs: the model's distribution restricted to the grid.

    >>> grid_probabilities([0.0, 0.0])
    (0.5, 0.5)
    """
    if not logprobs or not all(math.isfinite(x) for x in logprobs):
        raise ValueError(f"grid log-probs must be finite and non-empty, got {list(logprobs)}")
    top = max(logprobs)
    weights = [math.exp(x - top) for x in logprobs]
    total = sum(weights)
    return tuple(w / total for w in weights)


def grid_mean(
    probs: Sequence[float], grid: Sequence[float] = GRID, decimals: int = DECIMALS
) -> float:
    """Probability-weighted mean of the grid, clipped to [0, 1] and rounded.

    >>> grid_mean([0.5] + [0.0] * 9 + [0.5])
    0.5
    """
    if len(probs) != len(grid):
        raise ValueError(f"{len(probs)} probabilities for a grid of {len(grid)} values")
    value = sum(p * v for p, v in zip(probs, grid, strict=True))
    return round(min(max(value, 0.0), 1.0), decimals)


def format_answer(category: str, magnitude: float, confidence: float) -> str:
    """The JSON answer, in the exact layout whose prefixes the scorer writes into the context.

    >>> format_answer("Style", 0.5, 1.0)
    '{"semantic_gap_category": "Style", "semantic_gap_magnitude": 0.5, "semantic_gap_confidence": 1.0}'
    """
    return json.dumps(
        {CATEGORY_KEY: category, MAGNITUDE_KEY: float(magnitude), CONFIDENCE_KEY: float(confidence)}
    )
