"""Concurrent runs on one call store: every call paid once, every line whole.

The inter-process locks (:mod:`sp2dpo.core.locks`), the store's tail reads and claims
(:mod:`sp2dpo.llm.callstore`), and two real ``sp2dpo annotate`` processes against one slow
fault-injection server, on one store folder and on one shared store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sp2dpo.core.locks import FileLock, KeyLocks
from sp2dpo.llm.callstore import LOCK_DIR_ENV, SHARED_CLAIMS, SHARED_ENV, CallStore
from tests.conftest import ROOT, annotate_file, stop_process, tool_env
from tests.fault_server import FaultServer, pairs_frame, params, teacher

#: Limit (s) of one helper subprocess, and of two annotate runs together.
PROC_TIMEOUT = 120


def _python(code: str, *args: str) -> subprocess.Popen:
    """``python -c code args`` with the repository importable, stdout piped (text)."""
    env = {**tool_env(), "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _finish(procs: list[subprocess.Popen], timeout: float = PROC_TIMEOUT) -> list[tuple[str, str]]:
    """Wait for every process (stopping all of them past ``timeout`` s); their (stdout, stderr)."""
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for proc in procs:
            left = max(deadline - time.monotonic(), 0.1)
            try:
                outputs.append(proc.communicate(timeout=left))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{proc.args} still running after {timeout} s") from None
    finally:
        for proc in procs:
            stop_process(proc, timeout=5)
    return outputs


# ------------------------------------------------------------------------------------ FileLock

COUNTER = """
import sys, time
from sp2dpo.core.locks import FileLock
lock, counter, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for _ in range(n):
    with FileLock(lock):
        with open(counter) as fh:
            value = int(fh.read())
        time.sleep(0.0005)  # widen the read-modify-write window
        with open(counter, "w") as fh:
            fh.write(str(value + 1))
"""


@pytest.mark.timeout(180)
def test_file_lock_serialises_read_modify_write_across_processes(tmp_path):
    counter, lock = tmp_path / "counter", tmp_path / "locks" / "counter.lock"
    counter.write_text("0")
    n = 150
    procs = [_python(COUNTER, str(lock), str(counter), str(n)) for _ in range(2)]
    for proc, (_, err) in zip(procs, _finish(procs), strict=True):
        assert proc.returncode == 0, err
    assert int(counter.read_text()) == 2 * n


@pytest.mark.timeout(60)
def test_file_lock_is_reentrant_thread_safe_and_times_out(tmp_path):
    path = tmp_path / "sub" / "a.lock"
    lock = FileLock(path, timeout=5)
    with lock:
        with lock:  # reentrant in the holding thread
            assert lock.held and path.exists()
        assert lock.held
        # Another object (another descriptor) on the same file waits, then names the file.
        with pytest.raises(TimeoutError, match=r"a\.lock: lock not acquired within 0\.2 s"):
            with FileLock(path, timeout=0.2):
                pass
        # Another thread waits for the holding thread (then times out), and cannot release it.
        short = FileLock(path, timeout=0.2)
        lock.timeout = 0.2
        assert [type(e) for e in _in_thread(lock.acquire)] == [TimeoutError]
        assert [type(e) for e in _in_thread(lock.release)] == [RuntimeError]
        assert [type(e) for e in _in_thread(short.acquire)] == [TimeoutError]
    assert not lock.held
    with FileLock(path, timeout=0.2):  # free again
        pass
    with pytest.raises(RuntimeError, match="more often than acquired"):
        lock.release()


def _in_thread(fn: Any) -> list[BaseException]:
    """Run ``fn`` in another thread; what it raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return errors


# ------------------------------------------------------------------------------------ KeyLocks

