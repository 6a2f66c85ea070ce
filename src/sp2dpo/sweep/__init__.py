"""The APO outer loop: choose process variables by a held-out metric of the trained student.

- :mod:`.queue`: the sweep spec (params ``sweep``) as DVC experiments queued with
  ``dvc exp run --queue -S key=value`` and run by ``dvc queue start -j N`` (``sp2dpo sweep run``);
- :mod:`.select`: the finished experiments read back from ``dvc exp show --json``, lambda* and
  the selection report (``sp2dpo sweep select``);
- :mod:`.paired`: the paired bootstrap of the per-pair held-out difference behind
  "distinguishable";
- :mod:`.track`: the sweep in MLflow, a parent run with one child run per experiment;
- :mod:`.flow`: ``sp2dpo sweep select`` as one call: read, select, report, log, apply.

DVC stays the owner of every experiment's params, metrics, plots and outputs; this package only
writes the commands DVC runs and reads what DVC recorded. It is not a DVC stage.
"""

from sp2dpo.sweep.flow import select_sweep
from sp2dpo.sweep.paired import dvc_reader
from sp2dpo.sweep.queue import SweepError, experiment_names, overrides, run_sweep
from sp2dpo.sweep.select import (
    Selection,
    Trial,
    git_reader,
    markdown,
    read_trials,
    select,
    write_report,
)

__all__ = [
    "Selection",
    "SweepError",
    "Trial",
    "dvc_reader",
    "experiment_names",
    "git_reader",
    "markdown",
    "overrides",
    "read_trials",
    "run_sweep",
    "select",
    "select_sweep",
    "write_report",
]
