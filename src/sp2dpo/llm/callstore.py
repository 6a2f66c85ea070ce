"""The call store: the append-only record of every paid LLM call, which doubles as the cache.

Shared by the teachers (``annotate``: one record per pair x teacher x variant) and the judges
and answer servers of ``evaluate``. One record per finished call, keyed by a sha256 of what
determines the answer (:func:`request_key` over a caller-defined payload: content, model,
template hash, decoding as sent). A run skips every key already stored with a final outcome, so
a re-run, a run after a crash or a run with one more teacher, judge or model only calls what is
new.

Layout: a folder of JSON-lines *segments* (``data/annotate/calls/`` in the pipeline). Each run
that makes calls appends them to one new segment, ``seg-NNNNNN.jsonl`` with the next free
number, and never touches an old one; reading takes every segment in name order, the newest
record of a key winning (a transient failure is later superseded by the successful call).
When the run closes the store, its segment is rewritten once (atomically) in key order, so a
run that makes the same calls writes the same bytes whatever the order the calls finished in:
a record holds what determines results (the answer, its status, tokens and cost), never
wall-clock measurements (latencies and times go to the run log). Immutable segments
are what lets DVC version the store incrementally: ``dvc.yaml`` declares the folder a cached,
persistent output, so ``dvc exp run --temp`` and ``--queue`` workspaces and fresh clones
(``dvc pull``) get every call made so far from the DVC cache or remote, and a new version only
adds the new segment. A plain ``.jsonl`` file is read and appended as a one-segment store;
:meth:`CallStore.import_log` copies such a log (the layout of earlier versions) into a folder.

``SP2DPO_SHARED_CALLS`` (a folder, e.g. on a shared filesystem) adds a live store shared by
concurrent runs: its segments are read too, and each call is also appended there, so parallel
queue workers or machines see each other's finished calls without waiting for a DVC push.

Concurrent runs (two ``sp2dpo annotate`` on one store, queue workers on one shared store) pay
for a call once through per-key *claims* (:class:`sp2dpo.core.locks.KeyLocks`):

1. :meth:`CallStore.read` (the plan) also marks where each segment was read up to;
2. before making a call, a run claims its key (:meth:`CallStore.try_claim` /
   :meth:`CallStore.claim`); a claim is a byte-range lock that dies with its process, so a
   crashed run never blocks another;
3. once it holds the claim, the run tail-reads what every segment gained since
   (:meth:`CallStore.fresh`: only the new complete lines, by tracked byte offsets; a line still
   being written is left for the next look). A final record another run made meanwhile is
   used as is (:meth:`CallStore.adopt` copies it into this run's segment when it was found only
   outside this store, e.g. in the shared one, so every run's store is self-contained); a
   transient failure is asked again;
4. otherwise the run makes the call, appends its record, then releases the claim: the next
   holder of the key always finds the record.

The claims file is never inside the store (a DVC output would change): ``.sp2dpo-claims.lock``
in the shared folder when there is one (so runs with different own stores, or on machines that
mount it, coordinate), else ``<lock dir>/<sha256 of the store's real path>.claims.lock``, the
lock dir being ``$SP2DPO_LOCK_DIR`` or ``<tmp>/sp2dpo-locks``.

Durability: records are appended by one writer at a time (a lock), each with a single
``write`` on an ``O_APPEND`` descriptor, and an append returns only once an ``fsync`` covered its
line (group commit: appenders waiting at the same time share one ``fsync``), so a SIGKILL loses
at most the calls in flight. A torn last line (killed mid-write) is ignored on read and, in a one-file
store, terminated with a newline before the next append. A one-file store may have several
writing processes: each append (the termination check, the write, the ``fsync``) holds an
inter-process :class:`~sp2dpo.core.locks.FileLock` (in the lock dir), so lines never
interleave even where ``O_APPEND`` writes are not atomic. A folder segment has one writer.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Collection
from pathlib import Path
from typing import Any

from sp2dpo.core import artifacts
from sp2dpo.core.locks import FileLock, KeyLocks

log = logging.getLogger(__name__)

#: Version of the record layout and of the key recipes; bumping it invalidates every key.
LOG_VERSION = 1


def request_key(payload: dict[str, Any]) -> str:
    """The cache key (hex sha256) of a call described by ``payload``.

    The payload is hashed as canonical JSON (sorted keys, no white space) with ``"v":``
    :data:`LOG_VERSION` added, so two callers' keys differ as soon as one field does. Put in it
    what changes the answer (content, model, template hash, decoding as sent), never timeouts,
    retries, endpoints or prices.
    """
    text = json.dumps(
        {"v": LOG_VERSION, **payload}, ensure_ascii=False, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_sha256(*parts: str) -> str:
    """sha256 of a JSON list of strings (e.g. a pair's prompt, chosen and rejected)."""
    text = json.dumps(list(parts), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: Environment variable naming a shared live call store (a folder) read and written besides the
#: run's own store.
SHARED_ENV = "SP2DPO_SHARED_CALLS"
#: Environment variable naming the folder of the stores' lock files (default: ``<tmp>/sp2dpo-locks``).
LOCK_DIR_ENV = "SP2DPO_LOCK_DIR"
#: Name of the claims file inside a shared store.
SHARED_CLAIMS = ".sp2dpo-claims.lock"


def default_lock_dir() -> Path:
    """``$SP2DPO_LOCK_DIR``, else ``<tmp>/sp2dpo-locks``: where stores' lock files live."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "sp2dpo-locks")


def _path_digest(path: Path) -> str:
    return hashlib.sha256(os.path.realpath(path).encode("utf-8")).hexdigest()[:16]


def _parse(
    data: bytes, path: Path, first_line: int, fields: frozenset[str] | None = None
) -> tuple[list[dict[str, Any]], int]:
    """The call records of complete JSON lines ``data`` (numbered from ``first_line``), and the
    number of lines that are not records (warned about); with ``fields``, each record keeps only
    those (the full one is dropped as soon as it is parsed)."""
    records, skipped = [], 0
    for number, line in enumerate(data.split(b"\n"), start=first_line):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if not isinstance(record, dict) or "key" not in record or "status" not in record:
            skipped += 1
            log.warning("%s line %d: not a call record, ignored", path, number)
            continue
        records.append(record if fields is None else {k: v for k, v in record.items() if k in fields})
    return records, skipped


def _rewrite_in_key_order(path: Path) -> None:
    """Rewrite a segment (atomically) in key order, the newest record of each key, each line in
    canonical form. Holds the lines, not parsed records: a 540k-call segment (1.5 GB) as dicts
    took several GB."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    newest: dict[str, bytes] = {}
    for line in data[:end].split(b"\n"):
        try:
            record = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            record = None
        if isinstance(record, dict) and "key" in record and "status" in record:
            newest[record["key"]] = _line(record).encode("utf-8")  # canonical, dict dropped
    del data
    with artifacts.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for key in sorted(newest):
            fh.write(newest[key])


#: Name of a folder store's segments: ``seg-000001.jsonl``, ... Earlier layouts' names (a UTC
#: timestamp, an ``00000000T...-import-`` copy) sort before these, so they are read first.
SEGMENT_PREFIX = "seg-"


def _claim_segment(folder: Path) -> tuple[Path, int]:
    """Create the next free ``seg-NNNNNN.jsonl`` in ``folder`` exclusively; ``(path, fd)``.

    ``O_EXCL`` makes the claim safe against another run opening a segment in the same folder at
    the same moment: the loser takes the next number.
    """
    folder.mkdir(parents=True, exist_ok=True)
    taken = [
        int(p.stem[len(SEGMENT_PREFIX):])
        for p in folder.glob(f"{SEGMENT_PREFIX}*.jsonl")
        if p.stem[len(SEGMENT_PREFIX):].isdigit()
    ]
    for number in itertools.count(max(taken, default=0) + 1):
        path = folder / f"{SEGMENT_PREFIX}{number:06d}.jsonl"
        try:
            return path, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


class _Segment:
    """One append-only JSON-lines file, opened lazily (a run that makes no call writes nothing).

    ``path`` is a file to append to, or a folder in which the first append claims a new segment
    (then this run is its only writer). ``lock``: held around each append to a file other
    processes may append to as well.
    """

    def __init__(self, path: Path, *, claim: bool = False, lock: FileLock | None = None) -> None:
        self.path = path
        self.claim = claim
        self.exclusive = claim
        self.lock = lock
        self.fd: int | None = None

    def append(self, data: bytes, *, sync: bool = True) -> None:
        """Write ``data``; with ``sync``, ``fsync`` before returning (else the caller calls
        :meth:`sync`). A segment other processes append to always syncs under its lock."""
        if self.lock is None:
            self._append(data, sync)
        else:
            with self.lock:
                self._append(data, True)

    def sync(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)

    def _append(self, data: bytes, sync: bool) -> None:
        if self.fd is None and self.claim:
            self.path, self.fd = _claim_segment(self.path)
            self.claim = False
        elif self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        assert self.fd is not None
        if not self.exclusive:
            size = os.fstat(self.fd).st_size
            if size and os.pread(self.fd, 1, size - 1) != b"\n":
                # Terminate a torn last line so the next record starts on its own line.
                self._write(b"\n")
        self._write(data)
        if sync:
            os.fsync(self.fd)

    def _write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def close(self, *, canonical: bool = False) -> None:
        """Close; with ``canonical`` rewrite the (claimed) segment in key order, one record per
        key (the newest), so the same calls give the same bytes."""
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        if canonical:
            _rewrite_in_key_order(self.path)


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n"


def _digest(record: dict[str, Any]) -> bytes:
    """A record's identity (of its canonical line), kept instead of the record itself."""
    return hashlib.blake2b(_line(record).encode("utf-8"), digest_size=16).digest()


@dataclasses.dataclass
class _Tail:
    """How far a segment was read: the file (device, inode), the bytes and lines consumed (up
    to the last complete line)."""

    ident: tuple[int, int]
    offset: int
    lines: int


class CallStore:
    """The call store at ``path``: a folder of segments, or one ``.jsonl`` file; thread-safe
    appends, and per-key claims shared with other processes.

    Use as a context manager to append; :meth:`read` works without opening.

    Args:
        path: the store (a folder, created on the first append; or a ``.jsonl`` file).
        extra: stores read besides ``path`` (e.g. the previous layout's ``calls.jsonl``).
        shared: a live store shared by concurrent runs (default: ``$SP2DPO_SHARED_CALLS``);
            read, and every record also appended there.
        lock_dir: folder of the lock files (default: :func:`default_lock_dir`; a shared store
            keeps its claims file inside it unless this is given).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        extra: tuple[str | Path, ...] = (),
        shared: str | Path | None = None,
        lock_dir: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        shared = shared if shared is not None else os.environ.get(SHARED_ENV) or None
        self.shared = Path(shared) if shared else None
        self.extra = tuple(Path(p) for p in extra)
        lock_dir = lock_dir if lock_dir is not None else os.environ.get(LOCK_DIR_ENV) or None
        self.lock_dir = Path(lock_dir) if lock_dir else None
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._claims: KeyLocks | None = None
        self._scan_lock = threading.Lock()
        self._tails: dict[Path, _Tail] = {}
        self._base: dict[str, dict[str, Any]] = {}  # what read() returned
        # The newest record per key in this store itself: the object read() returned, or, for a
        # record this run appended, its digest (not the record: 540k of them take gigabytes).
        self._own: dict[str, dict[str, Any] | bytes] = {}
        self._fresh: dict[str, list[dict[str, Any]]] = {}  # records read since, per key
        self._sync_lock = threading.Lock()
        self._written = self._synced = 0  # lines appended, lines known to be on disk
        self.skipped_lines = 0

    @property
    def is_file(self) -> bool:
        return self.path.suffix == ".jsonl"

    @property
    def claims_file(self) -> Path:
        """The lock file of the per-key claims (see the module docstring): never in the store."""
        if self.shared is not None and self.lock_dir is None:
            return self.shared / SHARED_CLAIMS
        target = self.shared if self.shared is not None else self.path
        return (self.lock_dir or default_lock_dir()) / f"{_path_digest(target)}.claims.lock"

    @property
    def append_lock_file(self) -> Path:
        """The lock file held around each append to a one-file store."""
        return (self.lock_dir or default_lock_dir()) / f"{_path_digest(self.path)}.append.lock"

    def _sources(self) -> list[tuple[Path, bool]]:
        """Every segment file, in reading order (extra stores, the shared one, this one), each
        with whether it belongs to this store."""
        found: list[tuple[Path, bool]] = []
        for store in (*self.extra, *([self.shared] if self.shared else []), self.path):
            own = store == self.path
            if store.is_file():
                found.append((store, own))
            elif store.is_dir():
                found.extend((segment, own) for segment in sorted(store.glob("*.jsonl")))
        return found

    def segments(self) -> list[Path]:
        """Every segment file read, in reading order (extra stores, the shared one, this one)."""
        return [path for path, _ in self._sources()]

    def ensure(self) -> None:
        """Create the store's folder (an empty store is a valid DVC output)."""
        if not self.is_file:
            self.path.mkdir(parents=True, exist_ok=True)

    def import_log(self, log_file: str | Path) -> Path | None:
        """Copy a one-file call log (the earlier layout) into this folder store as a segment that
        sorts first, once (named by its content hash); returns the segment, None if already there."""
        log_file = Path(log_file)
        digest = hashlib.sha256(log_file.read_bytes()).hexdigest()[:16]
        target = self.path / f"00000000T000000000000Z-import-{digest}.jsonl"
        if self.is_file or target.exists():
            return None
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(log_file.read_bytes())
        os.replace(tmp, target)
        return target

    # ------------------------------------------------------------------------------ reading

    def _tail(
        self, path: Path, fields: frozenset[str] | None = None
    ) -> tuple[list[dict[str, Any]], int, bool]:
        """The records of the complete lines ``path`` gained since it was last read (all of it
        when new, or replaced, e.g. by a run's canonical rewrite), lines skipped, and whether
        an incomplete last line is left unread. Call with ``_scan_lock`` held."""
        tail = self._tails.get(path)
        try:
            if tail is not None:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == tail.ident and st.st_size == tail.offset:
                    return [], 0, False  # unchanged: one stat, no read
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                ident = (st.st_dev, st.st_ino)
                start, lines = 0, 0
                if tail is not None and tail.ident == ident and st.st_size >= tail.offset:
                    start, lines = tail.offset, tail.lines
                fh.seek(start)
                data = fh.read()
        except FileNotFoundError:
            self._tails.pop(path, None)
            return [], 0, False
        end = data.rfind(b"\n") + 1
        records, skipped = _parse(data[:end], path, lines + 1, fields)
        self._tails[path] = _Tail(ident, start + end, lines + data.count(b"\n", 0, end))
        return records, skipped, bool(data[end:].strip())

    def read(self, fields: Collection[str] | None = None) -> dict[str, dict[str, Any]]:
        """Every complete record, newest per key; torn or corrupt lines are skipped and counted.
        With ``fields``, each record holds only those (and ``key``, ``status``, ``transient``):
        a 540k-call store read whole takes several GB. Such records are for reading, never to
        :meth:`adopt` into another store.

        Also the starting point of :meth:`fresh`: what each segment was read up to.
        """
        keep = None if fields is None else frozenset(fields) | {"key", "status", "transient"}
        lock = FileLock(self.append_lock_file) if self.is_file and self.path.exists() else None
        with self._scan_lock:
            if lock is not None:
                lock.acquire()  # a one-file store: no line half-written by another process
            try:
                self._tails.clear()
                # what the last read returned goes first: never two full snapshots in memory
                self._base, self._own, self._fresh = {}, {}, {}
                records: dict[str, dict[str, Any]] = {}
                own: dict[str, dict[str, Any] | bytes] = {}
                skipped = 0
                for path, is_own in self._sources():
                    found, bad, torn = self._tail(path, keep)
                    if torn:
                        log.warning("%s: ignoring an incomplete last line (interrupted write)", path)
                    skipped += bad + torn
                    for record in found:
                        records[record["key"]] = record
                        if is_own:
                            own[record["key"]] = record  # the same object: no extra memory
            finally:
                if lock is not None:
                    lock.release()
            self._base, self._own, self._fresh = records, own, {}
            self.skipped_lines = skipped
        return dict(records)

    def refresh(self) -> int:
        """Tail-read every segment (new segments too) since :meth:`read` or the last refresh:
        only complete lines, by tracked byte offsets; returns the number of new records.

        The segments this process is writing are skipped: no other process writes them, and what
        it appended is known (re-reading them would parse, and keep, every record twice)."""
        new = 0
        writing = {segment.path for segment in self._segments if segment.exclusive and segment.fd is not None}
        with self._scan_lock:
            for path, is_own in self._sources():
                if path in writing:
                    continue
                found, _, _ = self._tail(path)
                for record in found:
                    key = record["key"]
                    if is_own:
                        self._own[key] = _digest(record)
                    if record == self._base.get(key):
                        continue  # e.g. a segment rewritten in key order: nothing new
                    seen = self._fresh.setdefault(key, [])
                    if record not in seen:
                        seen.append(record)
                        new += 1
        return new

    def fresh(self, key: str, *, refresh: bool = True) -> list[dict[str, Any]]:
        """The records of ``key`` that appeared (in any store, by any process) since the last
        :meth:`read`, in reading order, after a :meth:`refresh` (unless ``refresh=False``).

        Records identical to the one :meth:`read` returned for ``key`` are not counted.
        """
        if refresh:
            self.refresh()
        with self._scan_lock:
            return list(self._fresh.get(key, ()))

    def holds(self, record: dict[str, Any]) -> bool:
        """Whether this store itself (not the shared or extra ones) has ``record`` as the newest
        record of its key, as far as read."""
        with self._scan_lock:
            own = self._own.get(record["key"])
            if own is None:
                return False
            if isinstance(own, bytes):  # a record this run appended, kept as its digest
                return own == _digest(record)
            return own is record or own == record

    # ------------------------------------------------------------------------------ claims

    def _key_locks(self) -> KeyLocks:
        with self._lock:
            if self._claims is None:
                self._claims = KeyLocks(self.claims_file)
            return self._claims

    def try_claim(self, key: str) -> bool:
        """Claim ``key`` across processes (and threads) unless held; whether claimed."""
        return self._key_locks().try_claim(key)

    def claim(
        self, key: str, *, stop: threading.Event | None = None, timeout: float | None = None
    ) -> bool:
        """Claim ``key``, waiting while another run or thread holds it; False if ``stop`` was
        set first (TimeoutError past ``timeout`` seconds)."""
        return self._key_locks().claim(key, stop=stop, timeout=timeout)

    def release(self, key: str) -> None:
        """Release the claim on ``key`` (after appending its record)."""
        self._key_locks().release(key)

    # ------------------------------------------------------------------------------ writing

    def __enter__(self) -> CallStore:
        if self.is_file:
            self._segments = [_Segment(self.path, lock=FileLock(self.append_lock_file))]
        else:
            self._segments = [_Segment(self.path, claim=True)]
        if self.shared is not None:
            # The shared folder is written by many machines and is no DVC output: unique names.
            name = (
                dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
                + f"-{os.getpid()}-{secrets.token_hex(3)}.jsonl"
            )
            segment = _Segment(self.shared / name)
            segment.exclusive = True
            self._segments.append(segment)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for i, segment in enumerate(self._segments):
                segment.close(canonical=i == 0 and not self.is_file)
        finally:
            self._segments = []
            with self._lock:
                claims, self._claims = self._claims, None
            if claims is not None:
                claims.close()

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably (one write; returns once an fsync covered it) to this run's
        segment(s)."""
        line = _line(record).encode("utf-8")
        with self._lock:
            if not self._segments:
                raise RuntimeError(f"{self.path}: call store is not open for appending")
            for segment in self._segments:
                segment.append(line, sync=False)
            self._written += 1
            ticket = self._written
        self._sync(ticket)
        with self._scan_lock:
            self._own[record["key"]] = hashlib.blake2b(line, digest_size=16).digest()

    def _sync(self, ticket: int) -> None:
        """Group commit: return once the line numbered ``ticket`` is on disk. One ``fsync``
        covers every line written before it, so concurrent appenders share it: the store takes
        hundreds of calls per second where one fsync per line (a few ms each) would cap it."""
        with self._sync_lock:
            if self._synced >= ticket:
                return  # another appender's fsync covered this line
            with self._lock:
                target, segments = self._written, list(self._segments)
            for segment in segments:
                if segment.lock is None:  # a locked (one-file) segment synced under its lock
                    segment.sync()
            self._synced = target

    def adopt(self, record: dict[str, Any]) -> bool:
        """Copy a record read from another store (the shared one) into this run's own segment,
        unless this store already :meth:`holds` it; whether it was copied. Keeps every run's
        store self-contained (e.g. for a re-run without the shared store)."""
        if self.holds(record):
            return False
        with self._lock:
            if not self._segments:
                raise RuntimeError(f"{self.path}: call store is not open for appending")
            self._segments[0].append(_line(record).encode("utf-8"), sync=False)
            self._written += 1
            ticket = self._written
        self._sync(ticket)
        with self._scan_lock:
            self._own[record["key"]] = _digest(record)
        return True
