"""``sp2dpo sweep select``: the finished experiments to lambda*, its report, MLflow, ``--apply``.

One sequence, :func:`select_sweep`: ``dvc exp show --json`` lists the experiments, each one's
score and interval come from its committed metrics file (:func:`~sp2dpo.sweep.select.git_reader`)
and its per-pair records (:func:`~sp2dpo.sweep.paired.dvc_reader`), :func:`~sp2dpo.sweep.select.select`
picks lambda*, the report is written, the sweep is logged to MLflow
(:func:`~sp2dpo.sweep.track.log_sweep`), and on request ``dvc exp apply`` puts lambda* in the
workspace.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from sp2dpo import tracking
from sp2dpo.core import programs
from sp2dpo.core.config import SweepConfig
from sp2dpo.sweep import track
from sp2dpo.sweep.paired import dvc_reader
from sp2dpo.sweep.queue import DVC_TIMEOUT, SweepError
from sp2dpo.sweep.select import Selection, git_reader, markdown, read_trials, select, write_report

#: The MLflow UI the printed link points at (``mlflow ui``'s default address).
MLFLOW_UI = "http://127.0.0.1:5000"


def select_sweep(
    cfg: SweepConfig,
    repo: str | Path = ".",
    *,
    out: str | Path | None = None,
    all_commits: bool = False,
    log: bool = True,
    apply: bool = False,
    echo: Callable[[str], None] = print,
) -> Selection:
    """Select lambda* from the sweep's finished experiments, write the report, log, apply.

    Args:
        cfg: the sweep spec (params ``sweep``).
        repo: the DVC repository the experiments were run in.
        out: the report folder (default ``reports/sweep/<sweep.name>`` in ``repo``).
        all_commits: look on every commit (``dvc exp show -A``), not only the baseline's.
        log: log the sweep to MLflow (a parent run, one child per experiment).
        apply: ``dvc exp apply`` the best experiment to the workspace.
        echo: where the MLflow link, the report as markdown and what was written go.

    Returns:
        The selection (lambda*, the runner-up, and whether they are distinguishable).

    Raises:
        SweepError: a failed ``dvc`` call, or ``apply`` with no experiment scored.
    """
    repo = Path(repo)
    show = programs.dvc("exp", "show", "--json", *(["-A"] if all_commits else []), cwd=repo,
                        timeout=DVC_TIMEOUT, error=SweepError)
    trials = read_trials(json.loads(show.stdout or "[]"), cfg, git_reader(repo), dvc_reader(repo))
    selection = select(trials, cfg)
    folder = Path(out) if out else repo / "reports" / "sweep" / cfg.name
    written = write_report(selection, folder)
    if log:
        logged = track.log_sweep(selection, root=repo, report=folder)
        echo(f"MLflow: parent run {logged['parent']} with {len(logged['children'])} child run(s) "
             f"in experiment {track.SWEEP_EXPERIMENT}; after `mlflow ui`, open "
             + tracking.ui_url(MLFLOW_UI, logged["experiment_id"]))
    echo(markdown(selection).removesuffix("\n"))
    echo(f"wrote {', '.join(str(p) for p in written)}")
    if apply:
        if selection.best is None:
            raise SweepError(f"sweep {cfg.name!r}: no experiment has a score; nothing to apply")
        programs.dvc("exp", "apply", selection.best.name, cwd=repo, timeout=DVC_TIMEOUT, error=SweepError)
        echo(f"applied {selection.best.name} (lambda*) to the workspace: `dvc status` / `git diff` show it")
    return selection
