"""The pipeline's stage subcommands: fetch, filter, annotate, aggregate, train, eval, judge, report.

Each calls the same ``run`` as its DVC stage; its inputs and outputs are flags whose defaults are
the pipeline's paths.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sp2dpo import aggregate, annotate, data, evaluate, report
from sp2dpo.cli.common import (
    Subparsers,
    add_params,
    finite_float,
    load_params,
    positive_int,
    seed_int,
    side_path,
)
from sp2dpo.core import artifacts, config
from sp2dpo.core.entry import print_json


def _check_outputs(out: Path, report: Path | None, *inputs: Path) -> None:
    """``--out`` and ``--report`` checked before the stage runs: not a folder, not under a file,
    not one of the stage's inputs (:func:`sp2dpo.core.artifacts.check_output`)."""
    artifacts.check_output(out, inputs=inputs, what="--out")
    if report is not None:
        if report.resolve() == out.resolve():
            raise ValueError(f"--report and --out are the same file ({out}); give two paths")
        artifacts.check_output(report, inputs=inputs, what="--report")


# ------------------------------------------------------------------------------ fetch, filter


def _cmd_fetch(args: argparse.Namespace) -> None:
    cfg = load_params(args.params, ["data"]).data
    default = data.FetchPaths.pipeline()
    out = Path(args.out)
    report_path = args.report or side_path(out, default.out, default.report, out.parent / "fetch.json")
    _check_outputs(out, Path(report_path))
    print_json(data.run_fetch(cfg, data.FetchPaths(out=out, report=Path(report_path))))


def add_fetch(sub: Subparsers) -> None:
    p = sub.add_parser("fetch", help="raw pairs (Hub or local snapshot) -> canonical pairs table")
    add_params(p, "`data`")
    p.add_argument("--out", default=str(data.FetchPaths.pipeline().out), help="pairs table to write")
    p.add_argument("--report", default=None, help="report JSON (default: beside --out)")
    p.set_defaults(func=_cmd_fetch)


def _cmd_filter(args: argparse.Namespace) -> None:
    cfg = load_params(args.params, ["filter"]).filter
    default = data.FilterPaths.pipeline()
    out = Path(args.out)
    report_path = args.report or side_path(out, default.out, default.report, out.parent / "filter.json")
    _check_outputs(out, Path(report_path), Path(args.pairs))
    paths = data.FilterPaths(pairs=Path(args.pairs), out=out, report=Path(report_path))
    print_json(data.run_filter(cfg, paths))


def add_filter(sub: Subparsers) -> None:
    p = sub.add_parser("filter", help="dedup and drop empty pairs, with exact counts per rule")
    add_params(p, "`filter`")
    p.add_argument("--pairs", default=str(data.FilterPaths.pipeline().pairs), help="fetched pairs table")
    p.add_argument("--out", default=str(data.FilterPaths.pipeline().out), help="filtered pairs to write")
    p.add_argument("--report", default=None, help="report JSON (default: beside --out)")
    p.set_defaults(func=_cmd_filter)


# ------------------------------------------------------------------------------ annotate


def _cmd_annotate(args: argparse.Namespace) -> None:
    params = load_params(args.params, ["teachers", "prompts", "decoding", "annotate"])
    default = annotate.AnnotatePaths.pipeline()
    out = Path(args.out)
    log_path = Path(args.log) if args.log else side_path(out, default.out, default.call_store, out.with_suffix(""))
    report_path = None
    if not args.estimate:
        report_path = Path(args.report or side_path(out, default.out, default.report, out.parent / "annotate.json"))
    if not args.estimate:
        _check_outputs(out, report_path, Path(args.pairs))
    paths = annotate.AnnotatePaths(pairs=Path(args.pairs), out=out, log=log_path, report=report_path)
    print_json(annotate.run(params.teachers, params.prompts, params.decoding, params.annotate, paths,
                            estimate_only=args.estimate))


def add_annotate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "annotate",
        help="teachers x prompt variants label each pair's semantic gap -> call table + call log",
    )
    add_params(p, "`teachers`, `prompts`, `decoding`, `annotate`")
    p.add_argument(
        "--pairs", default=str(annotate.AnnotatePaths.pipeline().pairs),
        help="pairs table (.parquet, .jsonl, .csv) with prompt_id, prompt, chosen, rejected",
    )
    p.add_argument("--out", default=str(annotate.AnnotatePaths.pipeline().out), help="call table to write (.parquet or .csv)")
    p.add_argument("--log", default=None,
                   help="call store, also the cache: a folder of segments, or one .jsonl file "
                   "(default: CALLS without its suffix, e.g. data/annotate/calls/)")
    p.add_argument("--report", default=None, help="report JSON (default: beside --out)")
    p.add_argument("--estimate", action="store_true",
                   help="dry run: print calls, tokens and cost per teacher; call nothing")
    p.set_defaults(func=_cmd_annotate)


