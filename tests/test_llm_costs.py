"""The one characters-per-token estimate and the one price formula (`sp2dpo.llm.costs`)."""

from __future__ import annotations

import doctest
import math
import random

import pytest

from sp2dpo.core import config
from sp2dpo.core.config import AnnotateConfig, TeacherConfig
from sp2dpo.llm import costs


def test_one_chars_per_token_default_for_the_config_and_the_llm_layer():
    assert costs.CHARS_PER_TOKEN is config.CHARS_PER_TOKEN == 4.0
    assert AnnotateConfig().chars_per_token == costs.CHARS_PER_TOKEN


@pytest.mark.parametrize("cpt", [4.0, 3.5, 1.0])
def test_estimates_round_as_the_formulas_they_replace(cpt):
    rng = random.Random(0)
    for _ in range(200):
        contents = ["x" * rng.randrange(0, 50) for _ in range(rng.randrange(1, 4))]
        messages = [{"role": "user", "content": c} for c in contents]
        chars = sum(map(len, contents))
        assert costs.estimate_tokens(messages, cpt) == int(chars / cpt)
        assert costs.estimate_tokens("".join(contents), cpt) == int(chars / cpt)
        assert costs.estimate_tokens(chars, cpt, round_up=True) == math.ceil(chars / cpt)
    assert costs.estimate_tokens(8) == 2 and costs.estimate_tokens(8, round_up=True) == 2
    assert costs.estimate_tokens(9, round_up=True) == 3


def test_price_is_the_per_million_formula_bit_for_bit_with_unknown_counts_free():
    teacher = TeacherConfig(id="t", backend="local", model="m", price_in_per_m=2.5, price_out_per_m=10.3)
    rng = random.Random(1)
    for _ in range(200):
        p, c = rng.randrange(0, 10**7), rng.randrange(0, 10**5)
        assert costs.price_usd(teacher, p, c) == (p * 2.5 + c * 10.3) / 1e6
    assert costs.price_usd(teacher, None, None) == 0.0
    assert costs.price_usd(teacher, 1000, None) == 1000 * 2.5 / 1e6


def test_doctests():
    assert doctest.testmod(costs).failed == 0
