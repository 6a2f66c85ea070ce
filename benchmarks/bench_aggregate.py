"""Benchmark of the aggregate stage: a synthetic 60,000-pair x 3-teacher x 3-variant call table
(540,000 calls, parquet) to a validated beta artifact CSV, then the reports.

Prints one JSON object: rows, phase timings (wall and CPU seconds, measured inside a fresh child
process after its imports), the child's wall time including interpreter start and imports, the
child's peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) and the 1-minute load average (wall
times on a shared machine grow with it; CPU times much less). Targets (issue #5): artifact in
under 3 s and under 2 GiB peak memory. No pass/fail here: timings are reported, not asserted.

Usage: ``python benchmarks/bench_aggregate.py [--pairs 60000] [--teachers 3] [--variants 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORIES = ["Safety", "Factuality", "Instruction", "Reasoning", "Helpfulness", "Style"]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from sp2dpo.core import config
from sp2dpo.aggregate import beta_table, read_calls, reports, screen
from sp2dpo.core.beta import validate_artifact
from sp2dpo.aggregate.table import write_csv
t_import = time.perf_counter() - t0
calls_path, out_csv, report_dir = sys.argv[1:4]
agg, beta = config.AggregateConfig(), config.BetaConfig()
wall, cpu = {}, {}


def timed(name, fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    wall[name], cpu[name] = time.perf_counter() - w, time.process_time() - c
    return out


calls = timed("read", lambda: read_calls(calls_path))
s = timed("screen", lambda: screen(calls, calls_path))
frame, info = timed("estimators", lambda: beta_table(s.panel, agg, beta))
anns, variants = s.panel.annotators, s.panel.variants
timed("validate", lambda: validate_artifact(frame, anns, variants, beta.min, beta.max))
timed("write_csv", lambda: write_csv(frame, out_csv))
wall["artifact_total"], cpu["artifact_total"] = sum(wall.values()), sum(cpu.values())


def write_reports():
    obj = reports.metrics(frame, anns, s.counts(), info)
    reports.write(frame, anns, obj, report_dir, beta.min, beta.max)


timed("reports", write_reports)
print(json.dumps({"import_s": t_import, "wall_s": wall, "cpu_s": cpu, "kept": int(len(frame)),
                  "columns": int(frame.shape[1])}))
"""


def make_calls(n_pairs: int, teachers: int, variants: int, seed: int = 0) -> pd.DataFrame:
    """A synthetic call table in the annotate stage's layout, rows shuffled."""
    rng = np.random.default_rng(seed)
    anns = [f"t{j}" for j in range(teachers)]
    n = n_pairs * teachers * variants
    frame = pd.DataFrame(
        {
            "prompt_id": np.repeat([f"{i:064x}" for i in range(n_pairs)], teachers * variants),
            "annotator": np.tile(np.repeat(anns, variants), n_pairs),
            "variant": np.tile([f"v{k + 1}" for k in range(variants)], n_pairs * teachers),
            "category": rng.choice(CATEGORIES, n),
            "magnitude": np.round(rng.random(n), 2),
            "confidence": np.round(rng.random(n), 2),
            "status": "ok",
        }
    )
    return frame.iloc[rng.permutation(n)].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=60_000)
    parser.add_argument("--teachers", type=int, default=3)
    parser.add_argument("--variants", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        calls = Path(tmp) / "calls.parquet"
        make_calls(args.pairs, args.teachers, args.variants).to_parquet(calls, index=False)
        out = Path(tmp) / "beta.csv"
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(calls), str(out), str(Path(tmp) / "reports")],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(proc.stderr)
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = {
            "benchmark": "aggregate",
            "pairs": args.pairs,
            "teachers": args.teachers,
            "variants": args.variants,
            "calls": args.pairs * args.teachers * args.variants,
            "artifact_rows": child["kept"],
            "artifact_columns": child["columns"],
            "artifact_bytes": out.stat().st_size,
            "artifact_s": round(child["wall_s"]["artifact_total"], 3),
            "artifact_cpu_s": round(child["cpu_s"]["artifact_total"], 3),
            "reports_s": round(child["wall_s"]["reports"], 3),
            "phases_wall_s": {k: round(v, 3) for k, v in child["wall_s"].items()},
            "phases_cpu_s": {k: round(v, 3) for k, v in child["cpu_s"].items()},
            "import_s": round(child["import_s"], 3),
            "child_wall_s": round(wall, 3),
            "peak_rss_mib": round(peak_kib / 1024, 1),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
