"""Reading the official benchmark files (Arena-Hard-Auto, MT-Bench, IFEval, preference pairs):
JSON Lines, plain or gzipped.

The benchmark modules (:mod:`.arenahard`, :mod:`.mtbench`, :mod:`.ifeval_inputs`,
:mod:`sp2dpo.evaluate.prefpairs`) read files written by other projects' scripts, so every record is checked on
the way in and every failure names the file, the line and the field (``FILE:LINE: field 'NAME':
...``) instead of surfacing later as a ``KeyError`` deep in a computation. A key given twice in one
line is refused (:mod:`sp2dpo.core.jsonio`), not resolved as "last wins". The failures are
:class:`BenchmarkInputError` (or the reader's own subclass of
:class:`~sp2dpo.core.errors.UserError`), so the ``sp2dpo`` command prints them as one
``sp2dpo: error: ...`` line (exit status 2).

A reader that stops before the end of a gzip file (a ``limit``) checks the rest of the compressed
stream with :func:`check_gzip_intact`, so a file cut short is noticed whatever the limit.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sp2dpo.core import jsonio
from sp2dpo.core.errors import UserError
from sp2dpo.core.jsonio import is_gzip

__all__ = [
    "BenchmarkInputError",
    "check_gzip_intact",
    "field",
    "is_gzip",
    "iter_jsonl",
    "question_id",
    "text_field",
]

#: Bytes decompressed at a time by :func:`check_gzip_intact`.
_CHUNK = 1 << 20


class BenchmarkInputError(UserError, ValueError):
    """A benchmark file that cannot be used; the message names file, line and field."""


def iter_jsonl(
    path: str | Path,
    *,
    error: type[UserError] = BenchmarkInputError,
    allow_empty: bool = False,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """:func:`sp2dpo.core.jsonio.iter_jsonl` raising :class:`BenchmarkInputError` (or ``error``):
    ``(FILE:LINE, record)`` for every non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file."""
    return jsonio.iter_jsonl(path, error=error, allow_empty=allow_empty)


def check_gzip_intact(path: str | Path, error: type[UserError] = BenchmarkInputError) -> None:
    """Decompress a gzip file to its end (in chunks, nothing parsed) to prove it is whole.

    A reader that stops early (a ``limit``) never reaches the end-of-stream marker and the CRC,
    so a file cut short or damaged after the part read would pass unnoticed without this check.

    Raises:
        BenchmarkInputError: (or ``error``) ``FILE: cannot read: ...``, as :func:`iter_jsonl`
            says it of a corrupt gzip.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(_CHUNK):
                pass
    except jsonio.READ_ERRORS as exc:
        raise error(jsonio.cannot_read(path, exc)) from None


def field(record: Mapping[str, Any], name: str, where: str, types: type | tuple[type, ...]) -> Any:
    """``record[name]``, checked to be present and of ``types`` (``bool`` never passes as ``int``).

    Raises:
        BenchmarkInputError: ``FILE:LINE: missing field 'NAME'`` or ``... field 'NAME' must be``.
    """
    if name not in record:
        raise BenchmarkInputError(f"{where}: missing field '{name}'")
    value = record[name]
    allowed = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
        names = " or ".join(_type_name(t) for t in allowed)
        raise BenchmarkInputError(
            f"{where}: field '{name}' must be {names}, got {type(value).__name__} {value!r:.60}"
        )
    return value


def text_field(record: Mapping[str, Any], name: str, where: str) -> str:
    """A string field (may be empty: an empty answer is data, not a format error)."""
    return field(record, name, where, str)


def question_id(record: Mapping[str, Any], where: str) -> str | int:
    """The ``question_id`` field: a string (Arena-Hard's 32-hex ids) or an integer (MT-Bench)."""
    return field(record, "question_id", where, (str, int))


def _type_name(t: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", list: "a list",
            dict: "a JSON object", type(None): "null"}.get(t, t.__name__)
