"""The ``sp2dpo`` command: one subcommand per stage and tool, the only argument parser besides
the DVC stage scripts (``stages/*.py``). Imported by nothing.

Every stage subcommand calls the same ``run`` as its DVC stage. Its inputs and outputs are flags
whose defaults are the pipeline's paths; side reports (the metrics JSON, plots) go to the
pipeline's ``reports/`` only when ``--out`` is the pipeline's too, and otherwise beside ``--out``,
so a run on other data never overwrites the tracked reports. Expected failures (bad input, bad
params, an unreachable Hub) print one ``sp2dpo: error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sp2dpo import aggregate, annotate, audit, data, evaluate, report, tracking
from sp2dpo.core import artifacts, config
from sp2dpo.core.entry import guarded, print_json, setup_logging
from sp2dpo.evaluate import arenahard, ifeval, mtbench, prefeval, winrate
from sp2dpo.report import plots_html

Subparsers = argparse._SubParsersAction


def _params(path: str | None, sections: list[str]) -> config.Params:
    """The params file (default: ``params.yaml``; without one, the defaults = the offline run)."""
    if path is None and not config.DEFAULT_PARAMS.exists():
        return config.defaults()
    return config.load(path or config.DEFAULT_PARAMS, sections=sections)


def _side(out: Path, pipeline_out: Path, pipeline_side: Path, beside: Path) -> Path:
    """Where a side report goes: the pipeline's path when ``out`` is the pipeline's, else
    ``beside`` (a path next to ``out``)."""
    return pipeline_side if Path(out) == Path(pipeline_out) else beside


def _add_params(p: argparse.ArgumentParser, sections: str) -> None:
    p.add_argument(
        "--params", default=None, metavar="FILE",
        help=f"params file (sections {sections}; default: params.yaml, else the defaults)",
    )


# ------------------------------------------------------------------------------ fetch, filter


def _cmd_fetch(args: argparse.Namespace) -> None:
    cfg = _params(args.params, ["data"]).data
    default = data.FetchPaths.pipeline()
    out = Path(args.out)
    report_path = args.report or _side(out, default.out, default.report, out.parent / "fetch.json")
    print_json(data.run_fetch(cfg, data.FetchPaths(out=out, report=Path(report_path))))


def _add_fetch(sub: Subparsers) -> None:
    p = sub.add_parser("fetch", help="raw pairs (Hub or local snapshot) -> canonical pairs table")
    _add_params(p, "`data`")
    p.add_argument("--out", default=str(data.FetchPaths.pipeline().out), help="pairs table to write")
    p.add_argument("--report", default=None, help="report JSON (default: beside --out)")
    p.set_defaults(func=_cmd_fetch)


def _cmd_filter(args: argparse.Namespace) -> None:
    cfg = _params(args.params, ["filter"]).filter
    default = data.FilterPaths.pipeline()
    out = Path(args.out)
    report_path = args.report or _side(out, default.out, default.report, out.parent / "filter.json")
    paths = data.FilterPaths(pairs=Path(args.pairs), out=out, report=Path(report_path))
    print_json(data.run_filter(cfg, paths))


def _add_filter(sub: Subparsers) -> None:
    p = sub.add_parser("filter", help="dedup and drop empty pairs, with exact counts per rule")
    _add_params(p, "`filter`")
    p.add_argument("--pairs", default=str(data.FilterPaths.pipeline().pairs), help="fetched pairs table")
    p.add_argument("--out", default=str(data.FilterPaths.pipeline().out), help="filtered pairs to write")
    p.add_argument("--report", default=None, help="report JSON (default: beside --out)")
    p.set_defaults(func=_cmd_filter)


# ------------------------------------------------------------------------------ annotate


def _cmd_annotate(args: argparse.Namespace) -> None:
    params = _params(args.params, ["teachers", "prompts", "decoding", "annotate"])
    default = annotate.AnnotatePaths.pipeline()
    out = Path(args.out)
    log_path = Path(args.log) if args.log else _side(out, default.out, default.call_store, out.with_suffix(""))
    report_path = None
    if not args.estimate:
        report_path = Path(args.report or _side(out, default.out, default.report, out.parent / "annotate.json"))
    paths = annotate.AnnotatePaths(pairs=Path(args.pairs), out=out, log=log_path, report=report_path)
    print_json(annotate.run(params.teachers, params.prompts, params.decoding, params.annotate, paths,
                            estimate_only=args.estimate))


def _add_annotate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "annotate",
        help="teachers x prompt variants label each pair's semantic gap -> call table + call log",
    )
    _add_params(p, "`teachers`, `prompts`, `decoding`, `annotate`")
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
    params = _params(args.params, ["aggregate", "beta"])
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
        report_dir = Path(args.report_dir) if args.report_dir else _side(out, default.out, default.report_dir, out.parent)
    paths = aggregate.AggregatePaths(calls=Path(args.calls), out=out, report_dir=report_dir)
    result = aggregate.run(params.aggregate, beta, paths, strict=args.strict)
    print_json({"out": str(out), **{k: result[k] for k in ("panel", "calls", "pairs")}})


def _add_aggregate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "aggregate",
        help="teacher call table -> per-pair beta artifact CSV (SA, SE, MA, JMAMP, ...) + reports",
    )
    _add_params(p, "`aggregate`, `beta`")
    p.add_argument("--calls", default=str(aggregate.AggregatePaths.pipeline().calls), help="call table (.parquet or .csv)")
    p.add_argument("--out", default=str(aggregate.AggregatePaths.pipeline().out), help="beta artifact CSV to write")
    p.add_argument("--beta-min", type=float, default=None, help="override beta.min (paper: 0.03)")
    p.add_argument("--beta-max", type=float, default=None, help="override beta.max (paper: 0.3)")
    p.add_argument("--seed", type=int, default=None, help="override beta.seed of beta_random (42)")
    p.add_argument("--report-dir", default=None,
                   help="write DIR/aggregate.json and DIR/aggregate/*.png|csv (default: beside --out)")
    p.add_argument("--no-reports", action="store_true", help="write the artifact only")
    p.add_argument("--strict", action="store_true",
                   help="stop on the first bad or missing call instead of excluding its pair")
    p.set_defaults(func=_cmd_aggregate)


# ------------------------------------------------------------------------------ train, eval, report


def _cmd_train(args: argparse.Namespace) -> None:
    from sp2dpo import train  # torch + TRL take seconds to import: only for this command

    params = _params(args.params, ["train", "beta"])
    default = train.TrainPaths.pipeline(args.student, args.method)
    out = Path(args.out) if args.out else default.adapter
    paths = train.TrainPaths(
        pairs=Path(args.pairs) if args.pairs else default.pairs,
        beta=Path(args.beta) if args.beta else default.beta,
        adapter=out,
        report=Path(args.report or _side(out, default.adapter, default.report, out.with_name(f"{out.name}.json"))),
        curve=Path(args.curve or _side(out, default.adapter, default.curve, out.with_name(f"{out.name}_loss.csv"))),
    )
    metrics = train.run(params.train, params.beta, args.student, args.method, paths,
                        track=not args.no_track, logged_params=params.flat())
    print_json(metrics)


def _add_train(sub: Subparsers) -> None:
    p = sub.add_parser("train", help="train one (student, method) of params `train` (DPO / SP2DPO)")
    p.add_argument("student", help="a train.students[].name")
    p.add_argument("method", help="a train.methods[].name")
    _add_params(p, "`train`, `beta`")
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
    params = _params(args.params, ["eval", "train", "teachers", "matrix"])
    default = evaluate.EvalPaths.pipeline(args.student)
    out = Path(args.out) if args.out else default.outputs
    paths = evaluate.EvalPaths(
        adapters=Path(args.adapters) if args.adapters else default.adapters,
        outputs=out,
        report=Path(args.report or _side(out, default.outputs, default.report, out / f"{args.student}.json")),
        calls=Path(args.calls) if args.calls else _side(out, default.outputs, default.calls, out / "calls"),
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
    print_json({m: {s: e.get(s) for s in evaluate.METRIC_SECTIONS} for m, e in result["methods"].items()})


def _add_eval(sub: Subparsers) -> None:
    p = sub.add_parser(
        "eval",
        help="AlpacaEval 2.0 (judge, WR, LC) and IFEval for a student's base model and adapters",
        description="The eval stage for one student: answers, judge annotations, win rates, IFEval.",
    )
    p.add_argument("student", help="a name in train.students")
    _add_params(p, "`eval`, `train`, `teachers`, `matrix`")
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

    params = _params(args.params, ["eval"])
    out = Path(args.out)
    print_json(judge_run.run_judge_file(
        params.eval, Path(args.outputs), out,
        Path(args.calls) if args.calls else out.parent / "calls",
        reference_path=Path(args.reference) if args.reference else None,
        limit=args.limit, estimate=args.estimate,
    ))


def _add_judge(sub: Subparsers) -> None:
    p = sub.add_parser(
        "judge",
        help="judge an AlpacaEval outputs file against the reference (resumable; --estimate)",
        description="The AlpacaEval 2.0 judge of params `eval.judge` over a model-outputs file. "
        "Every judge call goes through the call store: a re-run after a crash or Ctrl-C makes "
        "only the missing calls.",
    )
    _add_params(p, "`eval`")
    p.add_argument("--outputs", required=True, help="model outputs (AlpacaEval format, .json/.json.gz)")
    p.add_argument("--out", required=True, help="annotations file to write (AlpacaEval format)")
    p.add_argument("--calls", default=None, help="call store folder (default: `calls/` beside --out)")
    p.add_argument("--reference", default=None,
                   help="reference outputs (default: eval.alpaca_eval.reference_outputs)")
    p.add_argument("--limit", type=int, default=None, help="judge only the first N outputs")
    p.add_argument("--estimate", action="store_true",
                   help="print the calls, tokens and maximum cost of what is missing; call nothing")
    p.set_defaults(func=_cmd_judge)


def _cmd_report(args: argparse.Namespace) -> None:
    combined = report.run(report.ReportPaths(reports=Path(args.reports)))
    print_json({"students": sorted(combined), "index": str(Path(args.reports) / "index.md")})


def _add_report(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="the results table (Table 2) and reports/index.md")
    p.add_argument("--reports", default=str(report.ReportPaths.pipeline().reports), help="reports folder")
    p.set_defaults(func=_cmd_report)


# ------------------------------------------------------------------------------ audit


def _cmd_audit_diff(args: argparse.Namespace) -> int:
    pairs = artifacts.read_table(args.pairs, columns=["prompt_id", "prompt"]) if args.pairs else None
    result = audit.diff(
        audit.load_side(args.old),
        audit.load_side(args.new),
        column=args.column,
        threshold=args.threshold,
        category_column=args.category_column,
        allow_panel_change=args.allow_panel_change,
        pairs=pairs,
        top=args.top,
    )
    print(audit.render(result, "json" if args.json else args.format), end="")
    changed = result["n_changed"] + result["added"] + result["removed"]
    return 1 if args.fail_on_change and changed > 0 else 0


def _add_audit(sub: Subparsers) -> None:
    p = sub.add_parser("audit", help="audit beta artifacts")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    d = audit_sub.add_parser(
        "diff",
        help="what changed between two beta artifact versions (paths or REV:path)",
        description="Compare two beta artifacts. OLD and NEW are CSV paths or REV:path, REV being "
        "a git revision (commit, branch, tag, experiment ref); files tracked by DVC at that "
        "revision are read through DVC without a checkout.",
    )
    d.add_argument("old", metavar="OLD")
    d.add_argument("new", metavar="NEW")
    d.add_argument("--column", default=audit.DEFAULT_COLUMN, help="beta column to compare")
    d.add_argument("--threshold", type=float, default=audit.DEFAULT_THRESHOLD,
                   help="a pair changed when |new - old| exceeds this")
    d.add_argument("--category-column", default=None,
                   help="category column for flips (default: the first category_*_ens column)")
    d.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    d.add_argument("--json", action="store_true", help="same as --format json")
    d.add_argument("--pairs", default=None, help="pairs table (prompt_id, prompt) for prompt snippets")
    d.add_argument("--top", type=int, default=10, help="how many top changed pairs to list")
    d.add_argument("--allow-panel-change", action="store_true",
                   help="compare artifacts produced by different teacher panels")
    d.add_argument("--fail-on-change", action="store_true",
                   help="exit with status 1 when a pair was added or removed, or changed by more "
                   "than the threshold (CI gate)")
    d.set_defaults(func=_cmd_audit_diff)


def _cmd_verify(args: argparse.Namespace) -> int:
    result = audit.verify.verify(args.rev, repo=args.repo, workdir=args.workdir, keep=args.keep,
                                 recall_teachers=args.recall_teachers, tolerance=args.tolerance)
    print(audit.outputs.render(result, "json" if args.json else "text"), end="")
    print(f"verify: {audit.outputs.summary(result)}", file=sys.stderr)
    return audit.verify.EXIT_STATUS[result.verdict]


def _add_verify(sub: Subparsers) -> None:
    p = sub.add_parser(
        "verify",
        help="re-run a commit's pipeline from its own code in a fresh clone and compare every "
        "output with its dvc.lock",
        description="Clone the repository at REV, pull its inputs and recorded teacher calls, run "
        "`dvc repro -f --no-run-cache` there with the clone's code, and compare every output REV's "
        "dvc.lock records with the re-run's (md5), saying by file type what differs; an output "
        "whose numbers agree within --tolerance and is otherwise exact is 'equivalent' (float "
        "noise). Exit status: 0 every output identical, 4 the rest equivalent, 1 some differ, "
        "2 usage error, 3 the re-run failed.",
    )
    p.add_argument("rev", metavar="REV", nargs="?", default="HEAD",
                   help="the commit to verify (anything git resolves; default: HEAD)")
    p.add_argument("--recall-teachers", action="store_true",
                   help="call the teachers again instead of answering from REV's recorded calls "
                   "(with real APIs this costs what the annotate stage cost)")
    p.add_argument("--tolerance", type=float, default=audit.tolerance.DEFAULT_TOLERANCE, metavar="REL",
                   help="relative deviation of a float (of an adapter tensor: max |delta| over the "
                   "tensor's scale) that still counts as equivalent; 0: identical or differs "
                   "(default: %(default)g)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (clone and repro log)")
    p.add_argument("--workdir", default=None, metavar="DIR",
                   help="where to make the work folder (default: the system's temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repo", default=".", metavar="PATH", help="the repository (default: .)")
    p.set_defaults(func=_cmd_verify)


# ------------------------------------------------------------------------------ metrics tools


def _cmd_winrate(args: argparse.Namespace) -> None:
    metrics = winrate.evaluate_file(
        args.annotations,
        reference=args.reference,
        instruction_difficulty=args.instruction_difficulty,
        df_gamed=args.df_gamed,
    )
    if args.json:
        print_json(winrate.json_ready(metrics))
    else:
        print(winrate.render_text(metrics), end="")


def _add_winrate(sub: Subparsers) -> None:
    p = sub.add_parser(
        "winrate",
        help="AlpacaEval 2.0 metrics of an annotations file: win rate, SE, LC win rate, ...",
        description="AlpacaEval 2.0 leaderboard metrics (percent) of one annotations file. "
        "Without --instruction-difficulty/--df-gamed the length-controlled win rate is an "
        "offline estimate (length-only GLM), labelled as such.",
    )
    p.add_argument(
        "--annotations", required=True,
        help="AlpacaEval annotations (.json or .json.gz): instruction, output_1, generator_1, "
        "output_2, generator_2, preference in [1, 2]",
    )
    p.add_argument(
        "--reference", default=None,
        help="reference model outputs (.json[.gz]); checks instructions and output_1 and gives "
        "each instruction's AlpacaEval index (needed for the official LC)",
    )
    p.add_argument("--instruction-difficulty", default=None, metavar="CSV",
                   help="AlpacaEval instruction_difficulty.csv (official LC; with --df-gamed)")
    p.add_argument("--df-gamed", default=None, metavar="CSV",
                   help="AlpacaEval df_gamed.csv (official LC; with --instruction-difficulty)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_winrate)


def _cmd_ifeval(args: argparse.Namespace) -> None:
    prompts = ifeval.load_prompts(args.input, limit=args.limit, seed=args.seed)
    result = ifeval.score(prompts, ifeval.load_responses(args.responses, prompts))
    if args.out:
        ifeval.write_results(result, args.out)
    out: dict[str, Any] = ifeval.summary(result)
    if args.breakdown:
        out.update(ifeval.breakdown(result))
    if args.json:
        print_json(out)
    else:
        print(ifeval.format_text(result))


def _add_ifeval(sub: Subparsers) -> None:
    p = sub.add_parser(
        "ifeval",
        help="score responses on IFEval offline (strict/loose, prompt/instruction level)",
        description="Score responses against the official IFEval prompts with if-verifiable's "
        'rule-based checkers, offline. FILE is JSONL of {"key" or "prompt", "response"}.',
    )
    p.add_argument("--responses", required=True, metavar="FILE", help="responses JSONL(.gz)")
    p.add_argument("--input", default=str(ifeval.DEFAULT_INPUT), metavar="FILE",
                   help=f"IFEval prompts JSONL(.gz) (default: {ifeval.DEFAULT_INPUT})")
    p.add_argument("--limit", type=int, default=None, help="score a seeded subset of this many prompts")
    p.add_argument("--seed", type=int, default=42, help="seed of the --limit subset")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the per-prompt records as JSONL")
    p.add_argument("--breakdown", action="store_true", help="add counts per instruction id and category")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_ifeval)


def _cmd_arenahard(args: argparse.Namespace) -> None:
    if args.judgments:
        weight = arenahard.DEFAULT_WEIGHT if args.weight is None else args.weight
        battles = arenahard.judgments_to_battles(
            arenahard.read_judgments(args.judgments), baseline=args.baseline, weight=weight
        )
    else:
        if args.weight is not None:
            raise ValueError("--weight applies to --judgments only (a battle table is weighted)")
        battles = arenahard.read_battles(args.battles)
    scores = arenahard.score_battles(
        battles, baseline=args.baseline, rounds=args.rounds, seed=args.seed
    )
    if args.json:
        print_json(scores)
    else:
        print(arenahard.format_text(scores, baseline=args.baseline), end="")


def _add_arenahard(sub: Subparsers) -> None:
    p = sub.add_parser(
        "arenahard",
        help="Arena-Hard-Auto v0.1 scores (win rate vs the baseline) with bootstrap 95% CIs",
        description="Arena-Hard-Auto v0.1 scoring as the official show_result.py: judge labels "
        "-> battles (game 2 mirrored, strong verdicts weighted) -> Bradley-Terry -> win rate "
        "against the baseline (percent), with a seeded bootstrap over the rows of the table.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--judgments", nargs="+", metavar="FILE",
                     help="official judgment JSONL(.gz) files (question_id, model, judge, games)")
    src.add_argument("--battles", metavar="FILE",
                     help="battle table JSONL(.gz) (question_id, model_a, model_b, winner)")
    p.add_argument("--baseline", default=arenahard.DEFAULT_BASELINE,
                   help=f"the anchor model (default: {arenahard.DEFAULT_BASELINE})")
    p.add_argument("--weight", type=int, default=None,
                   help=f"battle rows per strong verdict, --judgments only "
                   f"(default: {arenahard.DEFAULT_WEIGHT})")
    p.add_argument("--rounds", type=int, default=arenahard.DEFAULT_ROUNDS,
                   help=f"bootstrap rounds; 0: no interval (default: {arenahard.DEFAULT_ROUNDS})")
    p.add_argument("--seed", type=int, default=arenahard.DEFAULT_SEED,
                   help=f"seed of the bootstrap resamples (default: {arenahard.DEFAULT_SEED})")
    p.add_argument("--json", action="store_true", help="print one JSON object: model -> scores")
    p.set_defaults(func=_cmd_arenahard)


def _cmd_mtbench(args: argparse.Namespace) -> None:
    result = mtbench.scores(mtbench.read_judgments(args.judgments))
    if args.json:
        print_json(result)
    else:
        print(mtbench.format_text(result), end="")


def _add_mtbench(sub: Subparsers) -> None:
    p = sub.add_parser(
        "mtbench",
        help="MT-Bench scores (turn 1, turn 2, overall) of a single-answer judgment file",
        description="MT-Bench scores as FastChat show_result.py --mode single: rows rated -1 "
        "are dropped, turn means, and the overall score as the mean of all remaining rows.",
    )
    p.add_argument("--judgments", required=True, metavar="FILE",
                   help="single-answer judgment JSONL(.gz) (question_id, model, judge, score, turn)")
    p.add_argument("--json", action="store_true", help="print one JSON object: model -> scores")
    p.set_defaults(func=_cmd_mtbench)


def _cmd_prefeval(args: argparse.Namespace) -> None:
    result = prefeval.run(
        args.model, args.adapter, args.pairs, revision=args.revision,
        chat_template=args.chat_template, limit=args.limit, max_length=args.max_length,
        max_prompt_length=args.max_prompt_length, batch_size=args.batch_size,
        rounds=args.rounds, seed=args.seed, device=args.device, out=args.out,
    )
    if args.json:
        print_json(result)
    else:
        print(prefeval.format_text(result), end="")


def _add_prefeval(sub: Subparsers) -> None:
    p = sub.add_parser(
        "prefeval",
        help="held-out preference accuracy and implicit-reward margins of a student (offline)",
        description="DPO-style held-out preference metrics: for each pair, the chosen and "
        "rejected log-ratios log pi - log pi_ref of the completion tokens as TRL renders them "
        "(pi: the model with --adapter, pi_ref: the adapter disabled), the margin, the accuracy "
        "(ties 1/2) and the reference-free likelihood accuracy, with seeded bootstrap 95% CIs. "
        "Without --adapter the policy is the reference: accuracy 0.5, margins 0.",
    )
    p.add_argument("--model", required=True,
                   help="model spec: local:smollm2-135m-instruct, an HF id or a folder")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="PEFT LoRA adapter folder (default: none, the base model)")
    p.add_argument("--pairs", required=True, metavar="FILE",
                   help="pairs (.parquet, .csv, .jsonl[.gz]): prompt_id, prompt, chosen, "
                   "rejected, or the ultrafeedback_binarized Hub layout")
    p.add_argument("--revision", default=None, help="pinned revision of an HF model id")
    p.add_argument("--chat-template", default=None, metavar="TEMPLATE",
                   help="Jinja string or .jinja file overriding the tokenizer's chat template")
    p.add_argument("--limit", type=int, default=None,
                   help="score the first N usable pairs in file order (default: all)")
    p.add_argument("--max-length", type=int, default=prefeval.DEFAULT_MAX_LENGTH,
                   help=f"max prompt+completion tokens, keeping the start "
                   f"(default: {prefeval.DEFAULT_MAX_LENGTH})")
    p.add_argument("--max-prompt-length", type=int, default=prefeval.DEFAULT_MAX_PROMPT_LENGTH,
                   help=f"max prompt tokens, keeping the end "
                   f"(default: {prefeval.DEFAULT_MAX_PROMPT_LENGTH})")
    p.add_argument("--batch-size", type=int, default=prefeval.DEFAULT_BATCH_SIZE,
                   help=f"pairs per forward pass (default: {prefeval.DEFAULT_BATCH_SIZE})")
    p.add_argument("--rounds", type=int, default=prefeval.DEFAULT_ROUNDS,
                   help=f"bootstrap rounds; 0: no interval (default: {prefeval.DEFAULT_ROUNDS})")
    p.add_argument("--seed", type=int, default=prefeval.DEFAULT_SEED,
                   help=f"seed of the bootstrap resamples (default: {prefeval.DEFAULT_SEED})")
    p.add_argument("--device", default="cpu",
                   help="torch device (default: cpu, in float32; cuda runs in bfloat16)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="also write the per-pair log-probs, log-ratios and margins as JSONL")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_prefeval)


# ------------------------------------------------------------------------------ sweep (APO)


def _sweep_config(args: argparse.Namespace) -> config.SweepConfig:
    return _params(args.params, ["sweep"]).sweep


def _cmd_sweep_run(args: argparse.Namespace) -> None:
    from sp2dpo import sweep

    cfg = _sweep_config(args)
    sweep.run_sweep(cfg, jobs=args.jobs, wait=not args.no_wait, timeout_s=args.timeout)
    if not args.no_wait and not args.no_select:
        _select(cfg, args)


def _select(cfg: config.SweepConfig, args: argparse.Namespace) -> int:
    import json as _json
    import subprocess

    from sp2dpo import sweep
    from sp2dpo.sweep import track

    show = subprocess.run(["dvc", "exp", "show", "--json", *(["-A"] if args.all_commits else [])],
                          capture_output=True, text=True, timeout=600)
    if show.returncode != 0:
        raise sweep.SweepError(f"sweep: `dvc exp show --json` failed: {show.stderr.strip()[-500:]}")
    trials = sweep.read_trials(_json.loads(show.stdout or "[]"), cfg, sweep.git_reader())
    selection = sweep.select(trials, cfg)
    out = Path(args.out) if args.out else Path("reports/sweep") / cfg.name
    written = sweep.write_report(selection, out)
    if not args.no_track:
        logged = track.log_sweep(selection, report=out)
        print(f"MLflow: parent run {logged['parent']} with {len(logged['children'])} child run(s) "
              f"in experiment {track.SWEEP_EXPERIMENT}; after `mlflow ui`, open "
              + tracking.ui_url("http://127.0.0.1:5000", logged["experiment_id"]))
    print(sweep.markdown(selection), end="")
    print(f"wrote {', '.join(str(p) for p in written)}")
    if args.apply:
        if selection.best is None:
            raise sweep.SweepError(f"sweep {cfg.name!r}: no experiment has a score; nothing to apply")
        done = subprocess.run(["dvc", "exp", "apply", selection.best.name],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise sweep.SweepError(f"`dvc exp apply {selection.best.name}` failed: {done.stderr.strip()[-500:]}")
        print(f"applied {selection.best.name} (lambda*) to the workspace: `dvc status` / `git diff` show it")
    return 0


def _cmd_sweep_select(args: argparse.Namespace) -> int:
    return _select(_sweep_config(args), args)


def _add_select_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, metavar="DIR",
                   help="selection report folder (default: reports/sweep/<sweep.name>)")
    p.add_argument("--all-commits", action="store_true",
                   help="look for the sweep's experiments on every commit (`dvc exp show -A`), not "
                   "only those of the workspace's baseline")
    p.add_argument("--apply", action="store_true",
                   help="apply lambda* to the workspace (`dvc exp apply <best experiment>`)")
    p.add_argument("--no-track", action="store_true", help="do not log the sweep to MLflow")


def _add_sweep(sub: Subparsers) -> None:
    p = sub.add_parser(
        "sweep", help="the APO outer loop: sweep process variables through DVC's queue, select lambda*",
        description="`run` queues every setting of params `sweep.variables` as a DVC experiment "
        "(`dvc exp run --queue -S key=value`), starts `sweep.jobs` workers (`dvc queue start`), waits "
        "and selects; `select` reads the finished experiments (`dvc exp show --json`), writes the "
        "selection report (lambda* with its interval, every setting side by side, a plot per swept "
        "variable, best vs runner-up) and logs the sweep to MLflow (a parent run, one child per "
        "experiment).",
    )
    sweep_sub = p.add_subparsers(dest="sweep_command", required=True)
    r = sweep_sub.add_parser("run", help="queue the sweep's experiments, run them with N workers, wait, select")
    _add_params(r, "`sweep`")
    r.add_argument("-j", "--jobs", type=int, default=None, help="queue workers (default: sweep.jobs)")
    r.add_argument("--no-wait", action="store_true", help="return once the workers are started")
    r.add_argument("--no-select", action="store_true", help="do not run `select` after the sweep")
    r.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop waiting after this long (the queue keeps running)")
    _add_select_args(r)
    r.set_defaults(func=_cmd_sweep_run)
    s = sweep_sub.add_parser("select", help="lambda* from the sweep's finished experiments")
    _add_params(s, "`sweep`")
    _add_select_args(s)
    s.set_defaults(func=_cmd_sweep_select)


# ------------------------------------------------------------------------------ numerics


def _cmd_numerics(args: argparse.Namespace) -> int:
    from sp2dpo import numerics
    from sp2dpo.llm import models

    numerics.mode()  # an invalid SP2DPO_NUMERICS is an error here (the import only warned)
    result: dict[str, Any] = {"state": numerics.state(), "pins": numerics.PINS}
    status = 0
    if args.fingerprint:
        prints = {}
        for name, reference in sorted(models.PINNED_FINGERPRINTS.items()):
            found = models.logits_fingerprint(f"{models.LOCAL_PREFIX}{name}")
            found["reference"] = reference
            found["matches"] = found["sha256"] == reference
            status = status or int(not found["matches"])
            prints[name] = found
        result["fingerprints"] = prints
        result["state"] = numerics.state()  # torch is loaded now: its kernels are known
    print_json(result)
    return status


def _add_numerics(sub: Subparsers) -> None:
    p = sub.add_parser(
        "numerics",
        help="the CPU numerics in force (pinned AVX2 kernels or native) and, with --fingerprint, "
        "whether this machine reproduces the committed outputs bit for bit",
        description="Print the CPU numerics mode (SP2DPO_NUMERICS: pinned, the default, or "
        "native), the variables it sets and the kernels torch runs. --fingerprint also hashes both "
        "packaged models' logits for a fixed input and compares them with the reference bytes "
        "(exit status 1 when one differs: this machine's outputs will be equivalent, not "
        "identical, to the committed ones).",
    )
    p.add_argument("--fingerprint", action="store_true",
                   help="hash the packaged models' logits (converts them on first use)")
    p.set_defaults(func=_cmd_numerics)


# ------------------------------------------------------------------------------ params, plots


def _cmd_params_docs(args: argparse.Namespace) -> None:
    text = config.reference_markdown()
    if args.out:
        artifacts.write_text(text, args.out)
    else:
        print(text, end="")


def _cmd_params_check(args: argparse.Namespace) -> None:
    params = config.load(args.params)
    print_json({"params": str(args.params), "sections": sorted(params.raw), "ok": True})


def _add_params_cmd(sub: Subparsers) -> None:
    p = sub.add_parser("params", help="the params reference, and checking a params file")
    params_sub = p.add_subparsers(dest="params_command", required=True)
    d = params_sub.add_parser("docs", help="every params key with its default and meaning (docs/params.md)")
    d.add_argument("-o", "--out", default=None, help="write to this file (default: stdout)")
    d.set_defaults(func=_cmd_params_docs)
    c = params_sub.add_parser("check", help="validate a params file against the typed config")
    c.add_argument("--params", default=str(config.DEFAULT_PARAMS), metavar="FILE")
    c.set_defaults(func=_cmd_params_check)


def _cmd_plots_template(args: argparse.Namespace) -> None:
    package_json = args.package_json if args.package_json.is_file() else None
    print(plots_html.write_template(args.out, args.node_modules, package_json))


def _add_plots_template(sub: Subparsers) -> None:
    p = sub.add_parser("plots-template",
                       help="the offline HTML template for `dvc plots show --html-template`")
    p.add_argument("-o", "--out", type=Path, default=plots_html.DEFAULT_OUT,
                   help=f"template path (default: {plots_html.DEFAULT_OUT})")
    p.add_argument("--node-modules", type=Path, default=Path("node_modules"),
                   help="npm packages folder (default: node_modules)")
    p.add_argument("--package-json", type=Path, default=Path("package.json"),
                   help="file pinning the versions (default: package.json)")
    p.set_defaults(func=_cmd_plots_template)


#: Parser builders, one per subcommand; a new subcommand adds its builder here.
PARSERS: list[Callable[[Subparsers], None]] = [
    _add_fetch,
    _add_filter,
    _add_annotate,
    _add_aggregate,
    _add_train,
    _add_eval,
    _add_judge,
    _add_report,
    _add_audit,
    _add_verify,
    _add_numerics,
    _add_winrate,
    _add_ifeval,
    _add_arenahard,
    _add_mtbench,
    _add_prefeval,
    _add_sweep,
    _add_params_cmd,
    _add_plots_template,
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sp2dpo", description="Semantic per-pair DPO: annotate, aggregate, train, evaluate."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    return guarded(lambda: args.func(args))


if __name__ == "__main__":  # pragma: no cover  (`accelerate launch -m sp2dpo.cli train ...`)
    sys.exit(main())
