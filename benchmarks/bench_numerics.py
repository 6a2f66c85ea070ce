"""Benchmark of the pinned CPU numerics (sp2dpo.numerics) against the CPU's own kernels; prints
one JSON object.

Each round starts one worker process per mode (``SP2DPO_NUMERICS=pinned`` and ``native``,
alternating which goes first) that times the offline default's model work on the packaged
models: a LoRA-sized training step of SmolLM2-135M (forward and backward over a batch of 2 x
``--length`` tokens), greedy generation of 32 tokens for a batch of 8 prompts, and one forward
pass of the gemma-3-270m judge over ``--judge-length`` tokens. The JSON has each mode's median
per part, the pinned / native ratio per part, and the kernels each mode ran (AVX2 vs the CPU's).

Usage: python benchmarks/bench_numerics.py [--rounds 3] [--steps 4] [--length 256] [--judge-length 1536]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

WORKER = r"""
import json, sys, time
import sp2dpo
import torch
from sp2dpo.llm import models
steps, length, judge_length = map(int, sys.argv[1:4])
torch.manual_seed(0)
out = {"cpu_capability": str(torch.backends.cpu.get_cpu_capability()), "threads": torch.get_num_threads()}
model, tok = models.load_causal_lm("local:smollm2-135m-instruct")
ids = torch.randint(100, 20000, (2, length))
times = []
for _ in range(steps):
    t = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
out["train_step_s"] = sorted(times)[len(times) // 2]
prompts = [f"Write one sentence about the number {i}." for i in range(8)]
batch = tok(prompts, return_tensors="pt", padding=True)
t = time.perf_counter()
with torch.inference_mode():
    model.generate(**batch, max_new_tokens=32, do_sample=False, pad_token_id=tok.pad_token_id)
out["generate_s"] = time.perf_counter() - t
judge, _ = models.load_causal_lm("local:gemma3-270m")
jids = torch.randint(100, 20000, (1, judge_length))
t = time.perf_counter()
with torch.inference_mode():
    judge(input_ids=jids, logits_to_keep=1)
out["judge_forward_s"] = time.perf_counter() - t
print(json.dumps(out))
"""

PARTS = ("train_step_s", "generate_s", "judge_forward_s")


def _worker(mode: str, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    env.update({"SP2DPO_NUMERICS": mode, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, str(args.steps), str(args.length), str(args.judge_length)],
        env=env, capture_output=True, text=True, timeout=1800, check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--judge-length", type=int, default=1536)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"pinned": [], "native": []}
    started = time.perf_counter()
    for r in range(args.rounds):
        order = ("pinned", "native") if r % 2 == 0 else ("native", "pinned")
        for mode in order:
            runs[mode].append(_worker(mode, args))
    medians = {
        mode: {
            **{part: statistics.median(run[part] for run in results) for part in PARTS},
            "cpu_capability": results[0]["cpu_capability"],
            "threads": results[0]["threads"],
        }
        for mode, results in runs.items()
    }
    print(json.dumps({
        "benchmark": "numerics",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "settings": vars(args),
        "median": medians,
        "pinned_over_native": {p: medians["pinned"][p] / medians["native"][p] for p in PARTS},
        "wall_s": time.perf_counter() - started,
    }, indent=2))


if __name__ == "__main__":
    main()
