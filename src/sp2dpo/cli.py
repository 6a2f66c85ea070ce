"""The ``sp2dpo`` command: one subcommand per public library function.

Each subcommand parses its arguments, calls one library function and prints the result. Expected
failures (bad input, bad params, an unreachable Hub) print one ``sp2dpo: error: ...`` message and
exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sp2dpo import config

log = logging.getLogger("sp2dpo")

#: Exit status for expected, explained failures.
EXIT_USAGE = 2


def setup_logging(level: int = logging.INFO) -> None:
    """Plain ``LEVEL name: message`` logging on stderr (idempotent)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    root.setLevel(level)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from sp2dpo.annotate.client import AuthError
    from sp2dpo.artifacts import SchemaViolation
    from sp2dpo.data import DataError, HubUnavailableError

    return (
        config.ConfigError,
        AuthError,
        DataError,
        HubUnavailableError,
        SchemaViolation,
        FileNotFoundError,
        ValueError,
    )


def guarded(fn: Callable[[], Any]) -> int:
    """Run ``fn``; turn an expected error into one clear line on stderr and exit status 2.

    ``fn`` may return an ``int`` exit status (e.g. a CI gate); anything else means success.
    """
    try:
        status = fn()
    except _expected_errors() as exc:
        print(f"sp2dpo: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def run_stage(fn: Callable[[], Any]) -> None:
    """Entry point helper for ``stages/*.py``: logging, clean errors, exit status."""
    setup_logging()

    def call() -> None:  # a stage's library function returns data, never an exit status
        fn()

    sys.exit(guarded(call))


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False))


# --------------------------------------------------------------------------------------------
# subcommands
# --------------------------------------------------------------------------------------------


def _cmd_fetch(args: argparse.Namespace) -> None:
    from sp2dpo import data

    cfg = config.load(args.params, sections=["data"]).data
    _print_json(data.run_fetch(cfg, args.out, args.report))


def _cmd_filter(args: argparse.Namespace) -> None:
    from sp2dpo import data

    cfg = config.load(args.params, sections=["filter"]).filter
    _print_json(data.run_filter(cfg, args.pairs, args.out, args.report))


def _add_fetch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="raw pairs (Hub or local snapshot) -> canonical pairs table")
    p.add_argument("--params", default="params.yaml", help="params file (section `data`)")
    p.add_argument("--out", default="data/pairs/fetched.parquet")
    p.add_argument("--report", default="reports/fetch.json")
    p.set_defaults(func=_cmd_fetch)


def _add_filter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="dedup and drop empty pairs, with exact counts per rule")
    p.add_argument("--params", default="params.yaml", help="params file (section `filter`)")
    p.add_argument("--pairs", default="data/pairs/fetched.parquet")
    p.add_argument("--out", default="data/pairs/filtered.parquet")
    p.add_argument("--report", default="reports/filter.json")
    p.set_defaults(func=_cmd_filter)


def _cmd_aggregate(args: argparse.Namespace) -> None:
    import dataclasses
    from pathlib import Path

    from sp2dpo import aggregate

    # Without --params, params.yaml is used when present, else the paper's defaults.
    if args.params is None and not Path(config.DEFAULT_PARAMS).exists():
        agg, beta = config.AggregateConfig(), config.BetaConfig()
    else:
        params = config.load(args.params or config.DEFAULT_PARAMS, sections=["aggregate", "beta"])
        agg, beta = params.aggregate, params.beta
    overrides = {
        k: v
        for k, v in (("min", args.beta_min), ("max", args.beta_max), ("seed", args.seed))
        if v is not None
    }
    beta = dataclasses.replace(beta, **overrides)
    report_dir = None if args.no_reports else args.report_dir
    result = aggregate.run(
        args.calls, args.out, agg, beta, report_dir=report_dir, strict=args.strict
    )
    _print_json({"out": str(args.out), **{k: result[k] for k in ("panel", "calls", "pairs")}})


