"""Tests for the call log (sp2dpo.llm.callstore) and the run's planning helpers."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sp2dpo.annotate.plan import call_key, select_pairs
from sp2dpo.core import config
from sp2dpo.core.config import ConfigError
from sp2dpo.llm.callstore import CallStore

ROOT = Path(__file__).resolve().parents[1]


def test_concurrent_appends_are_whole_lines(tmp_path):
    path = tmp_path / "log.jsonl"  # a one-file store (the earlier layout)
    with CallStore(path) as log:
        def write(t):
            for i in range(50):
                log.append({"key": f"{t}-{i}", "status": "ok", "raw_response": "x" * 5000})

        threads = [threading.Thread(target=write, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    records = CallStore(path).read()
    assert len(records) == 400 and len(path.read_text().splitlines()) == 400


def test_torn_and_corrupt_lines_are_ignored_and_the_log_stays_appendable(tmp_path):
    path = tmp_path / "log.jsonl"
    with CallStore(path) as log:
        log.append({"key": "a", "status": "ok"})
    with open(path, "ab") as fh:
        fh.write(b'{"key": "b", "sta')  # killed mid-write
    reader = CallStore(path)
    assert set(reader.read()) == {"a"} and reader.skipped_lines == 1
    with CallStore(path) as log:  # the torn line is terminated, not glued to the next record
        log.append({"key": "c", "status": "timeout"})
    reader = CallStore(path)
    assert set(reader.read()) == {"a", "c"} and reader.skipped_lines == 1
    path.write_bytes(path.read_bytes() + b"not json\n[1, 2]\n")
    assert set(CallStore(path).read()) == {"a", "c"}


def test_newest_record_of_a_key_wins(tmp_path):
    path = tmp_path / "log.jsonl"
    with CallStore(path) as log:
        log.append({"key": "a", "status": "timeout"})
        log.append({"key": "a", "status": "ok"})
    assert CallStore(path).read()["a"]["status"] == "ok"


def test_a_folder_store_adds_one_immutable_segment_per_run(tmp_path):
    """DVC versions the folder incrementally: a run never rewrites an old segment, a run that
    makes no call writes none, and the later segment's record of a key wins."""
    store = tmp_path / "calls"
    with CallStore(store) as log:
        log.append({"key": "a", "status": "timeout", "transient": True})
        log.append({"key": "b", "status": "ok"})
    first = sorted(store.iterdir())
    assert len(first) == 1
    before = first[0].read_bytes()
    with CallStore(store):
        pass  # nothing made: no segment
    assert sorted(store.iterdir()) == first
    with CallStore(store) as log:
        log.append({"key": "a", "status": "ok"})
    segments = sorted(store.iterdir())
    assert len(segments) == 2 and segments[0].read_bytes() == before
    assert {k: r["status"] for k, r in CallStore(store).read().items()} == {"a": "ok", "b": "ok"}
    # An earlier single-file log (extra) and a shared live store are read too.
    legacy = tmp_path / "calls.jsonl"
    legacy.write_text('{"key": "c", "status": "ok"}\n')
    shared = tmp_path / "shared"
    with CallStore(store, extra=(legacy,), shared=shared) as log:
        log.append({"key": "d", "status": "ok"})
    assert set(CallStore(store, extra=(legacy,)).read()) == {"a", "b", "c", "d"}
    assert set(CallStore(tmp_path / "elsewhere", shared=shared).read()) == {"d"}


def test_a_run_does_not_read_back_what_it_wrote_but_sees_other_runs(tmp_path):
    """At 540k calls a run that parsed and kept every record it appended held gigabytes: its own
    segment is not re-read, yet it still knows it holds those records, and another run's records
    (another process writing the same folder, or the shared store) are seen as fresh."""
    store, shared = tmp_path / "calls", tmp_path / "shared"
    mine = CallStore(store, shared=shared)
    mine.read()
    with mine:
        for i in range(50):
            mine.append({"key": f"k{i}", "status": "ok", "answer": "x" * 100})
        assert mine.refresh() == 0 and mine.fresh("k1") == []
        assert mine.holds({"key": "k1", "status": "ok", "answer": "x" * 100})
        assert not mine.holds({"key": "k1", "status": "ok", "answer": "y"})
        with CallStore(tmp_path / "other", shared=shared) as other:
            other.append({"key": "z", "status": "ok"})
        assert mine.fresh("z") == [{"key": "z", "status": "ok"}]
        assert mine.adopt({"key": "z", "status": "ok"}) and not mine.adopt({"key": "z", "status": "ok"})
    assert len(CallStore(store).read()) == 51


