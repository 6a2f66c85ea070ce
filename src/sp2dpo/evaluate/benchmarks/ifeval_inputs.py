"""The IFEval prompts and responses files, read and validated (file, line and field in every
error, a key given twice in one line included); the seeded prompt subset.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.errors import UserError
from sp2dpo.core.jsonio import iter_jsonl
from sp2dpo.core.sampling import seeded_items
from sp2dpo.evaluate.benchmarks.ifeval_checkers import (
    build_checker,
    deterministic,
    registry,
    seed_for,
)

log = logging.getLogger(__name__)

#: Default location of the official prompts (tracked by ``evalsets.dvc``).
DEFAULT_INPUT = Path("data/evalsets/ifeval/input_data.jsonl.gz")
_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


class IFEvalError(UserError, ValueError):
    """Expected IFEval failure (bad input file, missing response, missing Punkt data)."""


class IFEvalInputError(IFEvalError):
    """A prompts or responses file that cannot be used; the message names file, line and field."""


class MissingResponseError(IFEvalError):
    """A prompt to score has no response; the message names the key(s)."""


@dataclasses.dataclass(frozen=True)
class IFEvalPrompt:
    """One official IFEval prompt.

    Attributes:
        key: The official integer key (e.g. ``1000``).
        prompt: The prompt text given to the model.
        instruction_id_list: Verifiable instruction ids, e.g. ``"punctuation:no_comma"``.
        kwargs: One dict of checker arguments per instruction id (treat as read-only).
    """

    key: int
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(FILE:LINE, record)`` for each non-blank line of a .jsonl / .jsonl.gz
    (:func:`sp2dpo.core.jsonio.iter_jsonl`, raising :class:`IFEvalInputError`; an empty
    file is left to the caller)."""
    name = path.name.lower()
    if not (name.endswith(".jsonl") or name.endswith(".jsonl.gz")):
        raise IFEvalInputError(f"{path}: expected a .jsonl or .jsonl.gz file")
    return iter_jsonl(path, error=IFEvalInputError, allow_empty=True)


def _line(where: str) -> int:
    """The line number of a ``FILE:LINE`` location."""
    return int(where.rsplit(":", 1)[1])


def _quote(text: str, width: int = 80) -> str:
    """``repr(text)``, shortened to about ``width`` characters."""
    return repr(text) if len(text) <= width else repr(text[:width]) + "..."


def _parse_prompt(row: Mapping[str, Any], where: str, supported: Mapping[str, Any]) -> IFEvalPrompt:
    for field in _FIELDS:
        if field not in row:
            raise IFEvalInputError(f"{where}: missing field '{field}'")
    key, prompt, ids, kwargs = (row[f] for f in _FIELDS)
    if isinstance(key, bool) or not isinstance(key, int):
        raise IFEvalInputError(f"{where}: field 'key' must be an integer, got {key!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise IFEvalInputError(f"{where}: field 'prompt' must be a non-empty string")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise IFEvalInputError(
            f"{where}: field 'instruction_id_list' must be a non-empty list of strings"
        )
    if not isinstance(kwargs, list) or not all(isinstance(k, dict) for k in kwargs):
        raise IFEvalInputError(f"{where}: field 'kwargs' must be a list of JSON objects")
    if len(ids) != len(kwargs):
        raise IFEvalInputError(
            f"{where}: fields 'instruction_id_list' ({len(ids)} ids) and 'kwargs' "
            f"({len(kwargs)} entries) differ in length"
        )
    for i, iid in enumerate(ids):
        if iid not in supported:
            raise IFEvalInputError(
                f"{where}: field 'instruction_id_list[{i}]': unknown instruction id {iid!r} "
                f"(if-verifiable supports {len(supported)}: {', '.join(sorted(supported))})"
            )
        try:
            seed_for(key, i, iid)
            build_checker(iid, kwargs[i], prompt)
        except Exception as exc:  # a checker rejecting its arguments (TypeError, ValueError)
            raise IFEvalInputError(
                f"{where}: field 'kwargs[{i}]': {iid} rejects {kwargs[i]!r}: {exc}"
            ) from exc
    return IFEvalPrompt(key, prompt, tuple(ids), tuple(dict(k) for k in kwargs))


#: Hash domain of the seeded prompt subset (:mod:`sp2dpo.core.sampling`).
SUBSET_DOMAIN = "ifeval-subset"


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise IFEvalInputError(f"limit must be a positive integer or None, got {limit!r}")


def subset_prompts(
    prompts: Sequence[IFEvalPrompt], limit: int | None, seed: int = 42
) -> list[IFEvalPrompt]:
    """The seeded subset of ``prompts`` that :func:`load_prompts` takes, sorted by key.

    Keeps the ``limit`` prompts with the smallest ``sha256(f"ifeval-subset:{seed}:{key}")``
    (:func:`sp2dpo.core.sampling.seeded_subset`): deterministic, independent of the order of
    ``prompts``, and a larger ``limit`` contains every smaller one. ``None`` keeps all. A caller
    that needs every prompt of the file too (:func:`load_responses`' ``known``) reads the file
    once with :func:`load_prompts` and takes the subset here.

    Raises:
        IFEvalInputError: a ``limit`` that is not a positive integer or None.
    """
    _check_limit(limit)
    return sorted(seeded_items(prompts, lambda p: p.key, limit, seed, SUBSET_DOMAIN), key=lambda p: p.key)


