"""Benchmark: every pipeline stage at several sizes, through ``sp2dpo rehearse``.

Runs the rehearsal (the paper's configuration unless ``--params``/``-S`` say otherwise) at each
``--scales`` fraction of the full sizes in its own scratch folder under ``--root``, one after the
other, and prints one JSON object: per scale, the rehearsal's measurements. ``--from`` reads
saved ``sp2dpo rehearse --json`` outputs instead of running; ``--markdown`` prints the per-stage
table of docs/scaling.md (train and eval stages summed over their students and methods, with the
largest single run) instead of JSON.

Usage: ``python benchmarks/bench_rehearse.py --scales 0.01 0.1 [--root /tmp/rehearse] [--markdown]``
or ``python benchmarks/bench_rehearse.py --from r001.json r01.json r1.json --markdown``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("fetch", "filter", "annotate", "aggregate", "train", "eval", "report")


def rehearse(scale: float, root: Path, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "sp2dpo.cli", "rehearse", "--scale", str(scale), "--json",
           "--workdir", str(root / f"scale-{scale}"), *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=6 * 3600)
    return json.loads(done.stdout)


def grouped(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Stages by group (``train@...`` -> train): runs, summed wall time, largest single wall time,
    peak memory, summed disk and files, requests."""
    out: dict[str, dict[str, Any]] = {}
    for name, s in result["stages"].items():
        group = name.split("@")[0]
        g = out.setdefault(group, {"runs": 0, "wall_s": 0.0, "max_wall_s": 0.0, "peak_rss_mib": 0.0,
                                   "disk_mib": 0.0, "files": 0, "requests": 0})
        g["runs"] += 1
        g["wall_s"] = round(g["wall_s"] + s["wall_s"], 1)
        g["max_wall_s"] = max(g["max_wall_s"], s["wall_s"])
        g["peak_rss_mib"] = max(g["peak_rss_mib"], s["peak_rss_mib"])
        g["disk_mib"] = round(g["disk_mib"] + s["disk_mib"], 2)
        g["files"] += s["files"]
        g["requests"] += sum(s["requests"].values())
    return out


def markdown(results: list[dict[str, Any]]) -> str:
    scales = [r["scale"] for r in results]
    head = "| stage | " + " | ".join(f"{s:g}: wall s (max run) / peak MiB / out MiB / requests" for s in scales) + " |"
    lines = [head, "|---|" + "---|" * len(scales)]
    tables = [grouped(r) for r in results]
    for group in GROUPS:
        cells = []
        for t in tables:
            g = t.get(group)
            if g is None:
                cells.append("-")
                continue
            wall = f"{g['wall_s']:.0f}" + (f" ({g['max_wall_s']:.0f})" if g["runs"] > 1 else "")
            cells.append(f"{wall} / {g['peak_rss_mib']:.0f} / {g['disk_mib']:.1f} / {g['requests']:,}")
        runs = tables[-1].get(group, {}).get("runs", 1)
        lines.append(f"| {group}{f' (x{runs})' if runs > 1 else ''} | " + " | ".join(cells) + " |")
    extra = [
        ("re-run annotate, all stored", lambda r: f"{r['rerun']['annotate']['wall_s']:.0f} s, {r['rerun']['annotate']['requests']} req"),
        ("re-run eval (largest), all stored", lambda r: "{:.0f} s, {} req".format(
            max(v["wall_s"] for k, v in r["rerun"].items() if k.startswith("eval@")),
            sum(v["requests"] for k, v in r["rerun"].items() if k.startswith("eval@")))),
        ("annotate calls/s (bound)", lambda r: f"{r['annotate']['calls_per_s']:.0f} ({r['annotate']['bound_calls_per_s']:.0f})"),
        ("dvc status / push / pull s", lambda r: " / ".join(f"{r['dvc'][k]['wall_s']:.1f}" for k in ("status", "push", "pull"))),
        ("teacher call store MiB (files)", lambda r: f"{r['disk']['teacher_calls']['mib']:.0f} ({r['disk']['teacher_calls']['files']})"),
        ("eval call stores MiB (files)", lambda r: f"{r['disk']['eval_calls']['mib']:.0f} ({r['disk']['eval_calls']['files']})"),
        ("DVC cache MiB (files)", lambda r: f"{r['disk']['dvc_cache']['mib']:.0f} ({r['disk']['dvc_cache']['files']})"),
        ("MLflow MiB (files)", lambda r: f"{r['disk']['mlflow']['mib']:.0f} ({r['disk']['mlflow']['files']})"),
        ("whole rehearsal s", lambda r: f"{r['total_s']:.0f}"),
    ]
    for label, cell in extra:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.1])
    parser.add_argument("--root", type=Path, default=Path("/tmp/sp2dpo-bench-rehearse"))
    parser.add_argument("--from", dest="saved", type=Path, nargs="+", default=None,
                        help="saved `sp2dpo rehearse --json` outputs to report instead of running")
    parser.add_argument("--markdown", action="store_true", help="the docs/scaling.md table")
    args, extra = parser.parse_known_args()
    if args.saved:
        results = [json.loads(p.read_text()) for p in args.saved]
    else:
        results = [rehearse(s, args.root, extra) for s in args.scales]
    if args.markdown:
        print(markdown(results))
    else:
        print(json.dumps({str(r["scale"]): {"stages": grouped(r), **{k: r[k] for k in ("rerun", "annotate", "dvc", "disk", "total_s")}}
                          for r in results}, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
