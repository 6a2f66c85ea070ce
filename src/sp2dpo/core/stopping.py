"""Stopping cleanly on SIGINT (Ctrl-C) and SIGTERM: finish what is paid for, then stop.

A paid call in flight (a teacher, a judge, an answer server) is never abandoned: the first
signal sets a stop flag, no new call starts, the calls in flight end (each within its timeout)
and are stored, and the stage ends with :class:`Interrupted`, one line naming what was kept.
Further signals only log that the wait goes on. Only SIGKILL loses the calls in flight; every
finished one is already on disk (the call stores ``fsync`` each record).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

from sp2dpo.core.errors import UserError

log = logging.getLogger(__name__)


class Interrupted(UserError):
    """The run was stopped by a signal; every finished call is stored."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_status = 128 + signum


@contextlib.contextmanager
def handle_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """``handler(signum)`` for SIGINT and SIGTERM while the block runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: handler(signum))
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


class GracefulStop:
    """A stop flag set by SIGINT/SIGTERM while used as a context manager.

    ``stop`` is the :class:`threading.Event` workers check before starting a call;
    :meth:`raise_if_stopped` ends the run with :class:`Interrupted` once the work in flight is
    stored. ``what`` names the run in the log lines (``"eval smollm2"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.stop = threading.Event()
        self.received: list[int] = []
        self._ctx: contextlib.AbstractContextManager[None] | None = None

    def _on_signal(self, signum: int) -> None:
        self.received.append(signum)
        self.stop.set()
        name = signal.Signals(signum).name
        if len(self.received) == 1:
            log.warning("%s: %s: stopping after the work in flight is finished and stored",
                        self.what, name)
        else:
            log.warning("%s: %s again: still finishing the work in flight (it is paid for and "
                        "will be stored)", self.what, name)

    def __enter__(self) -> GracefulStop:
        self._ctx = handle_signals(self._on_signal)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._ctx is not None
        self._ctx.__exit__(None, None, None)
        self._ctx = None

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()

    def raise_if_stopped(self, detail: str) -> None:
        """Raise :class:`Interrupted` (``detail``: what was kept) when a signal arrived."""
        if self.received:
            name = signal.Signals(self.received[0]).name
            raise Interrupted(f"{self.what} stopped by {name}: {detail}", self.received[0])
