"""Tests for sp2dpo.llm.parse: fences, synonyms, ranges, types -> statuses."""

from __future__ import annotations

import json

import pytest

from sp2dpo.core.schemas import CATEGORIES
from sp2dpo.llm.parse import CATEGORY_SYNONYMS, normalize_category, parse_judgement


def reply(category="Style", magnitude=0.2, confidence=0.9, **extra) -> str:
    return json.dumps({"semantic_gap_category": category, "semantic_gap_magnitude": magnitude,
                       "semantic_gap_confidence": confidence, **extra})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (reply(), ("ok", "Style", 0.2, 0.9)),
        ("```json\n" + reply() + "\n```", ("ok", "Style", 0.2, 0.9)),
        ("```\n" + reply() + "```", ("ok", "Style", 0.2, 0.9)),
        ("Sure! Here is my judgement: " + reply() + " Hope it helps {not json}", ("ok", "Style", 0.2, 0.9)),
        (reply("Harmlessness"), ("ok", "Safety", 0.2, 0.9)),
        (reply("truthfulness"), ("ok", "Factuality", 0.2, 0.9)),
        (reply("Instruction following"), ("ok", "Instruction", 0.2, 0.9)),
        (reply("Instruction-Following"), ("ok", "Instruction", 0.2, 0.9)),
        (reply("HELPFULNESS"), ("ok", "Helpfulness", 0.2, 0.9)),
        (reply("Safety / Harmlessness"), ("ok", "Safety", 0.2, 0.9)),
        (reply(magnitude="0.40", confidence=1), ("ok", "Style", 0.4, 1.0)),
        (reply(magnitude=0, confidence=0.0), ("ok", "Style", 0.0, 0.0)),
        (reply(beta=0.29), ("ok", "Style", 0.2, 0.9)),  # a teacher's beta is ignored
        ('{"category": "Reasoning", "magnitude": 0.5, "confidence": 0.5}', ("ok", "Reasoning", 0.5, 0.5)),
        ('{"Semantic_Gap_Category": "Style", "SEMANTIC_GAP_MAGNITUDE": 0.1, "semantic_gap_confidence": 0.3}',
         ("ok", "Style", 0.1, 0.3)),
        ('{"note": 1} then ' + reply("Safety"), ("ok", "Safety", 0.2, 0.9)),
    ],
)
def test_ok_replies_are_normalised(text, expected):
    got = parse_judgement(text)
    assert (got.status, got.category, got.magnitude, got.confidence) == expected


@pytest.mark.parametrize(
    ("text", "status", "message"),
    [
        (None, "invalid_json", "empty"),
        ("   ", "invalid_json", "empty"),
        ("The winner is better.", "invalid_json", "no JSON object"),
        ('{"semantic_gap_category": "Style", "semantic_gap_magnitude": 0.2', "invalid_json", "no JSON object"),
        ('{"semantic_gap_category": "Style", "semantic_gap_magnitude": 0.2}', "invalid_json", "missing"),
        (reply(magnitude="high"), "invalid_json", "not a number"),
        (reply(magnitude=True), "invalid_json", "not a number"),
        (reply(confidence=[0.5]), "invalid_json", "not a number"),
        (reply(category=3), "invalid_json", "not a string"),
        (reply(magnitude=1.2), "out_of_range", "outside [0, 1]"),
        (reply(confidence=-0.1), "out_of_range", "outside [0, 1]"),
        (reply(magnitude=7), "out_of_range", "outside [0, 1]"),
        ('{"semantic_gap_category": "Style", "semantic_gap_magnitude": NaN, "semantic_gap_confidence": 0.5}',
         "out_of_range", "outside"),
        (reply("Creativity"), "out_of_range", "unknown semantic_gap_category"),
        (reply("Safety and Style"), "out_of_range", "unknown semantic_gap_category"),
        (reply("Safety, Style"), "out_of_range", "unknown semantic_gap_category"),
    ],
)
def test_bad_replies_get_a_status_and_reason(text, status, message):
    got = parse_judgement(text)
    assert got.status == status and message in got.error
    assert got.category is None and got.magnitude is None and got.confidence is None


def test_every_category_and_synonym_maps_into_the_taxonomy():
    assert set(CATEGORY_SYNONYMS.values()) == set(CATEGORIES)
    for name in CATEGORIES:
        assert normalize_category(name) == name
        assert normalize_category(f"  {name.upper()} ") == name