# ------------------------------------------------------------------------------ aggregate


def _cmd_aggregate(args: argparse.Namespace) -> None:
    params = load_params(args.params, ["aggregate", "beta"])
    overrides = {
        k: v for k, v in (("min", args.beta_min), ("max", args.beta_max), ("seed", args.seed)) if v is not None
    }
    try:
        beta = dataclasses.replace(params.beta, **overrides)
    except config.ConfigError as exc:
        flags = ", ".join(f"--beta-{k}" if k != "seed" else "--seed" for k in overrides)
        raise config.ConfigError(f"{flags}: {exc}") from None
    default = aggregate.AggregatePaths.pipeline()
    out = Path(args.out)
    report_dir = None
    if not args.no_reports:
        report_dir = Path(args.report_dir) if args.report_dir else side_path(out, default.out, default.report_dir, out.parent)
    _check_outputs(out, report_dir / "aggregate.json" if report_dir else None, Path(args.calls))
    paths = aggregate.AggregatePaths(calls=Path(args.calls), out=out, report_dir=report_dir)
    result = aggregate.run(params.aggregate, beta, paths, strict=args.strict)
    print_json({"out": str(out), **{k: result[k] for k in ("panel", "calls", "pairs")}})


def add_aggregate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "aggregate",
        help="teacher call table -> per-pair beta artifact CSV (SA, SE, MA, JMAMP, ...) + reports",
    )
    add_params(p, "`aggregate`, `beta`")
    p.add_argument("--calls", default=str(aggregate.AggregatePaths.pipeline().calls), help="call table (.parquet or .csv)")
    p.add_argument("--out", default=str(aggregate.AggregatePaths.pipeline().out), help="beta artifact CSV to write")
    p.add_argument("--beta-min", type=finite_float, default=None, help="override beta.min (paper: 0.03)")
    p.add_argument("--beta-max", type=finite_float, default=None, help="override beta.max (paper: 0.3)")
    p.add_argument("--seed", type=seed_int, default=None, help="override beta.seed of beta_random (42)")
    p.add_argument("--report-dir", default=None,
                   help="write DIR/aggregate.json and DIR/aggregate/*.png|csv (default: beside --out)")
    p.add_argument("--no-reports", action="store_true", help="write the artifact only")
    p.add_argument("--strict", action="store_true",
                   help="stop on the first bad or missing call instead of excluding its pair")
    p.set_defaults(func=_cmd_aggregate)


# ------------------------------------------------------------------------------ train, eval, report


def _cmd_train(args: argparse.Namespace) -> None:
    from sp2dpo import train  # torch + TRL take seconds to import: only for this command

    params = load_params(args.params, ["train", "beta"])
    default = train.TrainPaths.pipeline(args.student, args.method)
    out = Path(args.out) if args.out else default.adapter
    paths = train.TrainPaths(
        pairs=Path(args.pairs) if args.pairs else default.pairs,
        beta=Path(args.beta) if args.beta else default.beta,
        adapter=out,
        report=Path(args.report or side_path(out, default.adapter, default.report, out.with_name(f"{out.name}.json"))),
        curve=Path(args.curve or side_path(out, default.adapter, default.curve, out.with_name(f"{out.name}_loss.csv"))),
    )
    metrics = train.run(params.train, params.beta, args.student, args.method, paths,
                        track=not args.no_track, logged_params=params.flat())
    print_json(metrics)


