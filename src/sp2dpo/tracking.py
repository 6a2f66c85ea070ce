"""MLflow tracking: one run per (student, method), with every process variable that produced it.

- Tracking URI: ``$MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<root>/mlflow.db`` with a local
  artifact store ``<root>/mlartifacts``, where ``<root>`` is ``$DVC_ROOT`` when DVC runs the stage
  (for a queued or temporary experiment DVC sets it to the workspace the experiment came from, so
  every worker of a sweep logs to the one store the user opens) and the git repository root else.
- Parallel writers: every read and write of a sqlite store holds a file lock beside it
  (``mlflow.db.lock``), so parallel DVC queue workers never interleave or lose a record (sqlite
  itself answers a second writer with "database is locked", and two first-time schema creations
  race).
- Experiments are created with the MLflow 3 experiment kind of model training
  (``mlflow.experimentKind`` = ``custom_model_development``). The MLflow 3.17 UI chooses its
  landing page from its "GenAI / Model training" switch instead: a link with
  ``?workflowType=machine_learning`` (:func:`ui_url`) opens the runs table.
- Inputs: a training run logs the pairs table and the beta artifact as MLflow datasets
  (:meth:`Tracker.log_datasets`: name, source path, digest = the file's sha256 prefix, the full
  sha256 as an input tag), which fills the UI's dataset column.
- Params: the pinned ones (``method``, ``student``, ``beta_column``, ``beta_artifact_sha256``) and
  the flattened ``params.yaml`` (``config.flatten``), after :func:`scrub`.
- Tags: ``git_commit`` (``HEAD``, plus ``git_dirty``), ``numerics`` and ``cpu_capability`` (the
  CPU kernels the run used: :mod:`sp2dpo.numerics`) and, inside ``dvc exp run``, ``dvc_exp``
  (DVC sets ``DVC_EXP_NAME`` for the stages of an experiment).
- Secrets: values of the environment variables named by any ``*api_key_env`` param, keys named
  like a credential, and values that look like a key are never logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo import numerics
from sp2dpo.core import artifacts, programs
from sp2dpo.core.locks import FileLock

#: MLflow experiment of the training runs.
EXPERIMENT = "sp2dpo-train"
#: Replacement for a scrubbed value.
REDACTED = "***"
#: MLflow's limit on a param value.
_MAX_PARAM_CHARS = 6000
#: Experiment tag of MLflow 3's experiment kind, and the kind of model training (the UI's
#: "machine learning" experiments open on the runs table, not on traces).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: Characters of the file sha256 used as an MLflow dataset digest (the store keeps 36 at most).
DIGEST_CHARS = 16

_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)s?$", re.IGNORECASE)
_SECRET_VALUE = re.compile(
    r"^(sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|AIza[0-9A-Za-z_-]{30,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[baprs]-[A-Za-z0-9-]{10,}|Bearer\s+\S{16,})$"
)


def repo_root(start: str | Path = ".") -> Path:
    """The git repository root above ``start`` (``start`` itself when not in a repository)."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


def store_root(root: str | Path = ".") -> Path:
    """Where the default MLflow store lives: ``$DVC_ROOT`` (set by DVC for every stage; the
    originating workspace for queued and temporary experiments) if it exists, else the git
    repository root above ``root``."""
    env = os.environ.get("DVC_ROOT")
    if env and Path(env).is_dir():
        return Path(env).resolve()
    return repo_root(root)


def tracking_uri(root: str | Path = ".") -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<store root>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{store_root(root) / 'mlflow.db'}"


#: One lock object per sqlite store in this process, so nested uses are reentrant.
_STORE_LOCKS: dict[str, FileLock] = {}


