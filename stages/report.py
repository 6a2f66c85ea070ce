"""DVC stage `report`: the Table-2-style results (reports/eval.*) and the reports index."""

import sys

from sp2dpo import report
from sp2dpo.core.entry import run_stage


def main() -> None:
    report.run(report.ReportPaths.pipeline())


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
