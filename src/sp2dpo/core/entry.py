"""What every entry point shares: logging, the error guard, the stage runner, JSON printing.

The ``sp2dpo`` command (:mod:`sp2dpo.cli`) and the DVC stage scripts (``stages/*.py``) are the
only places that parse arguments; both run their work through :func:`guarded`, so an expected
failure (a :class:`~sp2dpo.core.errors.UserError`, a ``ValueError`` or a missing file) prints one
``sp2dpo: error: ...`` line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sp2dpo.core.errors import UserError

#: Exit status for expected, explained failures.
EXIT_USAGE = 2

#: What :func:`guarded` reports in one line instead of a traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError)


def setup_logging(level: int = logging.INFO) -> None:
    """Plain ``LEVEL name: message`` logging on stderr (idempotent)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    root.setLevel(level)


def guarded(fn: Callable[[], Any]) -> int:
    """Run ``fn``; turn an expected error into one clear line on stderr and exit status 2.

    ``fn`` may return an ``int`` exit status (e.g. a CI gate); anything else means success.
    """
    try:
        status = fn()
    except EXPECTED_ERRORS as exc:
        print(f"sp2dpo: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", EXIT_USAGE)
    except KeyboardInterrupt:
        print("sp2dpo: interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def run_stage(fn: Callable[..., Any], args: Sequence[str] = (), *, usage: str = "") -> None:
    """Entry point of a ``stages/*.py`` script: ``fn(*args)`` with logging, clean errors and the
    exit status. ``args`` are the script's positional arguments (``sys.argv[1:]``); a wrong count
    exits with ``usage``.

    A stage's library function returns data (its metrics), never an exit status.
    """
    expected = len(inspect.signature(fn).parameters)
    if len(args) != expected:
        sys.exit(f"usage: {usage}" if usage else f"expected {expected} argument(s), got {len(args)}")
    setup_logging()

    def call() -> None:
        fn(*args)

    sys.exit(guarded(call))


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented, key-sorted JSON (the ``--json`` output of every subcommand)."""
    print(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, ))
