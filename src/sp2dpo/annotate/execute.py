"""Making the planned calls: one thread pool per teacher behind its rate limiter, each finished
call appended to the call store at once, a progress bar with the running cost.

Stopping: SIGINT (Ctrl-C) and SIGTERM stop new calls from starting; the calls in flight finish
and are stored (a reply is paid for: it is never asked again), whatever further signals arrive;
then :class:`sp2dpo.core.stopping.Interrupted` ends the stage with one line. Only SIGKILL loses calls in flight.

Concurrent runs on one store (or one shared store) never make a call twice: a worker claims a
call's key in the store before making it (:meth:`CallStore.try_claim`; a key another run holds
is put aside and waited for once the rest is done), then looks at what the store gained since
the plan (:meth:`CallStore.fresh`). A final record another run made meanwhile is used as is
(counted as cached, copied into this run's store when found only in the shared one); a
transient failure is asked again. The record is appended before the claim is released.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import sys
import threading
from collections import Counter
from typing import Any

import pandas as pd

from sp2dpo.annotate.plan import CallSpec, is_done, pair_sha256
from sp2dpo.annotate.prompts import Variant, messages_sha256
from sp2dpo.core.stopping import Interrupted, handle_signals
from sp2dpo.llm.callstore import LOG_VERSION, CallStore
from sp2dpo.llm.client import PRESETS, AuthError
from sp2dpo.llm.teachers import CallResult, RetryingCaller, signature

log = logging.getLogger(__name__)


class _Progress:
    """Counts, running cost and the progress bar, updated under one lock."""

    def __init__(self, total: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.lock = threading.Lock()
        self.ok = self.failed = 0
        self.cost = 0.0
        self.made: Counter[str] = Counter()
        self.reused: Counter[str] = Counter()
        self.bar = tqdm(total=total, desc="annotate", unit="call", disable=not enabled or total == 0,
                        file=sys.stderr, dynamic_ncols=True)

    def update(self, teacher: str, status: str, cost: float) -> None:
        with self.lock:
            self.made[teacher] += 1
            if status == "ok":
                self.ok += 1
            else:
                self.failed += 1
            self.cost += cost
            self.bar.set_postfix(ok=self.ok, failed=self.failed, cost=f"${self.cost:.4f}", refresh=False)
            self.bar.update(1)

    def reuse(self, teacher: str) -> None:
        """A call another run made meanwhile (found in the store, not made)."""
        with self.lock:
            self.reused[teacher] += 1
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _record(
    spec: CallSpec,
    pair: Any,
    teacher: RetryingCaller,
    variant: Variant,
    messages: list[dict[str, str]],
    sig: dict[str, Any],
    content_sha: str,
    result: CallResult,
) -> dict[str, Any]:
    cfg = teacher.cfg
    endpoint = None
    if cfg.backend == "openai":
        endpoint = (cfg.base_url or PRESETS[cfg.preset].base_url or "").rstrip("/")
    return {
        "v": LOG_VERSION,
        "key": spec.key,
        "prompt_id": pair.prompt_id,
        "annotator": cfg.id,
        "variant": variant.name,
        "model": cfg.model,
        "backend": cfg.backend,
        "preset": cfg.preset if cfg.backend == "openai" else None,
        "endpoint": endpoint,
        "status": result.status,
        "category": result.category,
        "magnitude": result.magnitude,
        "confidence": result.confidence,
        "response_text": result.text,
        "raw_response": result.raw,
        "error": result.error,
        "transient": result.transient,
        "attempts": result.attempts,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost_usd": round(teacher.cost(result.prompt_tokens, result.completion_tokens), 8),
        "http_status": result.http_status,
        "response_model": result.response_model,
        "system_fingerprint": result.fingerprint,
        "finish_reason": result.finish_reason,
        "template_sha256": variant.template_sha256,
        "request_sha256": messages_sha256(messages),
        "pair_sha256": content_sha,
        "decode": sig,
    }


def _timing(spec: CallSpec, teacher: RetryingCaller, variant: Variant, result: CallResult) -> dict[str, Any]:
    """What one call measured (for the run log, never the call store): latency of the last
    attempt, time from first try to final outcome (retries and waits included), finish time."""
    return {
        "key": spec.key,
        "annotator": teacher.cfg.id,
        "variant": variant.name,
        "status": result.status,
        "attempts": result.attempts,
        "latency_s": None if result.latency_s is None else round(result.latency_s, 4),
        "elapsed_s": round(result.elapsed_s, 4),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
    }


def execute(
    todo: list[CallSpec],
    pairs: pd.DataFrame,
    teachers: list[RetryingCaller | None],
    variants: list[Variant],
    store: CallStore,
    *,
    progress: bool = True,
    timings: list[dict[str, Any]] | None = None,
) -> Counter[str]:
    """Make the ``todo`` calls, appending each finished one to the (open) call ``store``, and
    what it measured (latency, attempts, finish time) to ``timings`` when given.

    Returns:
        Calls made per teacher id.

    Raises:
        AuthError: a teacher's key is missing or rejected (other teachers' calls in flight are
            still stored; nothing else starts).
        Interrupted: SIGINT or SIGTERM arrived; raised once the calls in flight are stored.
    """
    by_teacher: dict[int, list[CallSpec]] = {}
    for spec in todo:
        by_teacher.setdefault(spec.teacher, []).append(spec)
    sigs = {ti: signature(teachers[ti].cfg, teachers[ti].decoding) for ti in by_teacher}
    rows = list(pairs.itertuples(index=False))
    contents: dict[int, str] = {}
    stop = threading.Event()
    errors: list[BaseException] = []
    bar = _Progress(len(todo), progress)
    in_flight = [0]
    in_flight_lock = threading.Lock()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()
        name = signal.Signals(signum).name
        if len(received) == 1:
            log.warning("%s: stopping; waiting for %d call(s) in flight to finish and be stored",
                        name, in_flight[0])
        else:
            log.warning("%s again: still waiting for %d call(s) in flight; they are paid for and "
                        "will be stored (each ends within decoding.timeout_s)", name, in_flight[0])

    def claim_next(queue: list[CallSpec], waiting: list[CallSpec], lock: threading.Lock) -> CallSpec | None:
        """The next call whose key this worker could claim; None when none is left or on stop.
        A key another run holds is put aside, and tried again once the queue is empty."""
        while not stop.is_set():
            with lock:
                if queue:
                    spec, held_elsewhere = queue.pop(), False
                elif waiting:
                    spec, held_elsewhere = waiting.pop(0), True
                else:
                    return None
            if store.try_claim(spec.key):
                return spec
            with lock:
                waiting.append(spec)
            if held_elsewhere:
                stop.wait(0.02)  # only keys other runs are making are left: look again soon
        return None

    def worker(ti: int, queue: list[CallSpec], waiting: list[CallSpec], lock: threading.Lock) -> None:
        teacher = teachers[ti]
        try:
            while (spec := claim_next(queue, waiting, lock)) is not None:
                try:
                    # Made by another run since the plan? (A transient failure is asked again.)
                    done = [r for r in store.fresh(spec.key) if is_done(r, set())]
                    if done:
                        store.adopt(done[-1])
                        bar.reuse(teacher.cfg.id)
                        continue
                    pair = rows[spec.row]
                    variant = variants[spec.variant]
                    if spec.max_chars is None:
                        messages, truncated = variant.render(pair.prompt, pair.chosen, pair.rejected), False
                    else:
                        messages, truncated = variant.render_within(
                            pair.prompt, pair.chosen, pair.rejected, spec.max_chars
                        )
                    with in_flight_lock:
                        in_flight[0] += 1
                    try:
                        result = teacher.judge(messages, stop)
                    finally:
                        with in_flight_lock:
                            in_flight[0] -= 1
                    if result is None:  # stopped before any attempt ended: nothing paid, redone later
                        return
                    content = contents.get(spec.row) or pair_sha256(pair.prompt, pair.chosen, pair.rejected)
                    contents[spec.row] = content
                    sig = sigs[ti] if spec.max_chars is None else {**sigs[ti], "max_input_chars": spec.max_chars}
                    record = _record(spec, pair, teacher, variant, messages, sig, content, result)
                    record["truncated"] = truncated
                    store.append(record)
                finally:
                    store.release(spec.key)  # after the append: the next holder finds the record
                if timings is not None:
                    timings.append(_timing(spec, teacher, variant, result))
                bar.update(teacher.cfg.id, result.status, record["cost_usd"])
        except BaseException as exc:  # re-raised by the main thread
            errors.append(exc)
            stop.set()

    threads = []
    for ti, specs in by_teacher.items():
        queue = list(reversed(specs))  # pop() from the end keeps pair-major order
        lock = threading.Lock()
        waiting: list[CallSpec] = []
        workers = 1 if teachers[ti].cfg.backend == "local" else min(teachers[ti].cfg.max_concurrency, len(specs))
        for _ in range(workers):
            thread = threading.Thread(target=worker, args=(ti, queue, waiting, lock), daemon=True)
            thread.start()
            threads.append(thread)
    try:
        with handle_signals(on_signal):
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.2)
    finally:
        bar.close()
    if errors:
        auth = [e for e in errors if isinstance(e, AuthError)]
        raise (auth or errors)[0]
    if received:
        name = signal.Signals(received[0]).name
        made, reused = sum(bar.made.values()), sum(bar.reused.values())
        raise Interrupted(
            f"annotate stopped by {name}: {made} call(s) made now are stored in {store.path}, "
            f"{len(todo) - made - reused} not made; re-run to continue (stored calls are never made again)",
            received[0],
        )
    return bar.made