def load_prompts(path: str | Path, limit: int | None = None, seed: int = 42) -> list[IFEvalPrompt]:
    """Read and validate the official IFEval prompts; optionally a seeded subset.

    Args:
        path: ``input_data.jsonl`` or ``input_data.jsonl.gz`` (fields ``key``, ``prompt``,
            ``instruction_id_list``, ``kwargs``); blank lines are skipped.
        limit: Keep only this many prompts (:func:`subset_prompts`). ``None`` keeps all.
        seed: Seed of the subset.

    Returns:
        The prompts, sorted by key.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IFEvalInputError: a line is not JSON (a key given twice included), lacks a field, has a
            field of the wrong type, mismatched ``instruction_id_list`` / ``kwargs`` lengths, an
            instruction id if-verifiable does not support, kwargs its checker rejects, or a
            duplicate key; the message reads ``FILE:LINE: field 'NAME': ...``. Also for an empty
            file or a non-positive ``limit``.
    """
    path = Path(path)
    _check_limit(limit)
    supported = registry()
    prompts: list[IFEvalPrompt] = []
    first_line: dict[int, int] = {}
    with deterministic():
        for where, row in _iter_jsonl(path):
            item = _parse_prompt(row, where, supported)
            if item.key in first_line:
                raise IFEvalInputError(
                    f"{where}: field 'key': duplicate key {item.key} "
                    f"(first on line {first_line[item.key]})"
                )
            first_line[item.key] = _line(where)
            prompts.append(item)
    if not prompts:
        raise IFEvalInputError(f"{path}: no prompts")
    prompts = subset_prompts(prompts, limit, seed)
    log.debug("loaded %d IFEval prompts from %s", len(prompts), path)
    return prompts


def _response_key(row: Mapping[str, Any], where: str, known: Mapping[int, IFEvalPrompt],
                  by_text: Mapping[str, int]) -> int:
    """The key of the prompt a response line answers: its ``key`` (whose prompt text must equal
    the line's ``prompt``, when both are given) or the prompt its ``prompt`` text matches."""
    text = row.get("prompt")
    if "prompt" in row and not isinstance(text, str):
        raise IFEvalInputError(f"{where}: field 'prompt' must be a string, got {text!r:.60}")
    if "key" not in row:
        if text is None:
            raise IFEvalInputError(f"{where}: missing field 'key' (or 'prompt')")
        if text not in by_text:
            raise IFEvalInputError(f"{where}: field 'prompt': matches no prompt of the input")
        return by_text[text]
    key = row["key"]
    if isinstance(key, bool) or not isinstance(key, int):
        raise IFEvalInputError(f"{where}: field 'key' must be an integer, got {key!r}")
    if key not in known:
        raise IFEvalInputError(f"{where}: field 'key': no prompt with key {key} in the input")
    if text is not None and text != known[key].prompt:
        raise IFEvalInputError(
            f"{where}: fields 'key' and 'prompt' disagree: key {key} has prompt "
            f"{_quote(known[key].prompt)}, the line gives {_quote(text)}"
        )
    return key


def load_responses(
    path: str | Path,
    prompts: Sequence[IFEvalPrompt],
    *,
    known: Sequence[IFEvalPrompt] | None = None,
) -> dict[int, str]:
    """Read responses from a JSONL file of ``{"key" and/or "prompt", "response"}`` objects.

    A line identifies its prompt by ``key`` or, failing that, by the exact ``prompt`` text; a line
    with both must give the key's own prompt text. A response to a prompt of ``known`` that is not
    being scored (outside a ``--limit`` subset) is ignored, and the number ignored is logged once
    (INFO); a response to no prompt of ``known`` is an error.

    Args:
        path: ``.jsonl`` or ``.jsonl.gz`` file.
        prompts: The prompts being scored.
        known: Every prompt of the input file (:func:`load_prompts` without ``limit``, when
            ``prompts`` is :func:`subset_prompts` of it); default ``prompts``.

    Returns:
        Response text by prompt key, for the prompts being scored.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IFEvalInputError: bad JSON (a key given twice included), a missing or mistyped field, a
            key or prompt text of no prompt of ``known``, a key and prompt text that disagree, or
            two responses for one prompt (message ``FILE:LINE: field 'NAME': ...``).
    """
    path = Path(path)
    every = {p.key: p for p in (*(prompts if known is None else known), *prompts)}
    by_text = {p.prompt: p.key for p in every.values()}
    scored = {p.key for p in prompts}
    out: dict[int, str] = {}
    first_line: dict[int, int] = {}
    ignored = 0
    for where, row in _iter_jsonl(path):
        if "response" not in row:
            raise IFEvalInputError(f"{where}: missing field 'response'")
        if not isinstance(row["response"], str):
            raise IFEvalInputError(f"{where}: field 'response' must be a string")
        key = _response_key(row, where, every, by_text)
        if key in first_line:
            raise IFEvalInputError(
                f"{where}: field 'key': second response for key {key} "
                f"(first on line {first_line[key]})"
            )
        first_line[key] = _line(where)
        if key in scored:
            out[key] = row["response"]
        else:
            ignored += 1
    if ignored:
        log.info("%s: %d response(s) to prompts outside the scored subset ignored", path, ignored)
    return out
