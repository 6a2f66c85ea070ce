"""IFEval's checkers, run offline and deterministically (see :mod:`sp2dpo.evaluate.benchmarks.ifeval`):
Punkt routed to the packaged English model, ``langdetect`` and ``random`` seeded, the checker
registry of ``if-verifiable`` with ``keywords:letter_frequency`` counting the given character as
Google's current checker does.
"""

from __future__ import annotations

import contextlib
import functools
import random
import types
from collections.abc import Iterator, Mapping
from typing import Any

from sp2dpo.evaluate.benchmarks import punkt

#: Seed handed to ``langdetect`` while scoring (its documented way to be deterministic).
LANGDETECT_SEED = 0

# Scoring patches module globals (nltk, if_verifiable, langdetect, random); one scorer at a time.
LOCK = punkt.LOCK


@contextlib.contextmanager
def offline_punkt() -> Iterator[Any]:
    """:func:`sp2dpo.evaluate.benchmarks.punkt.offline_english_punkt`, plus if-verifiable's own sentence
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
def deterministic() -> Iterator[None]:
    """Seed langdetect; keep the global ``random`` state as it was (see :func:`seed_for`)."""
    from langdetect import detector_factory

    with LOCK:
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


def seed_for(key: int, index: int, instruction_id: str) -> None:
    # A checker draws from the global `random` only for arguments it lacks or rejects (no
    # official prompt does so since letter_frequency keeps '#' / '!', but a user's prompts file
    # may); make that draw reproducible.
    random.seed(f"sp2dpo-ifeval:{key}:{index}:{instruction_id}")


@functools.cache
def _instructions_util() -> Any:
    with punkt.no_downloads():
        from if_verifiable.ifeval import instructions_util
    return instructions_util


#: The instruction whose ``if-verifiable`` checker is replaced (:func:`_counting_given_character`).
LETTER_FREQUENCY = "keywords:letter_frequency"


def _counting_given_character(base: type) -> type:
    """``if-verifiable``'s ``keywords:letter_frequency`` checker, keeping any single character.

    ``if-verifiable`` (like Google's code in its 2024 revision) replaces a ``letter`` outside
    a-z / A-Z by a random ASCII letter, so official prompts 1122 (at least 4 ``'#'``) and 1129
    (at least 6 ``'!'``) were scored on the count of a random letter. Google's current checker
    (``instruction_following_eval/instructions.py``) draws a random letter only for a missing,
    empty or multi-character ``letter``; any other is stripped and lower-cased, and counted in the
    lower-cased response. The count and the relations are if-verifiable's, unchanged:
    ``"less than"`` passes when count < ``let_frequency``, ``"at least"`` when count >= it.
    """

    class LetterFrequencyChecker(base):
        """Counts the given character, letter or not (Google's current semantics)."""

        def build_description(
            self,
            *,
            letter: str | None = None,
            let_frequency: int | None = None,
            let_relation: str | None = None,
        ) -> str:
            """Build the checker; a one-character ``letter`` is kept as given (lower-cased)."""
            given = isinstance(letter, str) and len(letter) == 1
            # a stand-in letter, so the base class draws nothing from `random` for it
            super().build_description(
                letter="a" if given else letter,
                let_frequency=let_frequency,
                let_relation=let_relation,
            )
            if given:
                self._letter = letter.strip().lower()
            return self._description_pattern.format(
                letter=self._letter,
                let_frequency=self._frequency,
                let_relation=self._comparison_relation,
            )

    return LetterFrequencyChecker


@functools.cache
def registry() -> Mapping[str, Any]:
    """IFEval checker classes by instruction id (imported once, no download): ``if_verifiable``'s,
    with ``keywords:letter_frequency`` counting the given character (:data:`LETTER_FREQUENCY`)."""
    with punkt.no_downloads():
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    checkers = dict(INSTRUCTION_DICT)
    checkers[LETTER_FREQUENCY] = _counting_given_character(checkers[LETTER_FREQUENCY])
    return types.MappingProxyType(checkers)


@functools.cache
def loose_transformations() -> Any:
    with punkt.no_downloads():
        from if_verifiable.common import get_loose_transformations
    return get_loose_transformations


def supported_instructions() -> tuple[str, ...]:
    """Instruction ids ``if-verifiable`` can check, sorted."""
    return tuple(sorted(registry()))


def build_checker(instruction_id: str, kwargs: Mapping[str, Any], prompt: str) -> Any:
    # As Google's evaluation_lib: drop None-valued kwargs, then re-build with the prompt for the
    # checkers whose arguments include it.
    checker = registry()[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


def follows(checker: Any, text: str) -> bool:
    return bool(text.strip() and checker.check_following(text))
