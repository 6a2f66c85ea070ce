"""Benchmark: annotate throughput (calls/s) against a loopback server with a fixed latency.

The scripted server of ``tests/fault_server.py`` answers every chat-completions request after a
fixed delay (default 200 ms). For each concurrency (``max_concurrency`` of the one teacher) the
real code path runs: plan, render, HTTP call, parse, append + fsync to the call log, then the
call table and report. ``calls_per_s`` times the calling phase (:func:`sp2dpo.annotate.execute.execute`);
``bound_calls_per_s`` is concurrency / latency, the ideal; ``efficiency`` their ratio (target
>= 0.9 at 32). ``end_to_end_s`` adds planning, the call table and the report.

Prints one JSON object. Usage:
``python benchmarks/bench_annotate.py [--latency 0.2] [--concurrency 1 8 32] [--seconds 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sp2dpo import annotate
from sp2dpo.annotate.execute import execute
from sp2dpo.annotate.plan import plan_calls
from sp2dpo.annotate.prompts import load_variants
from sp2dpo.core import artifacts, config, schemas
from sp2dpo.llm.callstore import CallStore
from sp2dpo.llm.teachers import RetryingCaller
from tests.fault_server import FaultServer, pairs_frame, params, teacher


def bench(server: FaultServer, concurrency: int, calls: int, workdir: Path) -> dict:
    pairs_path = workdir / "pairs.parquet"
    pairs_frame(["ok"] * calls).to_parquet(pairs_path)
    cfg_path = workdir / "params.yaml"
    cfg = params([teacher(server, max_concurrency=concurrency)], variants=1, timeout_s=30)
    cfg_path.write_text(yaml.safe_dump(cfg))

    # The calling phase alone, through the same functions the stage uses.
    p = config.load(cfg_path)
    variants = load_variants(p.prompts)
    pairs = artifacts.read_table(pairs_path, schemas.PairsToAnnotate)
    specs = plan_calls(pairs, p.teachers, variants, p.decoding)
    teachers = [RetryingCaller(p.teachers[0], p.decoding)]
    store = CallStore(workdir / "calls")
    start = time.perf_counter()
    with store:
        execute(specs, pairs, teachers, variants, store, progress=False)
    elapsed = time.perf_counter() - start
    assert len(store.read()) == calls

    # End to end on a fresh store (plan, calls, call table, report).
    start = time.perf_counter()
    paths = annotate.AnnotatePaths(pairs=pairs_path, out=workdir / "e2e.parquet")
    summary = annotate.run(p.teachers, p.prompts, p.decoding, p.annotate, paths)
    end_to_end = time.perf_counter() - start
    assert summary["status"]["ok"] == calls

    bound = concurrency / server.latency_s
    return {
        "concurrency": concurrency,
        "calls": calls,
        "calls_s": round(elapsed, 3),
        "calls_per_s": round(calls / elapsed, 1),
        "bound_calls_per_s": round(bound, 1),
        "efficiency": round(calls / elapsed / bound, 3),
        "end_to_end_s": round(end_to_end, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency in seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=4.0, help="ideal duration of each run")
    args = parser.parse_args()
    results = []
    with FaultServer(latency_s=args.latency) as server:
        for concurrency in args.concurrency:
            calls = max(concurrency, int(args.seconds * concurrency / args.latency))
            with tempfile.TemporaryDirectory() as tmp:
                results.append(bench(server, concurrency, calls, Path(tmp)))
    print(json.dumps({
        "benchmark": "annotate_http_throughput",
        "server_latency_s": args.latency,
        "results": results,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