HOLDER = """
import sys, time
from sp2dpo.core.locks import KeyLocks
claims = KeyLocks(sys.argv[1])
assert claims.try_claim(sys.argv[2])
print("claimed", flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(120)
def test_a_claim_dies_with_the_process_that_holds_it(tmp_path):
    path, key = tmp_path / "claims.lock", "ab" * 32
    holder = _python(HOLDER, str(path), key)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        with KeyLocks(path, poll_s=0.01) as claims:
            assert not claims.try_claim(key)
            with pytest.raises(TimeoutError, match=r"claims\.lock: key abababab.* not claimed"):
                claims.claim(key, timeout=0.2)
            stop = threading.Event()
            stop.set()
            assert claims.claim(key, stop=stop) is False  # a stop ends the wait
            assert claims.try_claim("cd" * 32)  # another key is free
            os.kill(holder.pid, signal.SIGKILL)  # no release, no clean-up: the kernel drops it
            holder.wait(30)
            assert claims.claim(key, timeout=30)
            assert claims.held() == sorted([key, "cd" * 32])
        assert path.exists() and path.stat().st_size == 0  # never written, never removed
    finally:
        stop_process(holder, timeout=5)
        _finish([holder])


@pytest.mark.timeout(60)
def test_claims_exclude_threads_and_objects_of_one_process(tmp_path):
    """fcntl locks belong to the process: the in-process set keeps two threads (or two objects
    on one file) from both holding a key, and closing one object keeps the other's claims."""
    path = tmp_path / "claims.lock"
    first, second = KeyLocks(path), KeyLocks(path)
    key = "0123456789abcdef" * 4
    assert first.try_claim(key) and not second.try_claim(key)
    assert [type(e) for e in _in_thread(lambda: second.claim(key, timeout=0.1))] == [TimeoutError]
    assert KeyLocks.offset(key) == 0x0123456789ABCDE and KeyLocks.offset("a") < 2**60
    assert second.try_claim("a") and second.held() == ["a"]
    second.close()
    holder = _python(HOLDER, str(path), key)  # another process still sees our claim
    try:
        assert holder.stdout is not None
        assert holder.wait(60) != 0 and "AssertionError" in holder.communicate()[1]
    finally:
        stop_process(holder, timeout=5)
    hits = []

    def claim_release() -> None:
        for _ in range(50):
            assert first.claim("shared-key", timeout=30)
            hits.append(1)
            assert len(hits) == 1, "two threads held one key"
            time.sleep(0.001)
            hits.pop()
            first.release("shared-key")

    threads = [threading.Thread(target=claim_release) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    first.release(key)
    with pytest.raises(RuntimeError, match="released but not claimed"):
        first.release(key)
    first.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.try_claim(key)


# ------------------------------------------------------------------------------ CallStore views


def test_claims_and_lock_files_are_never_in_the_store(tmp_path, monkeypatch):
    monkeypatch.delenv(SHARED_ENV, raising=False)
    monkeypatch.delenv(LOCK_DIR_ENV, raising=False)
    store = CallStore(tmp_path / "calls")
    assert tmp_path not in store.claims_file.parents
    assert store.claims_file.name.endswith(".claims.lock")
    (tmp_path / "link").symlink_to(tmp_path / "calls", target_is_directory=True)
    assert CallStore(tmp_path / "link").claims_file == store.claims_file  # by real path
    assert CallStore(tmp_path / "other").claims_file != store.claims_file
    # With a shared store, runs with different own stores claim in the shared folder.
    shared = tmp_path / "shared"
    assert CallStore(tmp_path / "a", shared=shared).claims_file == shared / SHARED_CLAIMS
    assert CallStore(tmp_path / "b", shared=shared).claims_file == shared / SHARED_CLAIMS
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    assert CallStore(tmp_path / "calls").claims_file.parent == tmp_path / "locks"
    one_file = CallStore(tmp_path / "calls.jsonl")
    assert one_file.append_lock_file.parent == tmp_path / "locks"
    with CallStore(tmp_path / "calls") as writer:
        assert writer.try_claim("k")
        writer.append({"key": "k", "status": "ok"})
        writer.release("k")
    assert [p.name for p in (tmp_path / "calls").iterdir()] == ["seg-000001.jsonl"]


class _CountingOpen:
    """``open`` that counts the files opened and the bytes read from them."""

    def __init__(self) -> None:
        self.opened = 0
        self.read = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.opened += 1
        fh = open(*args, **kwargs)  # closed by the caller's with
        counter = self
        real_read = fh.read

        class Wrapped:
            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: object) -> None:
                fh.close()

            def __getattr__(self, name: str) -> Any:
                return getattr(fh, name)

            def read(self, *a: Any) -> bytes:
                data = real_read(*a)
                counter.read += len(data)
                return data

        return Wrapped()


