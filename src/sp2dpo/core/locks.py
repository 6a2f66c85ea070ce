"""Inter-process locks on lock files: one exclusive lock, and per-key claims.

- :class:`FileLock`: one exclusive lock (``flock`` on a descriptor held open while locked),
  reentrant and thread-safe within a process; e.g. to serialise writes to a store that several
  processes update (an MLflow store, a one-file call log).
- :class:`KeyLocks`: many independent claims (one per key) on one lock file, as POSIX byte-range
  locks at an offset derived from the key. The kernel drops a process's locks when it dies, so a
  claim never outlives its holder and no stale lock file is ever left to clean up.

Both are advisory (they exclude only processes that take them) and work on local filesystems;
on a network filesystem only where it supports ``flock`` / ``fcntl`` locks (NFSv4 does).
Unix only (``fcntl``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import string
import threading
import time
from pathlib import Path
from types import TracebackType

#: Seconds between two tries of a lock another process holds.
POLL_S = 0.02


def _open_lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


def _is_busy(exc: OSError) -> bool:
    """Whether a non-blocking lock failed because another process holds it."""
    return exc.errno in (errno.EACCES, errno.EAGAIN)


class FileLock:
    """An exclusive inter-process lock on the file ``path``; a context manager.

    Reentrant and thread-safe within one process: the first entry (of the outermost ``with``)
    takes ``flock`` on a freshly opened descriptor, the last exit releases it and closes the
    descriptor; another thread of the same process waits for the holding thread to exit. The lock
    file is created (with its parent folder) and never removed. Reentrancy is per object: two
    :class:`FileLock` objects on one path exclude each other, even in one thread.

    Args:
        path: the lock file.
        timeout: seconds to wait for the lock (None: forever); past it, :meth:`acquire` raises
            :class:`TimeoutError` naming the lock file.

    Example:
        >>> import tempfile, pathlib
        >>> lock = FileLock(pathlib.Path(tempfile.mkdtemp()) / "store.lock", timeout=5)
        >>> with lock, lock:  # reentrant
        ...     lock.held
        True
    """

    def __init__(self, path: str | Path, *, timeout: float | None = None) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._rlock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this process holds the lock (through this object)."""
        return self._depth > 0

    def acquire(self) -> None:
        """Take the lock (or one more level of it, in the thread that holds it)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        if not self._rlock.acquire(timeout=-1 if deadline is None else max(self.timeout or 0.0, 0.0)):
            raise self._timed_out()
        try:
            if self._depth == 0:
                self._fd = self._lock(deadline)
            self._depth += 1
        except BaseException:
            self._rlock.release()
            raise

    def release(self) -> None:
        """Give back one level; the last one unlocks the file.

        Raises:
            RuntimeError: the calling thread does not hold the lock.
        """
        if not self._rlock.acquire(blocking=False):
            raise RuntimeError(f"{self.path}: lock released by a thread that does not hold it")
        try:
            if self._depth == 0:
                raise RuntimeError(f"{self.path}: lock released more often than acquired")
            self._depth -= 1
            try:
                if self._depth == 0 and self._fd is not None:
                    fd, self._fd = self._fd, None
                    try:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    finally:
                        os.close(fd)
            finally:
                self._rlock.release()  # the level this call gives back
        finally:
            self._rlock.release()  # the probe above

    def _lock(self, deadline: float | None) -> int:
        """Open the lock file and ``flock`` it, waiting until ``deadline``; the descriptor."""
        while True:
            fd = _open_lock_file(self.path)
            try:
                if deadline is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                else:
                    while True:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            break
                        except OSError as exc:
                            if not _is_busy(exc):
                                raise
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise self._timed_out()
                        time.sleep(min(POLL_S, left))
                # The file we locked must still be the one at ``path`` (not removed meanwhile).
                try:
                    if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                        return fd
                except FileNotFoundError:
                    pass
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(f"{self.path}: lock not acquired within {self.timeout:g} s "
                            "(another process or thread holds it)")

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"FileLock({str(self.path)!r}, held={self.held})"


class _ClaimFile:
    """The process's one open descriptor on a claims file, and the offsets its threads hold.

    POSIX locks belong to the process (two threads never conflict in the kernel) and closing
    *any* descriptor of the file drops all of them, so every :class:`KeyLocks` of a process on
    one file shares this object.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = _open_lock_file(path)
        self.held: set[int] = set()
        self.lock = threading.Lock()
        self.users = 0


