"""What every entry point shares: logging, the error guard, the stage runner, JSON printing.

The ``sp2dpo`` command (:mod:`sp2dpo.cli`) and the DVC stage scripts (``stages/*.py``) are the
only places that parse arguments; both run their work through :func:`guarded`, so an expected
failure (a :class:`~sp2dpo.core.errors.UserError`, a ``ValueError``, a missing file or another
file the system refuses to read or write) prints one ``sp2dpo: error: ...`` line and exits with
status 2, without a traceback. Anything else is a bug: one ``sp2dpo: internal error: ...`` line
and status 70 (the traceback with ``-v``, and always in a DVC stage's log). When the reader of
the output goes away (``sp2dpo ... --json | head``) the command stops quietly with status 141,
as a shell reports a command ended by SIGPIPE.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from sp2dpo.core.errors import UserError

#: Exit status for expected, explained failures.
EXIT_USAGE = 2

#: Exit status of an unexpected error, a bug (``EX_SOFTWARE`` of sysexits.h).
EXIT_BUG = 70
#: Exit status when the reader of standard output went away (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141

#: What :func:`guarded` reports in one line instead of a traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError)


def setup_logging(level: int = logging.INFO) -> None:
    """Plain ``LEVEL name: message`` logging on stderr (idempotent)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    root.setLevel(level)


def guarded(fn: Callable[[], Any], *, verbose: bool = False) -> int:
    """Run ``fn``; turn an expected error into one clear line on stderr and exit status 2.

    ``fn`` may return an ``int`` exit status (e.g. a CI gate); anything else means success. An
    unexpected exception is a bug: one line naming it and status :data:`EXIT_BUG` (with
    ``verbose``, its traceback first).
    """
    try:
        status = fn()
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's exit
    except BrokenPipeError:
        _detach_stdout()
        return EXIT_BROKEN_PIPE
    except EXPECTED_ERRORS as exc:
        message = os_message(exc) if isinstance(exc, OSError) else str(exc)
        print(f"sp2dpo: error: {message}", file=sys.stderr)
        return getattr(exc, "exit_status", EXIT_USAGE)
    except OSError as exc:  # a path the system refuses (a folder given as a file, no permission)
        print(f"sp2dpo: error: {os_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sp2dpo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        print(f"sp2dpo: internal error: {type(exc).__name__}: {exc} (a bug; "
              f"{'the traceback is above' if verbose else 'run with -v for the traceback'})",
              file=sys.stderr)
        return EXIT_BUG
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def os_message(exc: OSError) -> str:
    """An ``OSError`` as ``PATH: reason`` (``x/y.json: Is a directory``)."""
    if exc.filename is None:
        return str(exc)
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{exc.filename}{target}: {exc.strerror or exc}"


def _detach_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (a test's capture)
        pass


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

    sys.exit(guarded(call, verbose=True))


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented, key-sorted JSON (the ``--json`` output of every subcommand)."""
    print(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, ))