def test_fresh_tail_reads_only_new_complete_lines(tmp_path, monkeypatch):
    monkeypatch.delenv(SHARED_ENV, raising=False)
    folder = tmp_path / "calls"
    with CallStore(folder) as old:
        old.append({"key": "a", "status": "timeout", "transient": True})
        old.append({"key": "b", "status": "ok"})
    other = CallStore(folder).__enter__()  # another run, writing its own segment
    other.append({"key": "e", "status": "invalid_json"})
    reader = CallStore(folder)
    assert set(reader.read()) == {"a", "b", "e"} and reader.fresh("a") == []
    counting = _CountingOpen()
    monkeypatch.setattr("sp2dpo.llm.callstore.open", counting, raising=False)
    reader.refresh()
    assert (counting.opened, counting.read) == (0, 0)  # nothing new: a stat per segment

    other.append({"key": "a", "status": "ok", "answer": 1})
    line = (json.dumps({"answer": 1, "key": "a", "status": "ok"}, sort_keys=True) + "\n").encode()
    assert [r["status"] for r in reader.fresh("a")] == ["ok"]
    assert (counting.opened, counting.read) == (1, len(line))  # only the new line
    # A line still being written is left for the next look, not consumed torn.
    [segment] = [p for p in folder.iterdir() if p.name == "seg-000002.jsonl"]
    with open(segment, "ab") as fh:
        fh.write(b'{"key": "c", "stat')
    assert reader.fresh("c") == [] and reader.fresh("a") != []
    with open(segment, "ab") as fh:
        fh.write(b'us": "ok"}\n')
    assert reader.fresh("c") == [{"key": "c", "status": "ok"}]
    # The writer's canonical rewrite at close (a new file, re-read whole) loses nothing and
    # adds nothing new: not what read() saw (e), not what was fresh already (a, c) twice.
    other.append({"key": "d", "status": "ok"})
    other.__exit__(None, None, None)
    assert [len(reader.fresh(k)) for k in "abcde"] == [1, 0, 1, 1, 0]
    assert reader.holds({"key": "d", "status": "ok"})
    assert reader.read()["a"]["status"] == "ok" and reader.fresh("a") == []


def test_a_record_found_only_in_the_shared_store_is_adopted_once(tmp_path, monkeypatch):
    monkeypatch.delenv(SHARED_ENV, raising=False)
    shared = tmp_path / "shared"
    with CallStore(tmp_path / "a", shared=shared) as maker:
        maker.append({"key": "k", "status": "ok"})
    user = CallStore(tmp_path / "b", shared=shared)
    record = user.read()["k"]
    assert not user.holds(record)
    with user:
        assert user.adopt(record) and not user.adopt(record)
    assert CallStore(tmp_path / "b", shared=tmp_path / "none").read() == {"k": record}
    assert sum(1 for s in shared.glob("*.jsonl") for _ in s.open()) == 1  # not appended again


SLOW_WRITER = """
import sys, time
from sp2dpo.core.locks import FileLock
lock, path = sys.argv[1], sys.argv[2]
line = b'{"key": "slow", "status": "ok", "pad": "' + b"x" * 100000 + b'"}\\n'
with FileLock(lock), open(path, "ab", buffering=0) as fh:
    fh.write(line[:50000])  # an append that is not atomic: two writes
    print("half", flush=True)
    time.sleep(1.0)
    fh.write(line[50000:])
"""


