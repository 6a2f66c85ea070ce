"""The IFEval prompts and responses files, read and validated (file, line and field in every
error); the seeded prompt subset.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.errors import UserError
from sp2dpo.core.sampling import seeded_subset
from sp2dpo.evaluate.ifeval_checkers import build_checker, deterministic, registry, seed_for

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


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_json)`` for each non-blank line of a .jsonl / .jsonl.gz."""
    name = path.name.lower()
    if not (name.endswith(".jsonl") or name.endswith(".jsonl.gz")):
        raise IFEvalInputError(f"{path}: expected a .jsonl or .jsonl.gz file")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise IFEvalInputError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise IFEvalInputError(f"{path}: cannot read: {exc}") from exc


def _parse_prompt(row: Any, where: str, supported: Mapping[str, Any]) -> IFEvalPrompt:
    if not isinstance(row, dict):
        raise IFEvalInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
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


def load_prompts(path: str | Path, limit: int | None = None, seed: int = 42) -> list[IFEvalPrompt]:
    """Read and validate the official IFEval prompts; optionally a seeded subset.

    Args:
        path: ``input_data.jsonl`` or ``input_data.jsonl.gz`` (fields ``key``, ``prompt``,
            ``instruction_id_list``, ``kwargs``); blank lines are skipped.
        limit: Keep only this many prompts: those with the smallest
            ``sha256(f"ifeval-subset:{seed}:{key}")`` (:func:`sp2dpo.core.sampling.seeded_subset`), so
            the subset is deterministic and a larger ``limit`` contains every smaller one.
            ``None`` keeps all.
        seed: Seed of the subset.

    Returns:
        The prompts, sorted by key.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IFEvalInputError: a line is not JSON, lacks a field, has a field of the wrong type,
            mismatched ``instruction_id_list`` / ``kwargs`` lengths, an instruction id
            if-verifiable does not support, kwargs its checker rejects, or a duplicate key;
            the message reads ``FILE:LINE: field 'NAME': ...``. Also for an empty file or a
            non-positive ``limit``.
    """
    path = Path(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise IFEvalInputError(f"limit must be a positive integer or None, got {limit!r}")
    supported = registry()
    prompts: list[IFEvalPrompt] = []
    first_line: dict[int, int] = {}
    with deterministic():
        for lineno, row in _iter_jsonl(path):
            where = f"{path}:{lineno}"
            item = _parse_prompt(row, where, supported)
            if item.key in first_line:
                raise IFEvalInputError(
                    f"{where}: field 'key': duplicate key {item.key} "
                    f"(first on line {first_line[item.key]})"
                )
            first_line[item.key] = lineno
            prompts.append(item)
    if not prompts:
        raise IFEvalInputError(f"{path}: no prompts")
    keep = seeded_subset([p.key for p in prompts], limit, seed, SUBSET_DOMAIN)
    prompts = [prompts[i] for i in keep]
    prompts.sort(key=lambda p: p.key)
    log.debug("loaded %d IFEval prompts from %s", len(prompts), path)
    return prompts


def load_responses(path: str | Path, prompts: Sequence[IFEvalPrompt]) -> dict[int, str]:
    """Read responses from a JSONL file of ``{"key" or "prompt", "response"}`` objects.

    A line identifies its prompt by ``key`` or, failing that, by the exact ``prompt`` text.
    Responses to prompts not in ``prompts`` are ignored (scoring a subset).

    Args:
        path: ``.jsonl`` or ``.jsonl.gz`` file.
        prompts: The prompts being scored (to resolve ``prompt`` texts to keys).

    Returns:
        Response text by prompt key.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IFEvalInputError: bad JSON, missing or mistyped field, an unknown prompt text, or two
            responses for one prompt (message ``FILE:LINE: field 'NAME': ...``).
    """
    path = Path(path)
    by_text = {p.prompt: p.key for p in prompts}
    out: dict[int, str] = {}
    first_line: dict[int, int] = {}
    for lineno, row in _iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise IFEvalInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if "response" not in row:
            raise IFEvalInputError(f"{where}: missing field 'response'")
        if not isinstance(row["response"], str):
            raise IFEvalInputError(f"{where}: field 'response' must be a string")
        if "key" in row:
            key = row["key"]
            if isinstance(key, bool) or not isinstance(key, int):
                raise IFEvalInputError(f"{where}: field 'key' must be an integer, got {key!r}")
        elif "prompt" in row:
            if row["prompt"] not in by_text:
                log.debug("%s: prompt not among the scored prompts; ignored", where)
                continue
            key = by_text[row["prompt"]]
        else:
            raise IFEvalInputError(f"{where}: missing field 'key' (or 'prompt')")
        if key in first_line:
            raise IFEvalInputError(
                f"{where}: field 'key': second response for key {key} "
                f"(first on line {first_line[key]})"
            )
        first_line[key] = lineno
        out[key] = row["response"]
    return out
