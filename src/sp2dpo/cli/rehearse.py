"""``sp2dpo rehearse``: a configuration's whole pipeline at real sizes on this machine, every paid
or GPU part replaced by loopback servers and tiny students, each stage measured."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sp2dpo.cli.common import Subparsers, non_negative_int, positive_int
from sp2dpo.core.artifacts import make_folder
from sp2dpo.core.entry import print_json


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def _summary(result: dict[str, Any]) -> str:
    lines = [f"rehearsal at scale {result['scale']} in {result['total_s']} s ({result['workdir']})",
             f"{'stage':40} {'wall_s':>8} {'peak_MiB':>9} {'disk_MiB':>9} {'files':>7}  requests"]
    for name, s in result["stages"].items():
        req = ", ".join(f"{k} {v}" for k, v in s["requests"].items() if v)
        lines.append(f"{name:40} {s['wall_s']:8.1f} {s['peak_rss_mib']:9.0f} {s['disk_mib']:9.1f} "
                     f"{s['files']:7d}  {req}")
    for name, s in result["rerun"].items():
        lines.append(f"re-run {name} with every call stored: {s['wall_s']} s, {s['requests']} requests")
    for name, s in result["dvc"].items():
        lines.append(f"dvc {name}: {s['wall_s']} s")
    lines.append("requests per server: " + json.dumps(result["servers"], sort_keys=True))
    return "\n".join(lines)


def _cmd_rehearse(args: argparse.Namespace) -> None:
    from sp2dpo.rehearse import run

    if args.workdir is not None:
        make_folder(args.workdir, what="--workdir")
    options = run.Options(project=Path("."), params=args.params, overrides=tuple(args.set),
                          scale=args.scale, workdir=args.workdir, max_steps=args.max_steps,
                          train_pairs=args.train_pairs, reruns=not args.no_reruns)
    result = run.run(options)
    if args.json:
        print_json(result)
    else:
        print(_summary(result))
    print(f"rehearse: {len(result['stages'])} stages in {result['total_s']} s", file=sys.stderr)


def add_rehearse(sub: Subparsers) -> None:
    p = sub.add_parser(
        "rehearse",
        help="run a configuration (default: the paper's) end to end on this machine at real sizes "
        "against loopback teachers, students and judge, measuring every stage",
        description="Rehearse a configuration's whole DVC pipeline before paying for it: a "
        "scratch copy of the project (nothing lands in this workspace, its call stores or "
        "MLflow), an UltraFeedback-sized snapshot, loopback OpenAI-compatible servers for the "
        "teachers, the students' answers and the judge, tiny random-weight students of each "
        "architecture; every stage is run by DVC and measured (wall time, peak memory, disk, "
        "requests), then annotate and eval are re-run with every call stored, and dvc "
        "status/push/pull are timed. Default configuration: params.yaml + the paper-gpu profile.",
    )
    p.add_argument("--params", type=Path, default=None, metavar="FILE",
                   help="the params file to rehearse (default: params.yaml with +profiles=paper-gpu)")
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a Hydra override, as for `dvc exp run -S` (repeatable), e.g. "
                   "-S 'matrix.students=[qwen3_4b]'")
    p.add_argument("--scale", type=_scale, default=1.0,
                   help="fraction of the full sizes (61,135 pairs, 805/80/541/500 eval items); default 1")
    p.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                   help="scratch folder, kept and re-used (a second run sends no request); "
                   "default: a temporary folder removed afterwards")
    p.add_argument("--max-steps", type=positive_int, default=2,
                   help="optimizer steps per training run, one pair per device batch, the configured "
                   "gradient accumulation (default 2: the first step of a warm-up has learning rate "
                   "0, and every method's adapter must differ for eval to answer with each)")
    p.add_argument("--train-pairs", type=non_negative_int, default=16, metavar="N",
                   help="pairs each training run tokenizes, precomputes the reference for and trains "
                   "on (train.limit; default 16; 0: every annotated pair, hours per run on a CPU)")
    p.add_argument("--no-reruns", action="store_true",
                   help="skip the forced re-runs of annotate and eval with every call stored (a "
                   "second rehearsal in the same --workdir: the first measured them; \"rerun\" is "
                   "then empty)")
    p.add_argument("--json", action="store_true", help="print the measurements as one JSON object")
    p.set_defaults(func=_cmd_rehearse)
