"""DVC stage `filter`: dedup on prompt_id, drop empty fields; exact counts per rule."""

import sys

from sp2dpo import data
from sp2dpo.core import config
from sp2dpo.core.entry import run_stage


def main() -> None:
    data.run_filter(config.load(sections=["filter"]).filter, data.FilterPaths.pipeline())


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