def store_lock(uri: str) -> contextlib.AbstractContextManager[Any]:
    """The inter-process lock of a sqlite tracking store (``<db>.lock``; reentrant within the
    process); a no-op for a tracking server, which serialises writes itself."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    path = str(Path(uri[len("sqlite:///"):]).resolve()) + ".lock"
    return _STORE_LOCKS.setdefault(path, FileLock(path))


def ui_url(base: str, experiment_id: str) -> str:
    """The MLflow UI address of an experiment's runs table (``base``: e.g. http://127.0.0.1:5000)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def ensure_experiment(name: str, root: str | Path = ".") -> str:
    """The id of experiment ``name`` (created if missing, with the default artifact store and the
    model-training experiment kind; an existing one without a kind gets it). Call under
    :func:`store_lock`."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            location = (store_root(root) / "mlartifacts").as_uri()
        try:
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except Exception:  # created meanwhile by a process that does not take our lock
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def git_commit(root: str | Path = ".") -> tuple[str, bool]:
    """``(HEAD commit, dirty)``; ``("unknown", False)`` outside a git checkout."""
    try:
        head = programs.git("rev-parse", "HEAD", cwd=root).stdout.strip()
        status = programs.git("status", "--porcelain", "--untracked-files=no", cwd=root).stdout
        return head, bool(status.strip())
    except programs.ProgramError:
        return "unknown", False


def dvc_experiment() -> str | None:
    """The DVC experiment name inside ``dvc exp run`` (``DVC_EXP_NAME``), else None."""
    return os.environ.get("DVC_EXP_NAME") or None


def scrub(params: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Params safe to log: credential-like keys and values, and values of named env vars, redacted.

    ``*api_key_env`` params hold the *name* of an environment variable (``OPENAI_API_KEY``); the
    name is kept, but any param whose value equals that variable's value is redacted.

    Example:
        >>> scrub({"teachers.0.api_key_env": "K", "x.api_key": "abc", "y": "abc"}, {"K": "abc"})
        {'teachers.0.api_key_env': 'K', 'x.api_key': '***', 'y': '***'}
    """
    environ = os.environ if environ is None else environ
    secret_values = {
        environ[str(v)]
        for k, v in params.items()
        if str(k).endswith("api_key_env") and isinstance(v, str) and environ.get(v)
    }
    out: dict[str, Any] = {}
    for key, value in params.items():
        last = str(key).rsplit(".", 1)[-1]
        text = str(value) if value is not None else ""
        if (
            (_SECRET_KEY.search(last) and not last.endswith("_env"))
            or (text and text in secret_values)
            or _SECRET_VALUE.match(text.strip())
        ):
            out[key] = REDACTED
        else:
            out[key] = value
    return out


@dataclasses.dataclass(frozen=True)
class DatasetRef:
    """A file a run consumed, logged as an MLflow dataset input.

    Args:
        name: the dataset's name in the UI (``pairs``, ``beta``).
        path: the file (its path relative to the repository is the dataset's source).
        frame: the table as the run read it (MLflow records its schema and row count).
        sha256: the file's sha256 (its prefix is the dataset digest; the whole one an input tag).
        context: the input's role (``training``).
    """

    name: str
    path: str
    frame: Any
    sha256: str
    context: str = "training"


class Tracker:
    """A thin handle on the active MLflow run (what the trainer needs); every call holds the
    store's lock."""

    def __init__(self, run: Any, lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        self.run = run
        self.run_id: str = run.info.run_id
        self._lock = lock if lock is not None else contextlib.nullcontext()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import mlflow

        with self._lock:
            mlflow.log_metrics({_metric_key(k): float(v) for k, v in metrics.items()}, step=step)

    def log_artifacts(self, folder: str | Path, artifact_path: str) -> None:
        import mlflow

        with self._lock:
            mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        import mlflow

        with self._lock:
            mlflow.log_dict(obj, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        import mlflow

        with self._lock:
            mlflow.set_tags(dict(tags))

    def log_datasets(self, inputs: Sequence[DatasetRef]) -> None:
        """Log each file as a dataset input (name, source, digest, schema, rows; sha256 tag)."""
        import mlflow

        with self._lock:
            for ref in inputs:
                dataset = mlflow.data.from_pandas(
                    ref.frame, source=ref.path, name=ref.name, digest=ref.sha256[:DIGEST_CHARS]
                )
                mlflow.log_input(dataset, context=ref.context, tags={"sha256": ref.sha256})


def _metric_key(key: str) -> str:
    # MLflow allows alphanumerics, _ - . space : / ; map anything else to _.
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)


def _param_value(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def numerics_tags() -> dict[str, str]:
    """``numerics`` (pinned/native) and, when torch is loaded, ``cpu_capability`` (the kernels
    it runs): whether a run's float outputs can match another machine's (:mod:`sp2dpo.numerics`)."""
    state = numerics.state()
    tags = {"numerics": str(state["mode"])}
    if "cpu_capability" in state:
        tags["cpu_capability"] = str(state["cpu_capability"])
    return tags


@contextlib.contextmanager
def start_run(
    run_name: str,
    flat_params: Mapping[str, Any],
    pinned: Mapping[str, Any],
    *,
    root: str | Path = ".",
    experiment: str = EXPERIMENT,
    tags: Mapping[str, str] | None = None,
) -> Iterator[Tracker]:
    """Open an MLflow run with params (scrubbed) and provenance tags; yield a :class:`Tracker`.

    Args:
        run_name: ``<student>-<method>``.
        flat_params: the flattened ``params.yaml`` (every process variable).
        pinned: params every run must carry (``method``, ``student``, ``beta_column``,
            ``beta_artifact_sha256``); they win over a flattened key of the same name.
        root: a folder inside the repository (for the default URI and the git commit).
        experiment: MLflow experiment name.
        tags: extra tags.
    """
    import mlflow

    uri = tracking_uri(root)
    lock = store_lock(uri)
    mlflow.set_tracking_uri(uri)
    commit, dirty = git_commit(repo_root(root))
    all_tags = {"git_commit": commit, "git_dirty": str(dirty).lower(), **numerics_tags(), **(tags or {})}
    exp_name = dvc_experiment()
    if exp_name:
        all_tags["dvc_exp"] = exp_name
    params = scrub({**dict(flat_params), **dict(pinned)})
    with lock:
        experiment_id = ensure_experiment(experiment, root)
        active = mlflow.start_run(run_name=run_name, tags=all_tags, experiment_id=experiment_id)
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})
    status = "FAILED"
    try:
        yield Tracker(active, lock)
        status = "FINISHED"
    finally:
        with lock:
            mlflow.end_run(status)


