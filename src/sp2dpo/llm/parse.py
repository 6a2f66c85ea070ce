"""Parsing and normalising a teacher's reply into the three semantic-gap fields.

Both backends (HTTP and in-process) feed their reply text through :func:`parse_judgement`, so
they share statuses:

- ``ok``: a JSON object with a known category and both numbers in [0, 1];
- ``invalid_json``: no JSON object, a missing key, or a value of the wrong type (a non-numeric
  magnitude, a boolean, a list);
- ``out_of_range``: a number outside [0, 1] (or NaN/inf), or a category outside the taxonomy.

Normalisation: code fences and surrounding prose are stripped (the first JSON object that has
the expected keys wins), keys are matched case-insensitively (``category`` alone also works),
category synonyms and case are mapped (``Harmlessness`` -> ``Safety``), numeric strings are
accepted. Any other key, a ``beta`` included, is ignored: beta is never taken from a teacher.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from sp2dpo.core.schemas import CATEGORIES

KEYS = ("semantic_gap_category", "semantic_gap_magnitude", "semantic_gap_confidence")

#: Category names and synonyms (lower case, words separated by one space) -> taxonomy name.
CATEGORY_SYNONYMS: dict[str, str] = {
    **{c.lower(): c for c in CATEGORIES},
    "harmlessness": "Safety",
    "harmless": "Safety",
    "harm": "Safety",
    "harmfulness": "Safety",
    "safe": "Safety",
    "truthfulness": "Factuality",
    "truthful": "Factuality",
    "truth": "Factuality",
    "honesty": "Factuality",
    "factual": "Factuality",
    "factual accuracy": "Factuality",
    "factual correctness": "Factuality",
    "accuracy": "Factuality",
    "correctness": "Factuality",
    "hallucination": "Factuality",
    "instruction following": "Instruction",
    "instructions": "Instruction",
    "instruction adherence": "Instruction",
    "instruction compliance": "Instruction",
    "constraint following": "Instruction",
    "constraints": "Instruction",
    "constraint": "Instruction",
    "reasoning soundness": "Reasoning",
    "reasoning quality": "Reasoning",
    "logic": "Reasoning",
    "logical reasoning": "Reasoning",
    "coherence": "Reasoning",
    "helpful": "Helpfulness",
    "utility": "Helpfulness",
    "usefulness": "Helpfulness",
    "useful": "Helpfulness",
    "completeness": "Helpfulness",
    "relevance": "Helpfulness",
    "tone": "Style",
    "stylistic": "Style",
    "verbosity": "Style",
    "presentation": "Style",
    "style tone": "Style",
    "formatting": "Style",
    "fluency": "Style",
}

_FENCE = re.compile(r"```[A-Za-z0-9_-]*")


@dataclasses.dataclass(frozen=True)
class Judgement:
    """A parsed reply: ``status`` plus the fields (set only when ``status == "ok"``)."""

    status: str
    category: str | None = None
    magnitude: float | None = None
    confidence: float | None = None
    error: str | None = None


def normalize_category(value: str) -> str | None:
    """The taxonomy name for a category string, or None when it maps to no single category.

    >>> normalize_category("Instruction-Following")
    'Instruction'
    >>> normalize_category(" harmlessness ")
    'Safety'
    >>> normalize_category("Factuality / Truthfulness")
    'Factuality'
    >>> normalize_category("Safety and Style") is None
    True
    """
    key = _words(value)
    if key in CATEGORY_SYNONYMS:
        return CATEGORY_SYNONYMS[key]
    # "Safety / Harmlessness", "Factuality (truthfulness)": accept when every part agrees.
    parts = [_words(p) for p in re.split(r"[/|,;()]+", value) if _words(p)]
    mapped = {CATEGORY_SYNONYMS.get(p) for p in parts}
    if len(parts) > 1 and len(mapped) == 1 and None not in mapped:
        return mapped.pop()
    return None


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def find_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` that has the judgement keys (else the first object).

    Code fences are removed first; prose before and after the object is ignored.
    """
    cleaned = _FENCE.sub("", text)
    decoder = json.JSONDecoder()
    first: dict[str, Any] | None = None
    for match in re.finditer(r"\{", cleaned):
        try:
            obj, _ = decoder.raw_decode(cleaned, match.start())
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        if _lookup(obj, "category") is not None:
            return obj
        first = first if first is not None else obj
    return first


def _lookup(obj: dict[str, Any], short: str) -> Any:
    """Value of ``semantic_gap_<short>`` (or ``<short>``), keys compared case-insensitively."""
    wanted = {f"semantic_gap_{short}", short}
    for key, value in obj.items():
        if isinstance(key, str) and _words(key).replace(" ", "_") in wanted:
            return value
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def parse_judgement(text: str | None) -> Judgement:
    """Parse and normalise one reply.

    >>> parse_judgement('```json\\n{"semantic_gap_category": "Truthfulness", '
    ...                 '"semantic_gap_magnitude": 0.8, "semantic_gap_confidence": "0.6"}\\n```')
    Judgement(status='ok', category='Factuality', magnitude=0.8, confidence=0.6, error=None)
    >>> parse_judgement('{"semantic_gap_category": "Style", "semantic_gap_magnitude": 1.5, '
    ...                 '"semantic_gap_confidence": 0.2}').status
    'out_of_range'
    """
    if text is None or not text.strip():
        return Judgement("invalid_json", error="empty reply")
    obj = find_object(text)
    if obj is None:
        return Judgement("invalid_json", error="no JSON object in the reply")
    raw = {short: _lookup(obj, short) for short in ("category", "magnitude", "confidence")}
    missing = [f"semantic_gap_{k}" for k, v in raw.items() if v is None]
    if missing:
        return Judgement("invalid_json", error=f"missing key(s) {', '.join(missing)}")
    if not isinstance(raw["category"], str):
        return Judgement("invalid_json", error="semantic_gap_category is not a string")
    numbers = {}
    for short in ("magnitude", "confidence"):
        number = _number(raw[short])
        if number is None:
            return Judgement("invalid_json", error=f"semantic_gap_{short} is not a number")
        if not math.isfinite(number) or not 0.0 <= number <= 1.0:
            return Judgement("out_of_range", error=f"semantic_gap_{short}={number!r} outside [0, 1]")
        numbers[short] = number
    category = normalize_category(raw["category"])
    if category is None:
        shown = raw["category"][:40]
        return Judgement("out_of_range", error=f"unknown semantic_gap_category {shown!r}")
    return Judgement("ok", category, numbers["magnitude"], numbers["confidence"])
