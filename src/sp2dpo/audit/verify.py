"""``sp2dpo verify [REV]``: prove that a commit's artifacts come from its code.

A commit holds code, params, inputs (``*.dvc``) and, in ``dvc.lock``, the md5 of every output the
pipeline wrote. :func:`verify` makes a throwaway clone of the repository at that commit, restores
its inputs, re-runs the whole pipeline from scratch with the clone's own code
(``dvc repro -f --no-run-cache``) and compares every output the lock records with the re-run's,
by md5 (a directory by its ``.dir`` md5; :mod:`sp2dpo.audit.outputs`). Each output that differs
is described by file type (:mod:`sp2dpo.audit.describe`) against the revision's own copy: read
from the DVC cache (fetched from the remote first) for cached outputs, from git for
``cache: false`` ones.

What may stand in for the re-run, and what may not:

- the teacher call store (``data/annotate/calls``, a persistent output) is pulled, so the re-run
  answers every teacher call from the recorded calls: the audit re-derives everything from what
  the teachers said without paying for the calls again; ``recall_teachers`` leaves it out, so
  the teachers are called again;
- nothing else: every stage runs (``-f``); DVC's run cache is not consulted (``--no-run-cache``);
  DVC deletes every other output before its stage runs; the re-run's outputs are not committed
  to the DVC cache (``--no-commit``: the workspace's cache, shared to save copying, receives
  the revision's fetched objects and nothing from the re-run); a shared live call store
  (``$SP2DPO_SHARED_CALLS``) is switched off.

The clone runs its own code (``PYTHONPATH=<clone>/src`` ahead of the editable install, which
may be another revision), logs to an MLflow store inside the clone, keeps DVC's site cache
inside the work folder, and is removed at the end, on Ctrl-C too (``keep`` keeps it). Nothing is
written to the user's workspace besides those cache objects.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

from sp2dpo import numerics
from sp2dpo.audit.compare import AuditError, git_root, resolve_commit
from sp2dpo.audit.outputs import (
    DIFFERS,
    EQUIVALENT,
    IDENTICAL,
    VerifyReport,
    Versions,
    compare_locks,
    lock_outputs,
    settle,
)
from sp2dpo.audit.tolerance import DEFAULT_TOLERANCE, check_tolerance
from sp2dpo.core import programs
from sp2dpo.core.artifacts import make_folder

#: Exit status of ``sp2dpo verify`` by verdict, and when the re-run itself failed.
EXIT_STATUS = {IDENTICAL: 0, DIFFERS: 1, EQUIVALENT: 4}
EXIT_REPRO_FAILED = 3
#: Timeout (s) of quick git and DVC commands; transfers (clone, fetch, pull) get longer.
QUICK_TIMEOUT = 120
TRANSFER_TIMEOUT = 3600
#: The teacher call store, a persistent output that answers teacher calls from recorded calls.
CALL_STORE = "data/annotate/calls"
#: The annotate stage's shared live call store (``sp2dpo.llm.callstore.SHARED_ENV``); audit/
#: may not import annotate/, and a shared store must never answer the re-run's calls.
SHARED_CALLS_ENV = "SP2DPO_SHARED_CALLS"
#: Variables that would point the clone's commands elsewhere (another repo, run or experiment).
DROPPED_ENV = (SHARED_CALLS_ENV, *programs.GIT_REDIRECTS, "DVC_EXP_NAME",
               "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
LOCK = "dvc.lock"
LOG_TAIL = 30

Progress = Callable[[str], None]


class VerifyError(AuditError):
    """A verification that cannot be made; the message says why."""


class ReproFailed(VerifyError):
    """The re-run failed; ``sp2dpo verify`` exits with :data:`EXIT_REPRO_FAILED`."""

    exit_status = EXIT_REPRO_FAILED

    def __init__(self, message: str, stage: str | None, log_tail: list[str]) -> None:
        super().__init__(message)
        self.stage = stage
        self.log_tail = log_tail


# --------------------------------------------------------------------------------------------
# subprocesses
# --------------------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, env: Mapping[str, str] | None = None,
         timeout: float = QUICK_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``cmd`` in ``cwd`` (:func:`sp2dpo.core.programs.run`), its exit status left to the caller;
    a :class:`VerifyError` when it cannot start or does not end in ``timeout`` seconds."""
    return programs.run(cmd, cwd=cwd, env=env, timeout=timeout, check=False, error=VerifyError)


def local_changes(root: Path) -> bool:
    """Whether tracked files in ``root`` differ from HEAD (``git status`` of tracked files)."""
    proc = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, env=_git_env())
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _git_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}


