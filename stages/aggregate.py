"""DVC stage `aggregate`: teacher call table -> per-pair beta artifact CSV + reports."""

import sys

from sp2dpo import aggregate
from sp2dpo.core import config
from sp2dpo.core.entry import run_stage


def main() -> None:
    params = config.load(sections=["aggregate", "beta"])
    aggregate.run(params.aggregate, params.beta, aggregate.AggregatePaths.pipeline())


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
