"""DVC stage `eval@<student>`: AlpacaEval 2.0 (judge, WR, LC) and IFEval for base + each method.

Usage: python stages/eval.py STUDENT
"""

import sys

from sp2dpo import evaluate
from sp2dpo.core import config
from sp2dpo.core.entry import run_stage


def main(student: str) -> None:
    params = config.load(sections=["eval", "train", "teachers", "matrix"])
    evaluate.run(params.eval, params.train, params.teachers, student, params.matrix.methods,
                 evaluate.EvalPaths.pipeline(student), logged_params=params.flat())


if __name__ == "__main__":
    run_stage(main, sys.argv[1:], usage="python stages/eval.py STUDENT")