def test_concurrent_appenders_share_fsyncs_and_each_returns_only_once_on_disk(tmp_path, monkeypatch):
    """Group commit: with one fsync per line (a few ms on a real disk) the store capped annotate
    at ~300 calls/s. Each append still returns only after an fsync that covers its line."""
    import os
    import time

    real_fsync, synced, calls = os.fsync, [0], [0]

    def slow_fsync(fd):
        size = os.fstat(fd).st_size
        time.sleep(0.01)
        real_fsync(fd)
        calls[0] += 1
        synced[0] = max(synced[0], size)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    store = tmp_path / "calls"
    late: list[str] = []

    def work(t: int, log: CallStore) -> None:
        for i in range(10):
            log.append({"key": f"{t}-{i}", "status": "ok"})
            segment = next(store.glob("seg-*.jsonl"))
            text = segment.read_bytes()
            end = text.index(f'"{t}-{i}"'.encode()) + 1
            if synced[0] < end:
                late.append(f"{t}-{i}")

    with CallStore(store) as log:
        threads = [threading.Thread(target=work, args=(t, log)) for t in range(16)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert late == []
    assert calls[0] < 130  # 160 appends share fsyncs (one per append, 161, without group commit)
    assert len(CallStore(store).read()) == 160


def test_a_slim_read_keeps_only_the_fields_asked_for(tmp_path):
    store = tmp_path / "calls"
    with CallStore(store) as log:
        log.append({"key": "a", "status": "ok", "raw_response": {"big": "x" * 1000}, "category": "Style"})
        log.append({"key": "b", "status": "timeout", "transient": True, "raw_response": None})
    again = CallStore(store)
    slim = again.read(["category"])
    assert slim == {"a": {"key": "a", "status": "ok", "category": "Style"},
                    "b": {"key": "b", "status": "timeout", "transient": True}}
    assert again.holds(slim["a"])  # the store's own record, as read
    assert CallStore(store).read()["a"]["raw_response"] == {"big": "x" * 1000}


def test_segments_are_numbered_and_written_in_key_order(tmp_path):
    """The same calls give the same segment bytes whatever order they finished in (the store is
    a DVC output a re-run must reproduce); numbers are claimed exclusively, after older names."""
    contents = []
    for order in (["c", "a", "b"], ["b", "c", "a"]):
        store = tmp_path / "-".join(order)
        with CallStore(store) as log:
            for key in order:
                log.append({"key": key, "status": "ok", "answer": key.upper()})
        [segment] = store.iterdir()
        assert segment.name == "seg-000001.jsonl"
        contents.append(segment.read_bytes())
    assert contents[0] == contents[1]
    assert [line[:11] for line in contents[0].decode().splitlines()] == ['{"answer": '] * 3
    assert list(CallStore(tmp_path / "c-a-b").read()) == ["a", "b", "c"]
    # A number another run holds is skipped; earlier layouts' names are read before seg-*.
    store = tmp_path / "mixed"
    store.mkdir()
    (store / "20260101T000000000000Z-1-abcdef.jsonl").write_text('{"key": "a", "status": "timeout"}\n')
    (store / "seg-000002.jsonl").write_text('{"key": "b", "status": "ok"}\n')
    with CallStore(store) as log:
        log.append({"key": "a", "status": "ok"})
    assert (store / "seg-000003.jsonl").exists()
    assert {k: r["status"] for k, r in CallStore(store).read().items()} == {"a": "ok", "b": "ok"}


def test_call_key_covers_content_teacher_template_and_decoding():
    base = dict(prompt_id="p", pair_sha256="c", teacher_id="t", model="m", variant="v1",
                template_sha256="s", decode={"temperature": 0.1})
    key = call_key(**base)
    assert len(key) == 64 and key == call_key(**base)
    for field, value in [("pair_sha256", "c2"), ("teacher_id", "t2"), ("model", "m2"), ("variant", "v2"),
                         ("template_sha256", "s2"), ("decode", {"temperature": 0.2})]:
        assert call_key(**{**base, field: value}) != key, field


def test_subset_is_deterministic_and_grows_monotonically():
    pairs = pd.DataFrame({"prompt_id": [f"id{i}" for i in range(50)], "prompt": "p", "chosen": "c",
                          "rejected": "r"})
    small = select_pairs(pairs, 5, 42)
    assert list(small["prompt_id"]) == list(select_pairs(pairs.sample(frac=1, random_state=1), 5, 42)["prompt_id"])
    assert set(small["prompt_id"]) < set(select_pairs(pairs, 12, 42)["prompt_id"])
    assert set(small["prompt_id"]) != set(select_pairs(pairs, 5, 7)["prompt_id"])
    assert len(select_pairs(pairs, None, 42)) == 50


def test_real_params_and_shipped_teacher_profiles_load():
    params = config.load(ROOT / "params.yaml")
    assert [t.backend for t in params.teachers] == ["local", "local"]
    assert [v.name for v in params.prompts.variants] == ["v1", "v2", "v3"]
    assert params.decoding.max_tokens == 64 and params.annotate.max_pairs >= 1
    # A profile is also a params file on its own (`sp2dpo annotate --params profiles/...`).
    paper = config.load(ROOT / "profiles/paper-teachers.yaml")
    assert [(t.id, t.model, t.api_key_env) for t in paper.teachers] == [
        ("qwen", "qwen-max-2025-01-25", "QWEN_API_KEY"),
        ("openai", "gpt-5-mini-2025-08-07", "OPENAI_API_KEY"),
        ("gemini", "gemini-2.0-flash", "GEMINI_API_KEY"),
    ]
    assert all(t.price_in_per_m > 0 and t.rpm for t in paper.teachers)
    config.load(ROOT / "profiles/local-servers.yaml")


def test_panels_are_checked_when_params_load(tmp_path):
    cfg = tmp_path / "params.yaml"
    cfg.write_text(yaml.safe_dump({"teachers": []}))
    with pytest.raises(ConfigError, match="`teachers` is empty"):
        config.load(cfg)
    twice = {"id": "x", "backend": "local", "model": "local:x"}
    cfg.write_text(yaml.safe_dump({"teachers": [twice, twice]}))
    with pytest.raises(ConfigError, match="repeated: x"):
        config.load(cfg)
    cfg.write_text(yaml.safe_dump({"teachers": {"id": "x"}}))
    with pytest.raises(ConfigError, match="teachers: expected a list"):
        config.load(cfg)
    cfg.write_text(yaml.safe_dump({"teachers": [twice], "annotate": {"redo_statuses": ["ok"]}}))
    with pytest.raises(ConfigError, match="redo_statuses: ok not allowed"):
        config.load(cfg)
    # The stage that does not read the panel does not check it.
    cfg.write_text(yaml.safe_dump({"teachers": [twice, twice]}))
    assert config.load(cfg, sections=["aggregate"]).aggregate.prompt_operator == "median"


def test_subset_is_independent_of_beta_random(h4_sample):
    """Regression: the subset hash once equalled beta_random's hash, so the annotated subset was
    exactly the pairs with the smallest random betas. The mean U[0,1) draw behind beta_random over
    a subset must look like that of any random subset."""
    import numpy as np

    from sp2dpo.aggregate.estimators import uniform_from_ids
    from sp2dpo.data import read_snapshot

    pairs = read_snapshot(h4_sample)
    subset = select_pairs(pairs, 50, 42)
    u = uniform_from_ids(subset["prompt_id"], 42)
    assert 0.35 < float(np.mean(u)) < 0.65  # the correlated version gave ~0.05


def test_an_earlier_single_file_log_is_imported_once(tmp_path):
    legacy = tmp_path / "calls.jsonl"
    legacy.write_text('{"key": "a", "status": "ok"}\n')
    store = CallStore(tmp_path / "calls")
    first = store.import_log(legacy)
    assert first is not None and first.name.startswith("00000000T") and store.import_log(legacy) is None
    assert set(store.read()) == {"a"} and len(list((tmp_path / "calls").iterdir())) == 1
