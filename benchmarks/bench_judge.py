"""Benchmark: pairwise-judge throughput (items/s) against a loopback server with a fixed latency.

The scripted server of ``tests/fault_server.py`` answers every chat-completions request after a
fixed delay (default 50 ms) with one label and its top logprobs, like an OpenAI judge asked for
``logprobs: true, top_logprobs: 5``. For each concurrency (``judge.max_concurrency``) the real
code path runs: side order, prompt rendering, HTTP call (rate limiter, retry loop), logprob
parsing, annotation records and the summary (:meth:`sp2dpo.evaluate.judges.pairwise.PairwiseJudge.annotate`
on :class:`sp2dpo.evaluate.judges.engine.JudgeEngine`).
``bound_items_per_s`` is concurrency / latency, the ideal; ``efficiency`` their ratio.

Prints one JSON object. Usage:
``python benchmarks/bench_judge.py [--latency 0.05] [--concurrency 1 8 32] [--seconds 3]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sp2dpo.core.config import DecodingConfig, TeacherConfig, build
from sp2dpo.evaluate.judges.engine import JudgeEngine
from sp2dpo.evaluate.judges.pairwise import PairwiseJudge
from tests.fault_server import FaultServer


def responder(body: dict) -> tuple[str, list[dict]]:
    """A judge preferring the model's answer with probability 0.75."""
    user = body["messages"][-1]["content"]
    found = re.search(r"<answer_([AB])>\nmodel answer", user)
    mine = found.group(1) if found else "A"
    other = "B" if mine == "A" else "A"
    return mine, [{"token": mine, "logprob": math.log(0.75)},
                  {"token": other, "logprob": math.log(0.25)}]


def items(n: int) -> list[tuple[dict, dict]]:
    out = []
    for i in range(n):
        instruction = f"Instruction {i}: explain topic {i} briefly."
        out.append((
            {"instruction": instruction, "output": f"reference answer {i} " * 20,
             "generator": "gpt4_1106_preview", "dataset": "bench"},
            {"instruction": instruction, "output": f"model answer {i} " * 20,
             "generator": "bench-model", "dataset": "bench"},
        ))
    return out


def bench(server: FaultServer, concurrency: int, n: int) -> dict:
    judge = build(TeacherConfig, {
        "id": "bench-judge", "backend": "openai", "preset": "generic", "model": "bench",
        "base_url": server.base_url, "max_concurrency": concurrency,
        "extra_body": {"logprobs": True, "top_logprobs": 5}}, "judge")
    decoding = DecodingConfig(temperature=0.0, top_p=1.0, max_tokens=1, timeout_s=30.0)
    runner = PairwiseJudge(JudgeEngine(judge), decoding)
    pairs = items(n)
    start = time.perf_counter()
    annotations, summary = runner.annotate(pairs)
    elapsed = time.perf_counter() - start
    assert summary["status"] == {"ok": n}, summary["status"]
    assert all(abs(a["preference"] - 1.75) < 1e-9 for a in annotations)
    bound = concurrency / server.latency_s
    return {
        "concurrency": concurrency,
        "items": n,
        "seconds": round(elapsed, 3),
        "items_per_s": round(n / elapsed, 1),
        "bound_items_per_s": round(bound, 1),
        "efficiency": round(n / elapsed / bound, 3),
        "mean_latency_s": round(summary["mean_latency_s"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency", type=float, default=0.05, help="server latency in seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=3.0, help="ideal duration of each run")
    args = parser.parse_args()
    results = []
    with FaultServer(latency_s=args.latency, responder=responder) as server:
        for concurrency in args.concurrency:
            n = max(concurrency, int(args.seconds * concurrency / args.latency))
            results.append(bench(server, concurrency, n))
    print(json.dumps({
        "benchmark": "judge_http_throughput",
        "server_latency_s": args.latency,
        "results": results,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
