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
import logging
from collections.abc import Callable, Sequence

from sp2dpo.cli import benchmarks, pipeline, rehearse, tools
from sp2dpo.cli.common import Subparsers
from sp2dpo.core.entry import guarded, setup_logging

#: Parser builders, one per subcommand, in the order ``sp2dpo --help`` lists them; a new
#: subcommand adds its builder here.
PARSERS: list[Callable[[Subparsers], None]] = [
    pipeline.add_fetch,
    pipeline.add_filter,
    pipeline.add_annotate,
    pipeline.add_aggregate,
    pipeline.add_train,
    pipeline.add_eval,
    pipeline.add_judge,
    pipeline.add_report,
    tools.add_audit,
    tools.add_verify,
    tools.add_numerics,
    benchmarks.add_winrate,
    benchmarks.add_ifeval,
    benchmarks.add_arenahard,
    benchmarks.add_mtbench,
    benchmarks.add_prefeval,
    tools.add_sweep,
    rehearse.add_rehearse,
    tools.add_params_cmd,
    tools.add_plots_template,
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sp2dpo", description="Semantic per-pair DPO: annotate, aggregate, train, evaluate."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (and the traceback of an unexpected error)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in PARSERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; its exit status (argparse's too: 0 after ``--help``, 2 for a bad flag)."""
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    return guarded(lambda: args.func(args), verbose=args.verbose)
