"""Held-out preference pairs for :mod:`sp2dpo.evaluate.prefeval`: one reader for the canonical
pairs table and the Hub layout of ``HuggingFaceH4/ultrafeedback_binarized``.

Accepted: a canonical table (``.parquet``, ``.csv``, ``.jsonl``, ``.jsonl.gz``) with at least
``prompt, chosen, rejected`` (``prompt_id`` optional: sha256 of the prompt, the Hub's rule), or
Hub rows whose ``chosen`` / ``rejected`` are message lists (the reply is the last assistant
message). A pair whose two replies are identical carries no preference and is dropped; a pair
with an empty reply is dropped as the ``filter`` stage drops it from training data; both are
counted. Bad rows stop with the file, row and field. A gzip file read only in part (``limit``)
is still checked to its end (:func:`~sp2dpo.evaluate.benchmarks.evalfiles.check_gzip_intact`): a file cut
short is an error whatever the limit.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sp2dpo.core.artifacts import check_input
from sp2dpo.evaluate.benchmarks.evalfiles import (
    BenchmarkInputError,
    check_gzip_intact,
    is_gzip,
    iter_jsonl,
)

_TABLE_SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet", ".csv")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One held-out preference pair, as texts."""

    prompt_id: str
    prompt: str
    chosen: str
    rejected: str


@dataclasses.dataclass(frozen=True)
class PairsRead:
    """The usable pairs of a file and what was left out of the rows read.

    ``n_rows`` counts the rows read (reading stops once ``limit`` usable pairs are found); a row
    is counted once, under identical replies before empty ones.
    """

    pairs: list[Pair]
    n_rows: int
    n_dropped_identical: int
    n_dropped_empty: int


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in _TABLE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise BenchmarkInputError(
        f"{path}: unknown pairs file type; expected one of {', '.join(_TABLE_SUFFIXES)}"
    )


def _iter_records(path: Path) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(where, record)`` for every row; ``where`` names the file and the 1-based row (and the
    line of a JSON Lines file)."""
    suffix = _suffix(path)
    check_input(path)
    if suffix.startswith(".jsonl"):
        for row, (where, record) in enumerate(iter_jsonl(path), start=1):
            line = where.rsplit(":", 1)[1]
            yield f"{path} row {row} (line {line})", record
        return
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            records = pq.read_table(path).to_pylist()
        except OSError as exc:
            raise BenchmarkInputError(f"{path}: cannot read: {exc}") from None
    else:
        import pandas as pd

        try:  # keep "" as "" (an empty reply), not NaN
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as exc:
            raise BenchmarkInputError(f"{path}: cannot read: {exc}") from None
        records = frame.to_dict("records")
    if not records:
        raise BenchmarkInputError(f"{path}: no records")
    for row, record in enumerate(records, start=1):
        yield f"{path} row {row}", record


def _text(record: Mapping[str, Any], name: str, where: str) -> str:
    """A string field, or the last assistant message of a message list (the Hub layout)."""
    if name not in record or record[name] is None:
        raise BenchmarkInputError(f"{where}: missing field '{name}'")
    value = record[name]
    if isinstance(value, str):
        return value
    if name != "prompt" and isinstance(value, list):
        replies = []
        for i, message in enumerate(value):
            if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
                raise BenchmarkInputError(
                    f"{where}: field '{name}' message {i} must be an object with a string 'content'"
                )
            if message.get("role") == "assistant":
                replies.append(message["content"])
        if not replies:
            raise BenchmarkInputError(f"{where}: field '{name}' has no assistant message")
        return replies[-1]
    kinds = "a string" if name == "prompt" else "a string or a list of chat messages"
    raise BenchmarkInputError(
        f"{where}: field '{name}' must be {kinds}, got {type(value).__name__} {value!r:.60}"
    )


def _prompt_id(record: Mapping[str, Any], prompt: str, where: str) -> str:
    """The row's ``prompt_id``; without one, sha256 of the prompt (the Hub's convention)."""
    value = record.get("prompt_id")
    if value is None or value == "":
        return hashlib.sha256(prompt.encode("utf-8")).hexdigest()
    if not isinstance(value, str):
        raise BenchmarkInputError(
            f"{where}: field 'prompt_id' must be a string, got {type(value).__name__}"
        )
    return value


def read_pairs(path: str | Path, limit: int | None = None) -> PairsRead:
    """The usable pairs of a pairs file, in file order, the first ``limit`` of them.

    Raises:
        FileNotFoundError: no such file.
        BenchmarkInputError: an unknown file type, an unreadable file (a gzip file cut short or
            corrupt after the rows read included), or a row without a usable
            ``prompt``/``chosen``/``rejected`` (the message names file, row and field); no usable
            pair at all.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of pairs, got {limit}")
    path = Path(path)
    pairs: list[Pair] = []
    n_rows = identical = empty = 0
    for where, record in _iter_records(path):
        n_rows += 1
        prompt = _text(record, "prompt", where)
        chosen = _text(record, "chosen", where)
        rejected = _text(record, "rejected", where)
        prompt_id = _prompt_id(record, prompt, where)
        if chosen == rejected:
            identical += 1
        elif not chosen.strip() or not rejected.strip():
            empty += 1
        else:
            pairs.append(Pair(prompt_id, prompt, chosen, rejected))
            if limit is not None and len(pairs) >= limit:
                if is_gzip(path):
                    check_gzip_intact(path)
                break
    if not pairs:
        raise BenchmarkInputError(
            f"{path}: no usable pair ({identical} with identical replies, {empty} with an empty "
            f"reply, of {n_rows} rows)"
        )
    return PairsRead(pairs, n_rows, identical, empty)
