"""Benchmark: fetch + filter throughput on a synthetic 60k-row snapshot in the HF schema.

Prints one JSON object. Reply lengths follow the medians of the shipped H4 sample (prompt 372,
chosen 881, rejected 609 characters); 11 duplicate ids and ~100 empty replies are planted, as in
the full corpus. Usage: ``python benchmarks/bench_fetch_filter.py [--rows 60000]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from sp2dpo import data
from sp2dpo.core.config import DataConfig, FilterConfig

WORDS = "the model answer should explain each step clearly and cite sources where relevant".split()


def text(rng: random.Random, chars: int) -> str:
    out, size = [], 0
    while size < chars:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def synthetic_records(rows: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    records: list[dict] = []
    for i in range(rows):
        prompt = f"[{i}] " + text(rng, 372)
        chosen = "" if i % 1650 == 7 else text(rng, 881)
        rejected = "" if i % 800 == 3 else text(rng, 609)
        user = {"content": prompt, "role": "user"}
        records.append({
            "prompt": prompt,
            # every 5000th row repeats the previous row's id: 12 duplicates in 60k rows
            "prompt_id": records[-1]["prompt_id"] if i % 5000 == 1 else data.prompt_id_of(prompt),
            "chosen": [user, {"content": chosen, "role": "assistant"}],
            "rejected": [user, {"content": rejected, "role": "assistant"}],
            "messages": [user, {"content": chosen, "role": "assistant"}],
            "score_chosen": float(rng.randint(4, 20)) / 2,
            "score_rejected": float(rng.randint(2, 8)) / 2,
        })
    return records


def time_fetch_filter(path: Path, workdir: Path) -> dict:
    start = time.perf_counter()
    fetch_summary = data.run_fetch(
        DataConfig(path=str(path)), data.FetchPaths(workdir / "fetched.parquet", workdir / "fetch.json")
    )
    mid = time.perf_counter()
    counts = data.run_filter(
        FilterConfig(),
        data.FilterPaths(workdir / "fetched.parquet", workdir / "filtered.parquet", workdir / "filter.json"),
    )
    end = time.perf_counter()
    return {
        "format": "".join(path.suffixes),
        "input_mb": round(path.stat().st_size / 2**20, 1),
        "fetch_s": round(mid - start, 3),
        "filter_s": round(end - mid, 3),
        "total_s": round(end - start, 3),
        "rows_per_s": round(fetch_summary["rows"] / (end - start)),
        "kept": counts["kept"],
        "dropped": counts["dropped"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=60_000)
    args = parser.parse_args()
    records = synthetic_records(args.rows)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pd.DataFrame(records).to_parquet(tmp / "snapshot.parquet")
        with open(tmp / "snapshot.jsonl", "w") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
        del records
        for name in ("snapshot.parquet", "snapshot.jsonl"):
            results.append(time_fetch_filter(tmp / name, tmp))
    print(json.dumps({
        "benchmark": "fetch_filter",
        "rows": args.rows,
        "target_s": 10.0,
        "results": results,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "python": platform.python_version(),
        "cpus": __import__("os").cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
