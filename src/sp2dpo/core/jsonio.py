"""Strict JSON for input files: a key given twice in one object is an error, not "last wins".

``json.loads`` keeps the last of two equal keys silently, so a hand-edited or concatenated file
could change a score without a word. Every reader of user-supplied JSON goes through
:func:`loads` (or :func:`load`), which refuses the duplicate and names the key; the caller adds
the file and line.

JSON Lines files, plain or gzipped (by the ``.gz`` suffix), are read by :func:`iter_jsonl`, the
one reader of every stage: each failure is one line naming the file and the line (``FILE:LINE:
invalid JSON: ...``), raised as the caller's own :class:`~sp2dpo.core.errors.UserError` subclass.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from sp2dpo.core.artifacts import check_input
from sp2dpo.core.errors import UserError

__all__ = [
    "READ_ERRORS",
    "DuplicateKeyError",
    "JsonlError",
    "cannot_read",
    "is_gzip",
    "iter_jsonl",
    "load",
    "loads",
    "open_text",
]

#: Errors of a file that cannot be read or decoded (corrupt or truncated gzip, not UTF-8, OS).
READ_ERRORS = (OSError, EOFError, UnicodeDecodeError, zlib.error)


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


class JsonlError(UserError, ValueError):
    """A JSON Lines file that cannot be used; the message names the file and the line."""


def is_gzip(path: str | Path) -> bool:
    """Whether ``path`` is read as gzip: by its ``.gz`` suffix (any case)."""
    return Path(path).name.lower().endswith(".gz")


def open_text(path: str | Path) -> IO[str]:
    """``path`` opened for reading as UTF-8 text, decompressed when :func:`is_gzip`."""
    if is_gzip(path):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def cannot_read(path: str | Path, exc: BaseException, *, after_line: int | None = None) -> str:
    """The one-line message of a :data:`READ_ERRORS` failure: ``FILE: cannot read: ...``, saying
    which of a cut-short or corrupt gzip file, bytes that are not UTF-8, or an OS error it was
    (and, for the first two, after which line, when the caller reads line by line)."""
    after = "" if after_line is None else f" after line {after_line}"
    if isinstance(exc, UnicodeDecodeError):
        reason = f"not UTF-8 text{after} ({exc.reason})"
    elif isinstance(exc, EOFError | zlib.error | gzip.BadGzipFile):
        reason = f"truncated or corrupt gzip data{after} ({exc}); re-create or re-download the file"
    else:
        reason = str(exc)
    return f"{path}: cannot read: {reason}"


def iter_jsonl(
    path: str | Path,
    *,
    error: type[UserError] = JsonlError,
    allow_empty: bool = False,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(where, record)`` for every non-blank line of a ``.jsonl`` or ``.jsonl.gz`` file.

    ``where`` is ``"FILE:LINE"`` (1-based, as editors count), the prefix of every error message
    about that record. A gzip file is recognised by its ``.gz`` suffix (:func:`is_gzip`).

    Args:
        path: the file.
        error: the class of the errors raised (the caller's own :class:`UserError` subclass).
        allow_empty: a file without any record is not an error (the caller says what is missing).

    Raises:
        FileNotFoundError: ``path`` does not exist (an ``InputPathError`` if it is a folder).
        JsonlError: (or ``error``) a line is not JSON (``FILE:LINE: invalid JSON: ...``, a key
            given twice included: ``duplicate key 'NAME'``) or not a JSON object, the file
            cannot be read or decoded (:func:`cannot_read`), or it holds no record at all.
    """
    path = check_input(path)
    count = lineno = 0
    try:
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = loads(line)
                except json.JSONDecodeError as exc:
                    raise error(f"{where}: invalid JSON: {exc}") from None
                if not isinstance(record, dict):
                    raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
                count += 1
                yield where, record
    except READ_ERRORS as exc:
        raise error(cannot_read(path, exc, after_line=lineno)) from None
    if count == 0 and not allow_empty:
        raise error(f"{path}: no records")