@pytest.mark.timeout(120)
def test_one_file_store_appends_wait_for_another_process_mid_line(tmp_path, monkeypatch):
    """Another process appending to a one-file store in two writes (as on a filesystem where
    O_APPEND is not atomic) holds the append lock: our append waits instead of cutting its line."""
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    path = tmp_path / "calls.jsonl"
    with CallStore(path) as store:
        store.append({"key": "first", "status": "ok"})
        writer = _python(SLOW_WRITER, str(store.append_lock_file), str(path))
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "half"
            store.append({"key": "mine", "status": "ok"})
            _finish([writer])
        finally:
            stop_process(writer, timeout=5)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(x)["key"] for x in lines[:-1]] == ["first", "slow", "mine"]
    reader = CallStore(path)
    assert set(reader.read()) == {"first", "slow", "mine"} and reader.skipped_lines == 0


# ------------------------------------------------------------------- two annotate processes


class GatedServer(FaultServer):
    """A slow fault server that holds every answer until more requests than one run's
    ``max_concurrency`` have arrived, i.e. until both runs are calling: they overlap however
    long each takes to start."""

    def __init__(self, *, gate_after: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate_after = gate_after
        self.gate = threading.Event()

    def handle(self, headers: Any, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes, float]:
        answer = super().handle(headers, body)
        with self._lock:
            if len(self.requests) > self.gate_after:
                self.gate.set()
        self.gate.wait(30)
        return answer


N_PAIRS, VARIANTS, CONCURRENCY = 10, 3, 4


def _project(tmp_path: Path, server: FaultServer) -> tuple[Path, Path]:
    pairs = tmp_path / "pairs.jsonl"
    pairs_frame(["ok"] * N_PAIRS).to_json(pairs, orient="records", lines=True)
    cfg = tmp_path / "params.yaml"
    cfg.write_text(yaml.safe_dump(params([teacher(server, max_concurrency=CONCURRENCY)], variants=VARIANTS)))
    return pairs, cfg


def _annotate_together(tmp_path: Path, pairs: Path, cfg: Path, stores: list[Path],
                       env: dict[str, str]) -> list[dict[str, Any]]:
    """Start one ``sp2dpo annotate`` per store at once (outputs ``run<i>/``); their summaries."""
    procs = []
    for i, store in enumerate(stores):
        run = tmp_path / f"run{i}"
        cmd = [sys.executable, "-m", "sp2dpo.cli", "annotate", "--pairs", str(pairs), "--params", str(cfg),
               "--out", str(run / "calls.parquet"), "--log", str(store), "--report", str(run / "report.json")]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=env, start_new_session=True))
    outputs = _finish(procs)
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    return [json.loads(out) for out, _ in outputs]


def _whole_records(store: Path) -> list[dict[str, Any]]:
    """Every line of every segment, each a whole call record (no torn or interleaved line)."""
    records = []
    for segment in sorted(store.glob("*.jsonl")):
        data = segment.read_bytes()
        assert data.endswith(b"\n"), segment
        for line in data.split(b"\n")[:-1]:
            record = json.loads(line)
            assert {"key", "status", "prompt_id"} <= set(record) and record["status"] == "ok"
            records.append(record)
    return records


def _single_run(tmp_path: Path, pairs: Path, cfg: Path) -> bytes:
    """The call table of one uninterrupted single-process run (on its own server)."""
    with FaultServer() as server:
        plain = tmp_path / "single.yaml"
        plain.write_text(yaml.safe_dump(params([teacher(server, max_concurrency=CONCURRENCY)],
                                               variants=VARIANTS)))
        out = tmp_path / "single" / "calls.parquet"
        annotate_file(plain, pairs, out)
    return out.read_bytes()


def _env(**extra: str) -> dict[str, str]:
    env = tool_env()
    env.pop(SHARED_ENV, None)
    env.pop(LOCK_DIR_ENV, None)
    return {**env, **extra}


