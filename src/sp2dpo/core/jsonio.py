"""Strict JSON for input files: a key given twice in one object is an error, not "last wins".

``json.loads`` keeps the last of two equal keys silently, so a hand-edited or concatenated file
could change a score without a word. Every reader of user-supplied JSON goes through
:func:`loads` (or :func:`load`), which refuses the duplicate and names the key; the caller adds
the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO, Any

__all__ = ["DuplicateKeyError", "load", "loads"]


class DuplicateKeyError(json.JSONDecodeError):
    """A JSON object with the same key twice (a ``JSONDecodeError``, so callers that report
    invalid JSON report this too)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}", "", 0)
        self.key = key

    def __str__(self) -> str:
        return self.msg

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.key,)


def _unique(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses a duplicate key in any object (:class:`DuplicateKeyError`)."""
    return json.loads(text, object_pairs_hook=_unique)


def load(fh: IO[str]) -> Any:
    """``json.load`` that refuses a duplicate key in any object (:class:`DuplicateKeyError`)."""
    return json.load(fh, object_pairs_hook=_unique)
