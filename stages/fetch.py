"""DVC stage `fetch`: raw pairs (Hub at a pinned revision, or a local snapshot) -> canonical table."""

import sys

from sp2dpo import data
from sp2dpo.core import config
from sp2dpo.core.entry import run_stage


def main() -> None:
    data.run_fetch(config.load(sections=["data"]).data, data.FetchPaths.pipeline())


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
