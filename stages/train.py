"""DVC stage `train@<student>-<method>`: one DPO / SP2DPO run of params.yaml's `train` section.

Usage: python stages/train.py STUDENT METHOD   (also under `accelerate launch`: `train.launcher`)
"""

import sys

from sp2dpo import train
from sp2dpo.core import config
from sp2dpo.core.entry import run_stage


def main(student: str, method: str) -> None:
    params = config.load(sections=["train", "beta"])
    train.run(params.train, params.beta, student, method, train.TrainPaths.pipeline(student, method),
              logged_params=params.flat())


if __name__ == "__main__":
    run_stage(main, sys.argv[1:], usage="python stages/train.py STUDENT METHOD")
