"""DVC stage `annotate`: teachers x prompt variants label each filtered pair's semantic gap."""

import sys

from sp2dpo import annotate
from sp2dpo.core import config
from sp2dpo.core.entry import run_stage


def main() -> None:
    params = config.load(sections=["teachers", "prompts", "decoding", "annotate"])
    annotate.run(params.teachers, params.prompts, params.decoding, params.annotate,
                 annotate.AnnotatePaths.pipeline(), track=True)


if __name__ == "__main__":
    run_stage(main, sys.argv[1:])