_CLAIM_FILES: dict[str, _ClaimFile] = {}
_CLAIM_FILES_LOCK = threading.Lock()


class KeyLocks:
    """Per-key inter-process claims on one lock file; a context manager (closing it releases
    every claim it holds).

    A claim on ``key`` is a one-byte POSIX write lock (``lockf``) at :meth:`offset` (``key``),
    so claims on different keys never wait for each other, and a process that dies (even by
    SIGKILL) loses its claims at once. Within a process, a set of held offsets keeps two threads
    (or two :class:`KeyLocks` on the same file) from holding one key. Claims are not reentrant:
    claiming a key this process holds waits for its release. Locks are only ever tried without
    blocking, and waiting polls, which avoids the kernel's deadlock detection (``EDEADLK``),
    which counts a process's threads as one owner.

    Args:
        path: the lock file (created with its folder; never removed, never written).
        poll_s: seconds between two tries of a key another holder has.
    """

    def __init__(self, path: str | Path, *, poll_s: float = POLL_S) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.poll_s = poll_s
        self._mine: dict[str, int] = {}
        self._mine_lock = threading.Lock()
        name = os.path.realpath(path)
        with _CLAIM_FILES_LOCK:
            file = _CLAIM_FILES.get(name)
            if file is None:
                file = _CLAIM_FILES[name] = _ClaimFile(path)
            file.users += 1
        self._name = name
        self._file: _ClaimFile | None = file

    @staticmethod
    def offset(key: str) -> int:
        """The byte locked for ``key``: its first 15 hex digits as a number (a sha256 key), or
        those of the sha256 of any other key; below 2**60, a valid file offset."""
        if len(key) < 15 or not all(c in string.hexdigits for c in key[:15]):
            key = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return int(key[:15], 16)

    def _claim_file(self) -> _ClaimFile:
        if self._file is None:
            raise RuntimeError(f"{self.path}: key locks are closed")
        return self._file

    def try_claim(self, key: str) -> bool:
        """Claim ``key`` if no thread or process holds it; whether it is now claimed."""
        file = self._claim_file()
        offset = self.offset(key)
        with file.lock:
            if offset in file.held:
                return False
            file.held.add(offset)
        try:
            fcntl.lockf(file.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except BaseException as exc:
            with file.lock:
                file.held.discard(offset)
            if isinstance(exc, OSError) and _is_busy(exc):
                return False
            raise
        with self._mine_lock:
            self._mine[key] = offset
        return True

    def claim(
        self, key: str, *, timeout: float | None = None, stop: threading.Event | None = None
    ) -> bool:
        """Claim ``key``, waiting while another thread or process holds it.

        Returns:
            True once claimed; False if ``stop`` was set first.

        Raises:
            TimeoutError: not claimed within ``timeout`` seconds (None: wait forever).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if stop is not None and stop.is_set():
                return False
            if self.try_claim(key):
                return True
            wait = self.poll_s
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.path}: key {key[:16]} not claimed within {timeout:g} s")
                wait = min(wait, left)
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)

    def release(self, key: str) -> None:
        """Give back the claim on ``key``.

        Raises:
            RuntimeError: this object does not hold ``key``.
        """
        with self._mine_lock:
            offset = self._mine.pop(key, None)
        if offset is None:
            raise RuntimeError(f"{self.path}: key {key[:16]} released but not claimed here")
        file = self._claim_file()
        try:
            fcntl.lockf(file.fd, fcntl.LOCK_UN, 1, offset)
        finally:
            with file.lock:
                file.held.discard(offset)

    def held(self) -> list[str]:
        """The keys this object holds."""
        with self._mine_lock:
            return sorted(self._mine)

    def close(self) -> None:
        """Release every claim of this object; the descriptor closes with the process's last
        :class:`KeyLocks` on the file. Idempotent."""
        if self._file is None:
            return
        for key in self.held():
            self.release(key)
        with _CLAIM_FILES_LOCK:
            file, self._file = self._file, None
            file.users -= 1
            if file.users == 0:
                del _CLAIM_FILES[self._name]
                os.close(file.fd)

    def __enter__(self) -> KeyLocks:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KeyLocks({str(self.path)!r}, held={len(self._mine)})"
