"""Reading the official benchmark files (Arena-Hard-Auto, MT-Bench): JSON Lines, plain or gzipped.

The benchmark modules (:mod:`.arenahard`, :mod:`.mtbench`) read files written by other projects'
scripts, so every record is checked on the way in and every failure names the file, the line and
the field (``FILE:LINE: field 'NAME': ...``) instead of surfacing later as a ``KeyError`` deep in a
computation. The failures are :class:`BenchmarkInputError`, a :class:`~sp2dpo.core.errors.UserError`,
so the ``sp2dpo`` command prints them as one ``sp2dpo: error: ...`` line (exit status 2).
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sp2dpo.core.errors import UserError

__all__ = ["BenchmarkInputError", "field", "iter_jsonl", "question_id", "text_field"]


class BenchmarkInputError(UserError, ValueError):
    """A benchmark file that cannot be used; the message names file, line and field."""


def iter_jsonl(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` for every non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file.

    ``where`` is ``"FILE:LINE"``, the prefix of every error message about that record. A gzip file
    is recognised by its ``.gz`` suffix, so the official files and our compressed copies of them
    read the same way.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        BenchmarkInputError: a line is not JSON or not a JSON object, the file cannot be decoded
            (corrupt gzip, not UTF-8), or it holds no record at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    count = 0
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BenchmarkInputError(f"{where}: invalid JSON: {exc}") from None
                if not isinstance(record, dict):
                    raise BenchmarkInputError(
                        f"{where}: expected a JSON object, got {type(record).__name__}"
                    )
                count += 1
                yield where, record
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise BenchmarkInputError(f"{path}: cannot read: {exc}") from None
    if count == 0:
        raise BenchmarkInputError(f"{path}: no records")


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