def _add_aggregate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "aggregate",
        help="teacher call table -> per-pair beta artifact CSV (SA, SE, MA, JMAMP, ...) + reports",
    )
    p.add_argument("--calls", required=True, help="call table (.parquet or .csv)")
    p.add_argument("--out", required=True, help="beta artifact CSV to write")
    p.add_argument("--beta-min", type=float, default=None, help="override beta.min (paper: 0.03)")
    p.add_argument("--beta-max", type=float, default=None, help="override beta.max (paper: 0.3)")
    p.add_argument("--seed", type=int, default=None, help="override beta.seed of beta_random (42)")
    p.add_argument(
        "--params",
        default=None,
        help="params file (sections `aggregate`, `beta`); default: params.yaml if present, "
        "else the paper's defaults",
    )
    p.add_argument(
        "--report-dir",
        default="reports",
        help="write DIR/aggregate.json and DIR/aggregate/*.png|csv (default: reports)",
    )
    p.add_argument("--no-reports", action="store_true", help="write the artifact only")
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop on the first bad or missing call instead of excluding its pair",
    )
    p.set_defaults(func=_cmd_aggregate)


def _cmd_annotate(args: argparse.Namespace) -> None:
    from sp2dpo.annotate.run import run_annotate

    _print_json(
        run_annotate(
            args.params,
            args.pairs,
            args.out,
            log_path=args.log,
            report_path=None if args.estimate else args.report,
            estimate_only=args.estimate,
        )
    )


def _add_annotate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "annotate",
        help="teachers x prompt variants label each pair's semantic gap -> call table + call log",
    )
    p.add_argument(
        "--pairs",
        default="data/pairs/filtered.parquet",
        help="pairs table (.parquet, .jsonl, .csv) with prompt_id, prompt, chosen, rejected",
    )
    p.add_argument("--out", default="data/annotate/calls.parquet", help="call table to write")
    p.add_argument(
        "--params",
        default="params.yaml",
        help="params file (sections `teachers`, `prompts`, `decoding`, `annotate`)",
    )
    p.add_argument(
        "--log",
        default=None,
        help="append-only call log, also the cache (default: CALLS with suffix .jsonl)",
    )
    p.add_argument("--report", default="reports/annotate.json", help="metrics JSON to write")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="dry run: print calls, tokens and cost per teacher; call nothing",
    )
    p.set_defaults(func=_cmd_annotate)


def _cmd_audit_diff(args: argparse.Namespace) -> int:
    from sp2dpo import audit

    pairs = None
    if args.pairs:
        from sp2dpo import artifacts

        pairs = artifacts.read_table(args.pairs, columns=["prompt_id", "prompt"])
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
    return 1 if args.fail_on_change and result["n_changed"] > 0 else 0


def _add_audit(sub: argparse._SubParsersAction) -> None:
    from sp2dpo import audit

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
                   help="exit with status 1 when any pair changed by more than the threshold (CI gate)")
    d.set_defaults(func=_cmd_audit_diff)


#: Parser builders, one per subcommand; a new subcommand adds its builder here.
def _cmd_train(args: argparse.Namespace) -> None:
    from sp2dpo import train

    _print_json(
        train.run(
            args.student,
            args.method,
            params_path=args.params,
            train_config=args.train_config,
            track=not args.no_track,
        )
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one (student, method) of params `train` (DPO / SP2DPO)")
    p.add_argument("student", help="a train.students[].name")
    p.add_argument("method", help="a train.methods[].name")
    p.add_argument("--params", default="params.yaml", help="params file (sections `train`, `beta`)")
    p.add_argument(
        "--train-config", default=None, help="YAML whose `train` section replaces the params one"
    )
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=_cmd_train)


def _cmd_eval(args: argparse.Namespace) -> None:
    from sp2dpo.evaluate import run

    report = run.run(args.student, params_path=args.params, track=not args.no_track)
    _print_json({m: e.get("alpaca_eval") | {"ifeval": e.get("ifeval")} for m, e in report["methods"].items()})


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="AlpacaEval 2.0 (judge, WR, LC) and IFEval for a student's base model and adapters",
        description="The eval stage for one student: answers, judge annotations, win rates, IFEval.",
    )
    p.add_argument("student", help="a name in params.yaml train.students")
    p.add_argument("--params", default=str(config.DEFAULT_PARAMS))
    p.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=_cmd_eval)


def _add_winrate(sub: argparse._SubParsersAction) -> None:
    from sp2dpo.evaluate import winrate

    winrate.add_parser(sub)


def _add_ifeval(sub: argparse._SubParsersAction) -> None:
    from sp2dpo.evaluate import ifeval

    ifeval.add_parser(sub)


PARSERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_fetch,
    _add_filter,
    _add_annotate,
    _add_aggregate,
    _add_audit,
    _add_train,
    _add_eval,
    _add_winrate,
    _add_ifeval,
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