def clone_env(clone: Path) -> dict[str, str]:
    """The environment of the clone's DVC commands: the clone's code first on the import path,
    the running interpreter's bin first on PATH (stages run ``python``), MLflow inside the clone,
    no shared call store and nothing pointing at another repository or run."""
    env = _git_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(clone / "src"), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{clone / 'mlflow.db'}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def _dvc_cache_dir(root: Path, dvc: str) -> Path | None:
    """The workspace's DVC cache folder when it has one (``dvc cache dir`` only reads config)."""
    if not (root / ".dvc").is_dir():
        return None
    proc = _run([dvc, "cache", "dir"], cwd=root, env=_git_env())
    path = Path(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else None
    return path if path is not None and path.is_dir() else None


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


def _stderr(message: str) -> None:
    print(f"verify: {message}", file=sys.stderr, flush=True)


def verify(
    rev: str = "HEAD",
    *,
    repo: str | Path = ".",
    workdir: str | Path | None = None,
    keep: bool = False,
    recall_teachers: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    progress: Progress = _stderr,
) -> VerifyReport:
    """Re-run REV's pipeline in a fresh clone and compare every output with REV's ``dvc.lock``.

    An output whose md5 differs is ``equivalent`` when its numbers agree within ``tolerance``
    (relative) and everything else is exact (:mod:`sp2dpo.audit.tolerance`), else ``differs``.

    Raises:
        VerifyError: not a git repository, an unknown REV, no ``dvc.lock`` at REV, no DVC, or
            inputs (or the recorded teacher calls) that cannot be pulled.
        ReproFailed: the re-run failed (the tail of its log was printed through ``progress``).
    """
    tolerance = check_tolerance(tolerance)
    root = git_root(Path(repo), env=_git_env())
    sha = resolve_commit(root, rev, env=_git_env())
    if _run(["git", "cat-file", "-e", f"{sha}:{LOCK}"], cwd=root, env=_git_env()).returncode != 0:
        raise VerifyError(f"no {LOCK} at {rev} ({sha[:12]}): nothing to verify")
    if local_changes(root):
        progress(f"the working tree has local changes; they are not verified: this re-runs {rev} "
                 f"({sha[:12]}) from its commit, code and data as committed")
    dvc = programs.dvc_executable()
    shared_cache = _dvc_cache_dir(root, dvc)
    if workdir is not None:
        make_folder(workdir, what="--workdir")
    work = Path(tempfile.mkdtemp(prefix=f"sp2dpo-verify-{sha[:12]}-", dir=workdir)).resolve()
    try:
        report = _verify_in(work, root, sha, rev, dvc, shared_cache, recall_teachers, tolerance, progress)
        report.workdir = work if keep else None
        return report
    finally:
        if keep:
            progress(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _verify_in(work: Path, root: Path, sha: str, rev: str, dvc: str, shared_cache: Path | None,
               recall_teachers: bool, tolerance: float, progress: Progress) -> VerifyReport:
    clone = work / "repo"
    env = clone_env(clone)
    progress(f"cloning {root} at {rev} ({sha[:12]}) into {clone}")
    proc = _run(["git", "clone", "--quiet", "--no-checkout", str(root), str(clone)], cwd=work,
                env=_git_env(), timeout=TRANSFER_TIMEOUT)
    if proc.returncode != 0:
        raise VerifyError(f"git clone of {root} failed: {programs.tail(proc.stderr)}")
    if _run(["git", "checkout", "--quiet", sha], cwd=clone, env=env).returncode != 0:
        # a commit no branch or tag reaches (an experiment ref, a detached HEAD): fetch it
        _run(["git", "fetch", "--quiet", "origin", sha], cwd=clone, env=env, timeout=TRANSFER_TIMEOUT)
        proc = _run(["git", "checkout", "--quiet", sha], cwd=clone, env=env)
        if proc.returncode != 0:
            raise VerifyError(f"cannot check out {sha[:12]} in the clone: {programs.tail(proc.stderr)}")
    if not (clone / ".dvc").is_dir():
        raise VerifyError(f"{rev} ({sha[:12]}) is not a DVC repository (no .dvc folder)")
    log_path = work / "repro.log"

    def dvc_quick(*args: str, timeout: float = QUICK_TIMEOUT) -> subprocess.CompletedProcess[str]:
        proc = _run([dvc, *args], cwd=clone, env=env, timeout=timeout)
        with log_path.open("a") as log:
            log.write(f"$ dvc {' '.join(args)}\n{proc.stdout}{proc.stderr}")
        return proc

    dvc_quick("config", "--local", "core.site_cache_dir", str(work / "dvc-site-cache"))
    if shared_cache is not None:
        dvc_quick("cache", "dir", "--local", str(shared_cache))
    _absolute_remotes(dvc_quick, clone, root)
    cache_out = dvc_quick("cache", "dir").stdout.strip()
    cache = Path(cache_out) if cache_out else clone / ".dvc" / "cache"
    cache = cache if cache.is_absolute() else (clone / cache).resolve()
    tracked = frozenset(_run(["git", "ls-files", "-z"], cwd=clone, env=env).stdout.split("\0")) - {""}
    versions = Versions(clone, sha, cache, tracked, env)
    expected = yaml.safe_load((clone / LOCK).read_text()) or {}

    progress("fetching REV's outputs into the DVC cache")
    dvc_quick("fetch", timeout=TRANSFER_TIMEOUT)  # a partial fetch is fine: checked per output
    unavailable = sorted(
        path
        for outs in lock_outputs(expected).values()
        for path, md5 in outs.items()
        if not versions.rev_available(path, md5)
    )
    if unavailable:
        progress(f"REV's copy of {len(unavailable)} output(s) is in neither the DVC cache nor the "
                 f"remote (only their hashes compare): {', '.join(unavailable)}")
    inputs = sorted(p for p in tracked if p.endswith(".dvc") and not p.startswith(".dvc/"))
    if inputs:
        progress(f"pulling the inputs: {' '.join(inputs)}")
        proc = dvc_quick("pull", *inputs, timeout=TRANSFER_TIMEOUT)
        if proc.returncode != 0:
            raise VerifyError(f"dvc pull {' '.join(inputs)} failed at {sha[:12]}: "
                              f"{programs.tail(proc.stdout + proc.stderr)}")
    recorded_calls = any(CALL_STORE in outs for outs in lock_outputs(expected).values())
    if recorded_calls and not recall_teachers:
        progress(f"pulling the recorded teacher calls ({CALL_STORE})")
        proc = dvc_quick("pull", CALL_STORE, timeout=TRANSFER_TIMEOUT)
        if proc.returncode != 0:
            raise VerifyError(
                f"the recorded teacher calls ({CALL_STORE}) of {sha[:12]} cannot be pulled "
                f"({programs.tail(proc.stdout + proc.stderr, 2)}); `dvc push` them where they were "
                "made, or pass --recall-teachers to call the teachers again"
            )
    elif recall_teachers:
        progress("the teachers are called again (--recall-teachers)")

    state = numerics.state()
    progress(f"CPU numerics: {state['mode']}" + (
        " (torch's AVX2 kernels: the bytes of any x86-64 CPU with AVX2)" if state["mode"] == numerics.PINNED
        else " (this CPU's own kernels: the bytes of this kind of CPU only)"))
    _repro(dvc, clone, env, log_path, progress)

    actual = yaml.safe_load((clone / LOCK).read_text()) or {}
    checks = compare_locks(expected, actual)
    for check in checks:
        if check.status == DIFFERS and not check.detail:
            settle(check, versions, tolerance)
    return VerifyReport(sha, checks, unavailable, tolerance=tolerance)


def _absolute_remotes(dvc_quick: Callable[..., subprocess.CompletedProcess[str]], clone: Path,
                      root: Path) -> None:
    """Point a remote given as a relative folder that the clone lacks at the workspace's folder
    (a remote inside the repository, like the bundled one, stays the clone's committed copy).
    ``dvc remote list`` shows such a url resolved against the clone's ``.dvc/``."""
    for line in dvc_quick("remote", "list").stdout.splitlines():
        m = re.match(r"^(\S+)\s+(.+?)(\s+\(default\))?$", line.strip())
        if not m or "://" in m.group(2):
            continue
        url = Path(m.group(2))
        if not url.is_absolute() or url.exists() or not url.is_relative_to(clone.parent):
            continue
        original = (root / ".dvc" / os.path.relpath(url, clone / ".dvc")).resolve()
        if original.exists():
            dvc_quick("remote", "modify", "--local", m.group(1), "url", str(original))


def _repro(dvc: str, clone: Path, env: Mapping[str, str], log_path: Path, progress: Progress) -> None:
    """``dvc repro -f --no-run-cache --no-commit`` in the clone, its output streamed to the log
    and one progress line per stage; raises :class:`ReproFailed` naming the failed stage."""
    cmd = [dvc, "repro", "-f", "--no-run-cache", "--no-commit"]
    progress(f"re-running every stage: {' '.join(['dvc', *cmd[1:]])} (log: {log_path})")
    started = time.monotonic()
    stages: list[str] = []
    failed: str | None = None
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(['dvc', *cmd[1:]])}\n")
        start = log.tell()
        proc = subprocess.Popen(cmd, cwd=clone, env=dict(env), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if m := re.match(r"Running stage '([^']+)'", line):
                    stages.append(m.group(1))
                    progress(f"[{len(stages)}] running stage '{m.group(1)}'")
                elif m := re.search(r"failed to reproduce '([^']+)'", line):
                    failed = m.group(1)
            status = proc.wait()
        except BaseException:  # Ctrl-C or an error: stop DVC (and its stage) before cleaning up
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if status != 0:
        stage = failed or (stages[-1] if stages else None)
        with log_path.open("rb") as log:
            log.seek(start)
            tail = log.read().decode(errors="replace").splitlines()[-LOG_TAIL:]
        progress("the re-run failed; last lines of its log:\n" + "\n".join(f"  {t}" for t in tail))
        where = f"at stage {stage!r}" if stage else "before any stage ran"
        raise ReproFailed(f"dvc repro failed {where} (exit {status}; log {log_path}, kept with --keep)",
                          stage, tail)
    progress(f"re-run done: {len(stages)} stages in {time.monotonic() - started:.0f} s")
