"""The eval stage's call store: every judge call and every student answer, paid once.

A thin layer over :class:`sp2dpo.llm.callstore.CallStore` (the same append-only, segment-per-run
store as the teachers' calls, with the same durability: one ``write`` + ``fsync`` per record, a
torn last line ignored, the run's segment rewritten in key order on close). Two kinds of record:

- ``judge``: one judge call, keyed by :func:`judge_key` (suite, judge id and model, template
  hash, the instruction, both outputs in the order shown, the decoding as sent);
- ``answer``: one student answer, keyed by :func:`answer_key` (the student's model and revision,
  the adapter's digest, the conversation so far, the decoding).

A record with a transient status (``http_error``, ``timeout``) is not final: a later run calls
it again and its newer record wins. Everything else (an answer, a parsed verdict, an
unparseable one, a prompt too long) is reused as is, so a re-run after a crash, a ``SIGKILL``
or a Ctrl-C calls only what is missing, and a second re-run calls nothing.

In the pipeline the store is ``data/eval_calls/<student>/``, a persistent DVC output of
``eval@<student>``: DVC keeps it across re-runs, and ``dvc pull`` brings it to a fresh clone.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from sp2dpo.llm.callstore import CallStore, request_key
from sp2dpo.llm.teachers import TRANSIENT_STATUSES

#: Record kinds.
JUDGE = "judge"
ANSWER = "answer"


def text_sha256(text: str) -> str:
    """sha256 of a text (a template, an answer) as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def judge_key(
    *,
    suite: str,
    judge_id: str,
    model: str,
    template_sha256: str,
    instruction: str,
    outputs: tuple[str, ...],
    decode: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The key of one judge call.

    Args:
        suite: ``alpaca_eval``, ``mt_bench`` or ``arena_hard``.
        judge_id, model: the judge entry's id and model.
        template_sha256: hash of the judge prompt template(s) used.
        instruction: the question judged (for a multi-turn item, every user turn).
        outputs: the outputs in the order the judge sees them (the side order is part of the
            key: swapping the outputs is another call).
        decode: the request signature (decoding as sent, or the local scorer's settings).
        extra: anything else the prompt depends on (a reference answer, the turn).
    """
    return request_key({
        "kind": JUDGE,
        "suite": suite,
        "judge": judge_id,
        "model": model,
        "template": template_sha256,
        "instruction": instruction,
        "outputs": list(outputs),
        "decode": dict(decode),
        "extra": dict(extra or {}),
    })


def answer_key(
    *,
    model: str,
    revision: str | None,
    adapter_sha256: str | None,
    messages: list[dict[str, str]],
    decode: Mapping[str, Any],
) -> str:
    """The key of one student answer: model and revision, adapter digest (None: the base
    model), the conversation up to the turn answered, and the decoding settings."""
    return request_key({
        "kind": ANSWER,
        "model": model,
        "revision": revision,
        "adapter": adapter_sha256,
        "messages": messages,
        "decode": dict(decode),
    })


#: Environment variable naming a live eval call store shared by concurrent runs (read, and every
#: new record also appended there); ``sp2dpo sweep run`` sets it for its queue workers, so the
#: base student's answers and judge calls are made once per sweep, not once per experiment.
SHARED_ENV = "SP2DPO_SHARED_EVAL_CALLS"


class EvalCalls:
    """The eval call store: :meth:`get` a final record, :meth:`put` a new one.

    Open it as a context manager before :meth:`put` (the run's segment is claimed on the first
    record and rewritten in key order on exit, whatever the exit). ``path=None`` keeps records
    in memory only (tests, one-off runs).

    Counts per kind: ``reused`` (found final in the store), ``made`` (recorded by this run).
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        # The teachers' live shared store (SP2DPO_SHARED_CALLS) is not ours: eval calls share
        # only through their own (SHARED_ENV), e.g. between a sweep's parallel workers.
        shared = os.environ.get(SHARED_ENV) or ""
        self._store = CallStore(self.path, shared=shared) if self.path is not None else None
        self.records: dict[str, dict[str, Any]] = self._store.read() if self._store else {}
        self.skipped_lines = self._store.skipped_lines if self._store else 0
        self.reused: Counter[str] = Counter()
        self.made: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __enter__(self) -> EvalCalls:
        if self._store is not None:
            self._store.ensure()
            self._store.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._store is not None:
            self._store.__exit__(exc_type, exc, tb)

    def final(self, key: str) -> dict[str, Any] | None:
        """The stored record of ``key`` when final (not a transient failure), else None;
        counts nothing."""
        record = self.records.get(key)
        if record is None or record.get("status") in TRANSIENT_STATUSES:
            return None
        return record

    def get(self, key: str) -> dict[str, Any] | None:
        """:meth:`final`, counting a hit as reused."""
        record = self.final(key)
        if record is not None:
            with self._lock:
                self.reused[str(record.get("kind"))] += 1
        return record

    def put(self, key: str, kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Record one finished call durably (before its result is used); returns the record as a
        later run reads it back (keys sorted at every level), so a fresh call and a stored one
        give the same downstream bytes."""
        full = json.loads(json.dumps({**record, "key": key, "kind": kind}, sort_keys=True))
        if "status" not in full:
            raise ValueError("a call record needs a status")
        if self._store is not None:
            self._store.append(full)
        with self._lock:
            self.records[key] = full
            self.made[kind] += 1
        return full

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"reused": {kind: n}, "made": {kind: n}}`` of this run."""
        return {"reused": dict(sorted(self.reused.items())), "made": dict(sorted(self.made.items()))}
