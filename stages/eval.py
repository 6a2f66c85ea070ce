"""DVC stage `eval@<student>`: AlpacaEval 2.0 (judge, WR, LC) and IFEval for base + each method.

Usage: python stages/eval.py STUDENT
"""

import sys

from sp2dpo.cli import run_stage
from sp2dpo.evaluate import run

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python stages/eval.py STUDENT")
    run_stage(lambda: run.run(sys.argv[1]))