#: MLflow experiment of evaluation runs that have no training run (the base student).
EVAL_EXPERIMENT = "sp2dpo-eval"
#: MLflow experiment of annotate runs (calls made, cost, teacher latencies).
ANNOTATE_EXPERIMENT = "sp2dpo-annotate"


def adapter_sha256(path: str | Path) -> str:
    """sha256 of an adapter folder's weights file: the key that links eval results to the
    training run that produced the adapter."""
    return artifacts.sha256_file(Path(path) / "adapter_model.safetensors")


def find_training_run(
    adapter_sha: str, *, student: str, method: str, root: str | Path = "."
) -> str | None:
    """The newest training run of ``student`` x ``method`` whose adapter has this sha256 (tag
    ``adapter_sha256``), or None. Two methods can produce identical adapters (e.g. a constant
    beta_i equal to DPO's beta), hence the student and method in the filter."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    with store_lock(uri):
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None or not adapter_sha:
            return None
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=(
                f"tags.adapter_sha256 = '{adapter_sha}' and params.student = '{student}' "
                f"and params.method = '{method}'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    return runs[0].info.run_id if runs else None


def log_eval(
    run_name: str,
    metrics: Mapping[str, float | None],
    *,
    adapter_sha: str | None,
    flat_params: Mapping[str, Any],
    pinned: Mapping[str, Any],
    root: str | Path = ".",
    artifacts: Mapping[str, str | Path] | None = None,
) -> str:
    """Log evaluation metrics (keys prefixed ``eval/``) where the evaluated model came from.

    A trained adapter's metrics go into its training run (found by :func:`find_training_run`),
    so one MLflow run shows the process variables, the loss curve and the results. The base
    student, or an adapter whose run is not in this tracking store, gets its own run in
    :data:`EVAL_EXPERIMENT` with the same params and provenance tags. ``pinned`` must hold
    ``student`` and ``method``.

    Returns:
        The id of the run the metrics went to.
    """
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    values = {f"eval/{_metric_key(k)}": float(v) for k, v in metrics.items() if v is not None}
    run_id = (
        find_training_run(adapter_sha, student=str(pinned["student"]), method=str(pinned["method"]), root=root)
        if adapter_sha
        else None
    )
    if run_id is None:
        with start_run(run_name, flat_params, pinned, root=root, experiment=EVAL_EXPERIMENT) as tracker:
            run_id = tracker.run_id
    uri = tracking_uri(root)
    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    with store_lock(uri):
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(values.items())])
        exp_name = dvc_experiment()
        if exp_name:
            client.set_tag(run_id, "eval_dvc_exp", exp_name)
        for artifact_path, path in (artifacts or {}).items():
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
    return run_id
