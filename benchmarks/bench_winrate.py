"""Benchmark of ``sp2dpo winrate``'s metrics: the leaderboard metrics and the length-controlled GLM
for many models of 805 annotations each.

Synthetic models are made from the 4 shipped AlpacaEval annotation files (model ``k`` starts from
file ``k % 4``): preferences are perturbed (``p + N(0, 0.1)``, clipped to [0, 1]) and each
``output_2`` is cut or padded to ``len * U(0.5, 1.5)`` characters, with a fixed seed. The official
``length_controlled_v1`` path uses synthetic ``instruction_difficulty.csv`` / ``df_gamed.csv``
(``N(0, 1)`` difficulties; the 4 real files as 3,220 gamed rows), read once like the CLI does.

Prints one JSON object: total and per-model seconds (wall and CPU) of the plain metrics, the
offline LC estimate and the official LC, the 1-minute load average and the CPU count. No
pass/fail: timings are reported, not asserted. Runs in-process after the imports (timed apart).

Usage: ``python benchmarks/bench_winrate.py [--models 200] [--seed 0]``
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

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT / "data" / "evalsets" / "alpaca_eval"
SOURCES = ["alpaca-7b", "gpt-3.5-turbo-1106", "OpenHermes-2.5-Mistral-7B", "gpt4_gamed"]


def synthetic_models(bases: list[pd.DataFrame], n_models: int, seed: int) -> list[pd.DataFrame]:
    """``n_models`` annotation frames: perturbed preferences and output_2 lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_models):
        base = bases[k % len(bases)]
        p = np.clip(base["preference"].to_numpy() - 1 + rng.normal(0, 0.1, len(base)), 0, 1)
        factor = rng.uniform(0.5, 1.5, len(base))
        texts = [
            (t * (1 + int(f)))[: max(1, int(len(t) * f))]
            for t, f in zip(base["output_2"], factor, strict=True)
        ]
        out.append(base.assign(preference=1 + p, output_2=texts, generator_2=f"synthetic-{k}"))
    return out


def official_files(tmp: Path, bases: list[pd.DataFrame], seed: int) -> tuple[Path, Path]:
    """Synthetic Hub files in AlpacaEval's formats (see the module docstring)."""
    rng = np.random.default_rng(seed + 1)
    difficulty = rng.normal(0, 1, 805)
    difficulty_path = tmp / "instruction_difficulty.csv"
    pd.DataFrame({"instruction_difficulty": difficulty},
                 index=pd.RangeIndex(805, name="index")).to_csv(difficulty_path)
    parts = []
    for name, base in zip(SOURCES, bases, strict=True):
        delta = (base["output_1"].str.len() - base["output_2"].str.len()).astype(float)
        parts.append(pd.DataFrame({
            "index": np.arange(805), "preference": base["preference"].to_numpy() - 1,
            "std_delta_len": (delta / delta.std()).to_numpy(), "instruction_difficulty": difficulty,
            "not_gamed_baseline": False, "model": name,
        }))
    gamed_path = tmp / "df_gamed.csv"
    pd.concat(parts, ignore_index=True).to_csv(gamed_path, index=False)
    return difficulty_path, gamed_path


def timed(fn, items) -> tuple[list, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    results = [fn(x) for x in items]
    return results, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (ALPACA / "gpt4_1106_preview.json.gz").exists():
        sys.exit(f"{ALPACA} missing: run `dvc pull evalsets.dvc` first")

    t0 = time.perf_counter()
    from sp2dpo.evaluate.benchmarks import alpaca, winrate
    from sp2dpo.evaluate.benchmarks import lc as lc_glm

    import_s = time.perf_counter() - t0
    bases = [
        alpaca.read_annotations(
            ALPACA / "annotations" / f"{m}.weighted_alpaca_eval_gpt4_turbo.annotations.json.gz"
        )
        for m in SOURCES
    ]
    reference = alpaca.read_model_outputs(ALPACA / "gpt4_1106_preview.json.gz")
    models = synthetic_models(bases, args.models, args.seed)
    index = [alpaca.match_reference(m, reference) for m in models]

    with tempfile.TemporaryDirectory() as tmp:
        official = lc_glm.OfficialLCInputs.read(*official_files(Path(tmp), bases, args.seed))

    phases = {}
    _, w, c = timed(winrate.head_to_head, models)
    phases["plain_metrics"] = (w, c)
    offline, w, c = timed(lc_glm.length_controlled_winrate, models)
    phases["lc_offline_estimate"] = (w, c)
    v1, w, c = timed(
        lambda mi: lc_glm.length_controlled_winrate(mi[0], official, mi[1]),
        list(zip(models, index, strict=True)),
    )
    phases["lc_length_controlled_v1"] = (w, c)

    n = len(models)
    result = {
        "benchmark": "winrate",
        "models": n,
        "annotations_per_model": 805,
        "gamed_rows": len(official.df_gamed),
        "seconds": {
            name: {
                "total_wall": round(w, 3),
                "total_cpu": round(c, 3),
                "per_model_wall": round(w / n, 5),
            }
            for name, (w, c) in phases.items()
        },
        "lc_offline_mean": round(float(np.mean([r.winrate for r in offline])), 3),
        "lc_v1_mean": round(float(np.mean([r.winrate for r in v1])), 3),
        "import_s": round(import_s, 3),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
