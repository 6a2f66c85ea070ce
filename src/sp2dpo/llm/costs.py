"""Token and price arithmetic shared by every caller of a paid model (teachers, judges, answer
servers, the ``--estimate`` of a stage): one characters-per-token estimate, one price formula.

Prices are per million tokens (``price_in_per_m``, ``price_out_per_m`` of a teacher or judge
config); a token count that is unknown (``None``) costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

from sp2dpo.core.config import CHARS_PER_TOKEN

__all__ = ["CHARS_PER_TOKEN", "Priced", "estimate_tokens", "price_usd"]


class Priced(Protocol):
    """A model config with prices per million tokens (a teacher's or the judge's)."""

    @property
    def price_in_per_m(self) -> float: ...

    @property
    def price_out_per_m(self) -> float: ...


def estimate_tokens(
    text_or_messages: str | Sequence[Mapping[str, str]] | int,
    chars_per_token: float = CHARS_PER_TOKEN,
    *,
    round_up: bool = False,
) -> int:
    """Tokens of a text, of chat messages (their contents) or of a character count, estimated as
    characters / ``chars_per_token``.

    Rounded down, or up with ``round_up`` (an upper bound of a whole batch's input).

    >>> estimate_tokens("abcdefghij"), estimate_tokens("abcdefghij", round_up=True)
    (2, 3)
    >>> estimate_tokens([{"role": "system", "content": "abcd"}, {"role": "user", "content": "efgh"}])
    2
    >>> estimate_tokens(9, 3.0)
    3
    """
    if isinstance(text_or_messages, int):
        chars = text_or_messages
    elif isinstance(text_or_messages, str):
        chars = len(text_or_messages)
    else:
        chars = sum(len(m["content"]) for m in text_or_messages)
    tokens = chars / chars_per_token
    return math.ceil(tokens) if round_up else int(tokens)


def price_usd(cfg: Priced, prompt_tokens: int | None, completion_tokens: int | None) -> float:
    """USD cost of the given token counts at ``cfg``'s prices (an unknown count counts as 0).

    >>> from types import SimpleNamespace
    >>> price_usd(SimpleNamespace(price_in_per_m=2.0, price_out_per_m=8.0), 1000, None)
    0.002
    """
    return (
        (prompt_tokens or 0) * cfg.price_in_per_m + (completion_tokens or 0) * cfg.price_out_per_m
    ) / 1e6