@pytest.mark.timeout(300)
def test_two_annotate_processes_on_one_store_pay_each_call_once(tmp_path, monkeypatch):
    monkeypatch.delenv(SHARED_ENV, raising=False)
    n_calls = N_PAIRS * VARIANTS
    store = tmp_path / "calls"
    with GatedServer(latency_s=0.3, gate_after=CONCURRENCY) as server:
        pairs, cfg = _project(tmp_path, server)
        summaries = _annotate_together(tmp_path, pairs, cfg, [store, store], _env())
        requests = list(server.requests)
    # The server answered each distinct request (model + messages) exactly once.
    per_request: dict[str, int] = {}
    for request in requests:
        body = json.dumps([request["body"]["model"], request["body"]["messages"]], sort_keys=True)
        per_request[body] = per_request.get(body, 0) + 1
    assert len(per_request) == n_calls and set(per_request.values()) == {1}
    # Both runs called (they overlapped), together exactly once per call; each has every call.
    assert [s["calls"] for s in summaries] == [n_calls, n_calls]
    assert all(s["calls_made"] > 0 for s in summaries), summaries
    assert sum(s["calls_made"] for s in summaries) == n_calls
    # The store: one segment per run, every key exactly once, every line a whole record.
    records = _whole_records(store)
    assert len(records) == n_calls == len({r["key"] for r in records})
    assert sorted(p.name for p in store.iterdir()) == ["seg-000001.jsonl", "seg-000002.jsonl"]
    assert set(CallStore(store).read()) == {r["key"] for r in records}
    # The two call tables are equal, and equal to a single-process run's (byte for byte).
    tables = [(tmp_path / f"run{i}" / "calls.parquet").read_bytes() for i in range(2)]
    assert tables[0] == tables[1] == _single_run(tmp_path, pairs, cfg)


@pytest.mark.timeout(300)
def test_two_runs_sharing_a_live_store_pay_each_call_once_and_stay_self_contained(tmp_path, monkeypatch):
    monkeypatch.delenv(SHARED_ENV, raising=False)
    n_calls = N_PAIRS * VARIANTS
    shared, stores = tmp_path / "shared", [tmp_path / "a" / "calls", tmp_path / "b" / "calls"]
    with GatedServer(latency_s=0.3, gate_after=CONCURRENCY) as server:
        pairs, cfg = _project(tmp_path, server)
        summaries = _annotate_together(tmp_path, pairs, cfg, stores, _env(**{SHARED_ENV: str(shared)}))
        assert len(server.requests) == n_calls == len(server.counts)  # one request per call
    assert all(s["calls_made"] > 0 for s in summaries), summaries
    assert sum(s["calls_made"] for s in summaries) == n_calls
    # The shared store got each call once (from the run that made it).
    shared_records = _whole_records(shared)
    assert len(shared_records) == n_calls == len({r["key"] for r in shared_records})
    assert (shared / SHARED_CLAIMS).exists()
    # Each run's own store has every call exactly once, made or copied: the same bytes.
    segments = []
    for store in stores:
        records = _whole_records(store)
        assert len(records) == n_calls == len({r["key"] for r in records})
        [segment] = store.iterdir()
        segments.append(segment.read_bytes())
        assert CallStore(store, shared=tmp_path / "elsewhere").read().keys() == {r["key"] for r in records}
    assert segments[0] == segments[1]
    tables = [(tmp_path / f"run{i}" / "calls.parquet").read_bytes() for i in range(2)]
    assert tables[0] == tables[1] == _single_run(tmp_path, pairs, cfg)
    # A later run with its own store and the shared one calls nothing, and copies what it uses.
    with FaultServer() as late_server:
        late_cfg = tmp_path / "late.yaml"
        late_cfg.write_text(cfg.read_text().replace(server.base_url, late_server.base_url))
        monkeypatch.setenv(SHARED_ENV, str(shared))
        summary = annotate_file(late_cfg, pairs, tmp_path / "late" / "calls.parquet")
        assert summary["calls_made"] == 0 and late_server.requests == []
    monkeypatch.delenv(SHARED_ENV)
    assert len(CallStore(tmp_path / "late" / "calls").read()) == n_calls