def add_train(sub: Subparsers) -> None:
    p = sub.add_parser("train", help="train one (student, method) of params `train` (DPO / SP2DPO)")
    p.add_argument("student", help="a train.students[].name")
    p.add_argument("method", help="a train.methods[].name")
    add_params(p, "`train`, `beta`")
    p.add_argument("--pairs", default=None, help="filtered pairs (default: data/pairs/filtered.parquet)")
    p.add_argument("--beta", default=None,
                   help="beta schedule: an artifact CSV, or prompt_id plus beta columns (default: data/beta/beta.csv)")
    p.add_argument("--out", default=None, help="adapter folder to write (default: models/STUDENT/METHOD)")
    p.add_argument("--report", default=None,
                   help="metrics JSON (default: reports/train/STUDENT-METHOD.json, or OUT.json beside --out)")
    p.add_argument("--curve", default=None, help="loss-curve CSV (default: beside the report)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=_cmd_train)


def _cmd_eval(args: argparse.Namespace) -> None:
    params = load_params(args.params, ["eval", "train", "teachers", "matrix"])
    default = evaluate.EvalPaths.pipeline(args.student)
    out = Path(args.out) if args.out else default.outputs
    paths = evaluate.EvalPaths(
        adapters=Path(args.adapters) if args.adapters else default.adapters,
        outputs=out,
        report=Path(args.report or side_path(out, default.outputs, default.report, out / f"{args.student}.json")),
        calls=Path(args.calls) if args.calls else side_path(out, default.outputs, default.calls, out / "calls"),
    )
    if args.estimate:
        from sp2dpo.evaluate import estimate

        methods = evaluate.evaluated_methods(params.eval, params.train, params.matrix.methods)
        print_json(estimate.estimate(
            params.eval, params.train, args.student, methods, paths.adapters, paths.calls,
            judge_prompts=paths.judge_prompts, arena_hard_prompts=paths.arena_hard_prompts,
        ))
        return
    result = evaluate.run(params.eval, params.train, params.teachers, args.student, params.matrix.methods,
                          paths, track=not args.no_track, logged_params=params.flat())
    print_json({m: {s: e.get(s) for s in evaluate.metric_sections()} for m, e in result["methods"].items()})


def add_eval(sub: Subparsers) -> None:
    p = sub.add_parser(
        "eval",
        help="AlpacaEval 2.0 (judge, WR, LC) and IFEval for a student's base model and adapters",
        description="The eval stage for one student: answers, judge annotations, win rates, IFEval.",
    )
    p.add_argument("student", help="a name in train.students")
    add_params(p, "`eval`, `train`, `teachers`, `matrix`")
    p.add_argument("--adapters", default=None, help="folder of the student's adapters, one per method (default: models/STUDENT)")
    p.add_argument("--out", default=None, help="answers and annotations folder (default: data/eval/STUDENT)")
    p.add_argument("--report", default=None,
                   help="metrics JSON (default: reports/eval/STUDENT.json, or inside --out)")
    p.add_argument("--calls", default=None,
                   help="eval call store: answers and judge calls, reused on re-runs "
                   "(default: data/eval_calls/STUDENT, or `calls/` inside --out)")
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.add_argument("--estimate", action="store_true",
                   help="print the answers to generate and the judge calls, tokens and maximum "
                   "cost still to pay per suite; load no model, call nothing")
    p.set_defaults(func=_cmd_eval)


def _cmd_judge(args: argparse.Namespace) -> None:
    from sp2dpo.evaluate import judge_run

    params = load_params(args.params, ["eval"])
    out = Path(args.out)
    print_json(judge_run.run_judge_file(
        params.eval, Path(args.outputs), out,
        Path(args.calls) if args.calls else out.parent / "calls",
        reference_path=Path(args.reference) if args.reference else None,
        limit=args.limit, estimate=args.estimate,
    ))


def add_judge(sub: Subparsers) -> None:
    p = sub.add_parser(
        "judge",
        help="judge an AlpacaEval outputs file against the reference (resumable; --estimate)",
        description="The AlpacaEval 2.0 judge of params `eval.judge` over a model-outputs file. "
        "Every judge call goes through the call store: a re-run after a crash or Ctrl-C makes "
        "only the missing calls.",
    )
    add_params(p, "`eval`")
    p.add_argument("--outputs", required=True, help="model outputs (AlpacaEval format, .json/.json.gz)")
    p.add_argument("--out", required=True, help="annotations file to write (AlpacaEval format)")
    p.add_argument("--calls", default=None, help="call store folder (default: `calls/` beside --out)")
    p.add_argument("--reference", default=None,
                   help="reference outputs (default: eval.alpaca_eval.reference_outputs)")
    p.add_argument("--limit", type=positive_int, default=None, help="judge only the first N outputs")
    p.add_argument("--estimate", action="store_true",
                   help="print the calls, tokens and maximum cost of what is missing; call nothing")
    p.set_defaults(func=_cmd_judge)


def _cmd_report(args: argparse.Namespace) -> None:
    combined = report.run(report.ReportPaths(reports=Path(args.reports)))
    print_json({"students": sorted(combined), "index": str(Path(args.reports) / "index.md")})


def add_report(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="the results table (Table 2) and reports/index.md")
    p.add_argument("--reports", default=str(report.ReportPaths.pipeline().reports), help="reports folder")
    p.set_defaults(func=_cmd_report)
