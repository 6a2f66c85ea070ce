"""The sweep in MLflow: one parent run per sweep, one child run per experiment.

In the experiment :data:`SWEEP_EXPERIMENT` (model-training kind, so the UI opens on the runs
table): the parent run ``<sweep.name>`` carries the spec (metric, direction, swept keys) and the
outcome as tags (``lambda_star``, ``best_experiment``, ``distinguishable``) and the best score as
a metric; each child run ``<sweep.name>-<n>`` (tag ``mlflow.parentRunId``) carries the setting as
params, the score and its interval as metrics, the DVC experiment and commit as tags, the id of
the training run the experiment's stages logged (tag ``training_run_id``, found by its
``dvc_exp`` tag) and that run's dataset inputs (the pairs table and the beta artifact with their
digests), so the UI's dataset column shows each setting's lineage.

Logging is idempotent: a second ``sweep select`` finds the parent (tag ``sp2dpo.sweep``) and each
child (tags ``dvc_exp`` and ``dvc_rev``) and only updates the outcome tags, so records are never
duplicated. Every call holds the tracking store's lock.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sp2dpo import tracking
from sp2dpo.sweep.select import Selection, Trial

#: MLflow experiment of the sweeps' parent and child runs.
SWEEP_EXPERIMENT = "sp2dpo-sweep"
#: Tag naming the sweep a run belongs to, and the run's role (``parent`` / ``child``).
SWEEP_TAG = "sp2dpo.sweep"
ROLE_TAG = "sp2dpo.sweep_role"
PARENT_TAG = "mlflow.parentRunId"


def _find(client: Any, experiment_id: str, filter_string: str) -> Any | None:
    runs = client.search_runs([experiment_id], filter_string=filter_string,
                              order_by=["attributes.start_time ASC"], max_results=1)
    return runs[0] if runs else None


def _training_run(client: Any, trial: Trial) -> Any | None:
    """The newest training run the experiment's stages logged (tag ``dvc_exp``)."""
    experiment = client.get_experiment_by_name(tracking.EXPERIMENT)
    if experiment is None:
        return None
    filters = [f"tags.dvc_exp = '{trial.name}'"]
    if trial.method:
        filters.append(f"params.method = '{trial.method}'")
    runs = client.search_runs([experiment.experiment_id], filter_string=" and ".join(filters),
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def log_sweep(sel: Selection, *, root: str | Path = ".", report: str | Path | None = None) -> dict[str, Any]:
    """Log (or update) the sweep's parent run and one child run per trial.

    Args:
        sel: the selection (:func:`sp2dpo.sweep.select.select`).
        root: a folder of the repository (default tracking store).
        report: the selection report folder, logged as the parent's artifacts.

    Returns:
        ``{"experiment_id", "parent", "children": {experiment name: run id}}``.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = tracking.tracking_uri(root)
    client = MlflowClient(uri)
    best = sel.best.name if sel.best else ""
    outcome = {
        "lambda_star": json.dumps(sel.best.setting if sel.best else None, sort_keys=True),
        "best_experiment": best,
        "distinguishable": str(sel.distinguishable).lower(),
        "criterion": sel.criterion,
    }
    with tracking.store_lock(uri):
        experiment_id = tracking.ensure_experiment(SWEEP_EXPERIMENT, root)
        found = _find(client, experiment_id, f"tags.`{SWEEP_TAG}` = '{sel.sweep}' and tags.`{ROLE_TAG}` = 'parent'")
        if found is None:
            commit, _ = tracking.git_commit(tracking.repo_root(root))
            parent = client.create_run(experiment_id, run_name=sel.sweep, tags={
                SWEEP_TAG: sel.sweep, ROLE_TAG: "parent", "git_commit": commit,
                "sweep.metric": sel.metric, "sweep.direction": sel.direction,
                "sweep.variables": json.dumps(sel.variables),
            }).info.run_id
        else:
            parent = found.info.run_id
        for key, value in outcome.items():
            client.set_tag(parent, key, value)
        now = int(time.time() * 1000)
        if sel.best is not None and sel.best.value is not None:
            client.log_batch(parent, metrics=[Metric(f"best/{sel.metric}", sel.best.value, now, 0)])
        children: dict[str, str] = {}
        for trial in sel.trials:
            found = _find(client, experiment_id,
                          f"tags.`{PARENT_TAG}` = '{parent}' and tags.dvc_exp = '{trial.name}' "
                          f"and tags.dvc_rev = '{trial.rev}'")
            metrics = []
            if trial.value is not None:
                metrics.append(Metric(sel.metric, trial.value, now, 0))
            if trial.ci is not None:
                metrics += [Metric(f"{sel.metric}_ci_low", trial.ci[0], now, 0),
                            Metric(f"{sel.metric}_ci_high", trial.ci[1], now, 0)]
            versus = sel.paired.get(trial.name)
            if versus is not None:  # the paired difference best - this experiment
                metrics += [Metric(f"best_minus_this/{sel.metric}", versus["diff"], now, 0),
                            Metric(f"best_minus_this/{sel.metric}_ci_low", versus["ci"][0], now, 0),
                            Metric(f"best_minus_this/{sel.metric}_ci_high", versus["ci"][1], now, 0)]
            if found is not None:
                run_id = found.info.run_id
                missing = [m for m in metrics if found.data.metrics.get(m.key) != m.value]
                if missing:  # a metric selected by another sweep.metric, or a new lambda*
                    client.log_batch(run_id, metrics=missing)
            else:
                run_id = client.create_run(experiment_id, run_name=trial.name, tags={
                    PARENT_TAG: parent, SWEEP_TAG: sel.sweep, ROLE_TAG: "child",
                    "dvc_exp": trial.name, "dvc_rev": trial.rev,
                }).info.run_id
                params = [Param(k, _value(v)) for k, v in sorted(trial.setting.items())]
                params += [Param(k, v) for k, v in (("student", trial.student), ("method", trial.method)) if v]
                client.log_batch(run_id, metrics=metrics, params=params, tags=[
                    RunTag("state", trial.state or "success"),
                    *([RunTag("problem", trial.problem)] if trial.problem else []),
                ])
                training = _training_run(client, trial)
                if training is not None:
                    client.set_tag(run_id, "training_run_id", training.info.run_id)
                    if training.inputs and training.inputs.dataset_inputs:
                        client.log_inputs(run_id, datasets=list(training.inputs.dataset_inputs))
                client.set_terminated(run_id, "FINISHED" if trial.value is not None else "FAILED")
            client.set_tag(run_id, "selected", str(trial.name == best).lower())
            children[trial.name] = run_id
        if report is not None and Path(report).is_dir():
            client.log_artifacts(parent, str(report), artifact_path="selection")
        client.set_terminated(parent, "FINISHED")
    return {"experiment_id": experiment_id, "parent": parent, "children": children}
