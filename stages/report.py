"""DVC stage `report`: the Table-2-style results (reports/eval.*) and the reports index.

Usage: python stages/report.py
"""

from sp2dpo import report_index
from sp2dpo.cli import run_stage
from sp2dpo.evaluate import results


def main() -> None:
    results.run(".")
    report_index.write_index(".")


if __name__ == "__main__":
    run_stage(main)
