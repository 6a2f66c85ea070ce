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

Durability: records are appended by one writer at a time (a lock), each with a single
``write`` on an ``O_APPEND`` descriptor followed by ``fsync``, so a SIGKILL loses at most the
calls in flight. A torn last line (killed mid-write) is ignored on read and, in a one-file
store, terminated with a newline before the next append.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

from sp2dpo.core import artifacts

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


def _read_segment(path: Path, records: dict[str, dict[str, Any]]) -> int:
    """Add the records of one segment to ``records`` (newest wins); returns lines skipped."""
    skipped = 0
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1].strip():
        skipped += 1  # torn last line: the writer was killed mid-record
        log.warning("%s: ignoring an incomplete last line (interrupted write)", path)
    for number, line in enumerate(lines[:-1], start=1):
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
        records[record["key"]] = record
    return skipped


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

    ``path`` is a file to append to, or a folder in which the first append claims a new segment.
    """

    def __init__(self, path: Path, *, claim: bool = False) -> None:
        self.path = path
        self.claim = claim
        self.fd: int | None = None

    def append(self, data: bytes) -> None:
        if self.fd is None and self.claim:
            self.path, self.fd = _claim_segment(self.path)
            self.claim = False
        elif self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            size = os.fstat(self.fd).st_size
            if size:
                with open(self.path, "rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        # Terminate a torn last line so the next record starts on its own line.
                        self._write(b"\n")
        self._write(data)
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
            records: dict[str, dict[str, Any]] = {}
            _read_segment(self.path, records)
            artifacts.write_text("".join(_line(records[key]) for key in sorted(records)), self.path)


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=True, allow_nan=False) + "\n"


class CallStore:
    """The call store at ``path``: a folder of segments, or one ``.jsonl`` file; thread-safe
    appends.

    Use as a context manager to append; :meth:`read` works without opening.

    Args:
        path: the store (a folder, created on the first append; or a ``.jsonl`` file).
        extra: stores read besides ``path`` (e.g. the previous layout's ``calls.jsonl``).
        shared: a live store shared by concurrent runs (default: ``$SP2DPO_SHARED_CALLS``);
            read, and every record also appended there.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        extra: tuple[str | Path, ...] = (),
        shared: str | Path | None = None,
    ) -> None:
        self.path = Path(path)
        shared = shared if shared is not None else os.environ.get(SHARED_ENV) or None
        self.shared = Path(shared) if shared else None
        self.extra = tuple(Path(p) for p in extra)
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self.skipped_lines = 0

    @property
    def is_file(self) -> bool:
        return self.path.suffix == ".jsonl"

    def segments(self) -> list[Path]:
        """Every segment file read, in reading order (extra stores, the shared one, this one)."""
        found: list[Path] = []
        for store in (*self.extra, *([self.shared] if self.shared else []), self.path):
            if store.is_file():
                found.append(store)
            elif store.is_dir():
                found.extend(sorted(store.glob("*.jsonl")))
        return found

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

    def read(self) -> dict[str, dict[str, Any]]:
        """Every complete record, newest per key; torn or corrupt lines are skipped and counted."""
        records: dict[str, dict[str, Any]] = {}
        self.skipped_lines = sum(_read_segment(path, records) for path in self.segments())
        return records

    def __enter__(self) -> CallStore:
        self._segments = [_Segment(self.path) if self.is_file else _Segment(self.path, claim=True)]
        if self.shared is not None:
            # The shared folder is written by many machines and is no DVC output: unique names.
            name = (
                dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
                + f"-{os.getpid()}-{secrets.token_hex(3)}.jsonl"
            )
            self._segments.append(_Segment(self.shared / name))
        return self

    def __exit__(self, *exc: object) -> None:
        for i, segment in enumerate(self._segments):
            segment.close(canonical=i == 0 and not self.is_file)
        self._segments = []

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably (one write, then fsync) to this run's segment(s)."""
        line = _line(record)
        with self._lock:
            if not self._segments:
                raise RuntimeError(f"{self.path}: call store is not open for appending")
            for segment in self._segments:
                segment.append(line.encode("utf-8"))
