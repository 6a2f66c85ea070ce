"""``sp2dpo sweep run``: the sweep spec as DVC experiments in DVC's own queue.

Every setting of the grid becomes ``dvc exp run --queue -n <name>-<n> [-S +profiles=P]
-S key=value ... [targets]``; ``dvc queue start -j <jobs>`` runs them in parallel temporary
workspaces, and the command waits until none is queued or running. Each experiment's params,
metrics, plots and outputs are DVC's (``dvc exp show``, ``dvc plots diff``, ``dvc exp apply``).

What the workers share, so a sweep never pays twice and never corrupts a store:

- teacher calls: ``SP2DPO_SHARED_CALLS`` (default ``.dvc/tmp/sp2dpo-shared-calls``), a live call
  store every worker reads and appends to, with per-key claims (``sp2dpo.llm.callstore``), so
  two workers that need the same call make it once;
- answers and judge calls: ``SP2DPO_SHARED_EVAL_CALLS`` (default
  ``.dvc/tmp/sp2dpo-shared-eval-calls``), read and appended to by every worker's eval stage (no
  claims: two workers judging the same answer at the same moment both pay; later ones reuse);
- MLflow: DVC gives every queued stage ``DVC_ROOT``, the workspace the experiment was queued
  from, and ``sp2dpo.tracking`` logs there (one store, writes serialised by a file lock).

- CPU threads: ``OMP_NUM_THREADS`` = cores // jobs unless set (torch would give every worker
  every core).

The environment reaches the workers only if ``dvc queue start`` starts them (a worker already
running keeps its own environment); this command refuses to add to a queue that is running.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core import programs
from sp2dpo.core.config import SweepConfig, flatten, read_yaml
from sp2dpo.core.errors import UserError

log = logging.getLogger(__name__)

#: The shared live call stores of a sweep's workers (teachers; answers and judges), relative to
#: the repository root.
SHARED_CALLS = Path(".dvc/tmp/sp2dpo-shared-calls")
SHARED_EVAL_CALLS = Path(".dvc/tmp/sp2dpo-shared-eval-calls")
#: Seconds between two looks at the queue.
POLL_S = 3.0
#: Seconds one ``dvc`` command (queue one experiment, start the workers, list) may take.
DVC_TIMEOUT = 600


class SweepError(UserError):
    """A sweep that cannot be queued, run or read (the message says what and how to fix it)."""


def experiment_names(cfg: SweepConfig) -> list[str]:
    """``<name>-1`` .. ``<name>-N``, one per setting of the grid, in grid order."""
    return [f"{cfg.name}-{i}" for i in range(1, cfg.size() + 1)]


def hydra_value(value: Any) -> str:
    """``value`` in the override grammar ``dvc exp run -S`` parses (Hydra's): numbers and
    booleans as YAML writes them, strings quoted, lists ``[a,b]``, mappings ``{k:v}``.

    Example:
        >>> hydra_value(["dpo", "sp2dpo"]), hydra_value(0.3), hydra_value(None), hydra_value("a b")
        ("['dpo','sp2dpo']", '0.3', 'null', "'a b'")
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise SweepError(f"sweep: cannot pass {value!r} ({type(value).__name__}) to `dvc exp run -S`")


def overrides(cfg: SweepConfig, setting: Mapping[str, Any]) -> list[str]:
    """The ``-S`` arguments of one experiment: the profile, ``sweep.set``, then the setting."""
    args: list[str] = []
    if cfg.profile:
        args += ["-S", f"+profiles={cfg.profile}"]
    for key, value in {**cfg.set, **setting}.items():
        args += ["-S", f"{key}={hydra_value(value)}"]
    return args


def check_keys(cfg: SweepConfig, params_file: Path) -> None:
    """Every swept and set key names a key of ``params_file`` (the workspace ``params.yaml``):
    a typo fails here, with the closest keys, instead of in every queued experiment."""
    flat = flatten(read_yaml(params_file))
    for where, keys in (("sweep.variables", cfg.variables), ("sweep.set", cfg.set)):
        for key in keys:
            if key in flat or any(k.startswith(key + ".") for k in flat):
                continue
            close = difflib.get_close_matches(key, list(flat), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SweepError(f"{where}: {key!r} is not a key of {params_file}{hint}")


def _dvc(args: Sequence[str], repo: Path, env: Mapping[str, str]) -> str:
    """``dvc ARGS`` in ``repo`` (:func:`sp2dpo.core.programs.dvc`): its output, or
    :class:`SweepError` naming the command and the tail of its output."""
    return programs.dvc(*args, cwd=repo, env=env, timeout=DVC_TIMEOUT, error=SweepError).stdout


def queue_status(repo: Path, env: Mapping[str, str]) -> dict[str, str]:
    """``{experiment name: status}`` from ``dvc queue status`` (Queued, Running, Success,
    Failed, ...)."""
    status: dict[str, str] = {}
    for line in _dvc(["queue", "status"], repo, env).splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3 and re.fullmatch(r"[0-9a-f]{7,}", parts[0]):
            status[parts[1]] = parts[-1]
    return status


def existing_experiments(repo: Path, env: Mapping[str, str]) -> set[str]:
    """Names of the experiments ``dvc exp show`` lists for the workspace's baseline."""
    show = json.loads(_dvc(["exp", "show", "--json"], repo, env) or "[]")
    return {
        rev.get("name") or ""
        for baseline in show
        for group in baseline.get("experiments") or []
        for rev in group.get("revs") or []
    } - {""}


def worker_env(repo: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ``dvc queue start``: the shared live call stores set (unless given)."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault("SP2DPO_SHARED_CALLS", str((repo / SHARED_CALLS).resolve()))
    env.setdefault("SP2DPO_SHARED_EVAL_CALLS", str((repo / SHARED_EVAL_CALLS).resolve()))
    return env


def cpu_threads(env: MutableMapping[str, str], jobs: int) -> None:
    """Split the CPU cores between ``jobs`` workers (``OMP_NUM_THREADS``, unless set): each
    torch process otherwise takes every core, and N workers on a CPU machine oversubscribe it."""
    cores = os.cpu_count() or 1
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // max(1, jobs))))


def run_sweep(
    cfg: SweepConfig,
    repo: str | Path = ".",
    *,
    jobs: int | None = None,
    wait: bool = True,
    timeout_s: float | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, str]:
    """Queue every setting of ``cfg`` as a DVC experiment, start ``jobs`` workers and wait.

    Returns:
        ``{experiment name: final queue status}`` (``Queued`` for all when ``wait`` is false).

    Raises:
        SweepError: an empty grid, a name already used, a running queue, a failed ``dvc`` call,
            or (after waiting) experiments that failed, with the command that shows their logs.
    """
    repo = Path(repo).resolve()
    settings = cfg.settings()
    if not settings:
        raise SweepError("sweep: `sweep.variables` is empty: name at least one params key and its values")
    check_keys(cfg, repo / "params.yaml")
    env = worker_env(repo)
    names = experiment_names(cfg)
    taken = sorted(set(names) & existing_experiments(repo, env))
    busy = {n: s for n, s in queue_status(repo, env).items() if s in ("Queued", "Running")}
    if taken:
        raise SweepError(
            f"sweep {cfg.name!r}: experiment(s) {', '.join(taken)} exist already; choose another "
            f"sweep.name or remove them (`dvc exp remove {' '.join(taken)}`)"
        )
    if busy:
        raise SweepError(
            f"sweep: the DVC queue is busy ({', '.join(sorted(busy))}); wait for it or "
            "`dvc queue kill`/`dvc queue remove --queued` first"
        )
    for name, setting in zip(names, settings, strict=True):
        args = ["exp", "run", "--queue", "-n", name, *overrides(cfg, setting), *cfg.targets]
        _dvc(args, repo, env)
        echo(f"queued {name}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in setting.items()))
    workers = jobs or cfg.jobs
    cpu_threads(env, workers)
    _dvc(["queue", "start", "-j", str(workers)], repo, env)
    echo(f"started {workers} DVC queue worker(s); follow with `dvc queue status` / `dvc queue logs NAME`")
    if not wait:
        return dict.fromkeys(names, "Queued")
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = queue_status(repo, env)
        ours = {n: status.get(n, "Unknown") for n in names}
        if not any(s in ("Queued", "Running") for s in ours.values()):
            break
        if deadline is not None and time.monotonic() > deadline:
            raise SweepError(
                f"sweep {cfg.name!r}: not finished after {timeout_s:.0f} s "
                f"({', '.join(f'{n}: {s}' for n, s in ours.items())}); it keeps running in the queue"
            )
        time.sleep(POLL_S)
    failed = [n for n, s in ours.items() if s != "Success"]
    for name in names:
        echo(f"{name}: {ours[name]}")
    if failed:
        raise SweepError(
            f"sweep {cfg.name!r}: {len(failed)} experiment(s) did not succeed ({', '.join(failed)}); "
            f"see `dvc queue logs {failed[0]}`"
        )
    return ours
