"""The external programs the package runs (git, DVC), found and run the same way everywhere.

``dvc`` comes with the package (a dependency), so it sits beside the running interpreter even
when that interpreter's folder is not on PATH (``.venv/bin/python -m sp2dpo.cli ...`` without
activating the venv); PATH is the fallback.

:func:`run` (and its :func:`git` and :func:`dvc` forms) is the one runner of a git or DVC
command: a timeout on every call, the output captured, and a failure (the program missing, no
end in time, or with ``check`` a non-zero exit) one line naming the command, the folder and the
tail of its output, raised as the caller's own :class:`~sp2dpo.core.errors.UserError` subclass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.errors import UserError

__all__ = [
    "GIT_REDIRECTS",
    "QUICK_TIMEOUT",
    "MissingProgram",
    "ProgramError",
    "dvc",
    "dvc_executable",
    "git",
    "run",
    "tail",
]

#: Timeout (s) of a command that reads or writes little (rev-parse, show, status, config).
QUICK_TIMEOUT = 120
#: Variables that point git at another repository than the one in the command's folder; :func:`git`
#: drops them (a hook or ``dvc exp run`` may have them set).
GIT_REDIRECTS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")


class MissingProgram(UserError, ValueError):
    """A program the command needs is not installed."""


class ProgramError(UserError, RuntimeError):
    """A command that could not be started, did not finish in time, or failed."""


def dvc_executable() -> str:
    """DVC beside the running interpreter, else on PATH.

    Raises:
        MissingProgram: neither has it.
    """
    beside = Path(sys.executable).parent / "dvc"
    found = str(beside) if beside.exists() else shutil.which("dvc")
    if not found:
        raise MissingProgram("dvc is not installed (it comes with the sp2dpo package: pip install -e .)")
    return found


def tail(text: str, lines: int = 5) -> str:
    """The last ``lines`` non-blank lines of a command's output, joined by `` | `` (one line)."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"


def run(
    cmd: Sequence[str],
    *,
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float = QUICK_TIMEOUT,
    check: bool = True,
    text: bool = True,
    error: type[UserError] = ProgramError,
) -> subprocess.CompletedProcess[Any]:
    """Run ``cmd`` in ``cwd`` (stdin empty) and capture its output, as text or bytes.

    The output goes through temporary files, not pipes: ``dvc queue start`` leaves worker
    daemons holding its output descriptors, and a pipe would not reach end-of-file until they
    exit.

    Args:
        cmd: the program and its arguments (shown as ``PROGRAM ARGS`` in messages).
        cwd: the folder it runs in.
        env: its whole environment (None: this process's).
        timeout: seconds it may take.
        check: a non-zero exit status is an error (else the caller reads ``returncode``).
        text: ``stdout`` and ``stderr`` as text (the locale's encoding, universal newlines).
        error: the class of the errors raised (the caller's own :class:`UserError` subclass).

    Raises:
        ProgramError: (or ``error``) ```CMD` cannot be started in CWD: ...`` (no such program or
            folder), ```CMD` did not finish in N s (in CWD)``, or with ``check`` ```CMD` failed
            (exit N, in CWD): `` and the last lines of its stderr (else stdout).
    """
    shown = " ".join([Path(cmd[0]).name, *cmd[1:]])
    mode = "w+" if text else "w+b"
    with tempfile.TemporaryFile(mode=mode) as out, tempfile.TemporaryFile(mode=mode) as err:
        try:
            done = subprocess.run(list(cmd), cwd=cwd, env=None if env is None else dict(env),
                                  stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=timeout)
        except OSError as exc:
            raise error(f"`{shown}` cannot be started in {cwd}: {exc}") from None
        except subprocess.TimeoutExpired:
            raise error(f"`{shown}` did not finish in {timeout:.0f} s (in {cwd})") from None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if check and done.returncode != 0:
        said = stderr or stdout
        said = said if isinstance(said, str) else said.decode(errors="replace")
        raise error(f"`{shown}` failed (exit {done.returncode}, in {cwd}): {tail(said)}")
    return subprocess.CompletedProcess(done.args, done.returncode, stdout, stderr)


def git(
    *args: str,
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float = QUICK_TIMEOUT,
    check: bool = True,
    text: bool = True,
    error: type[UserError] = ProgramError,
) -> subprocess.CompletedProcess[Any]:
    """``git ARGS`` through :func:`run`, on the repository at ``cwd``: the variables of
    :data:`GIT_REDIRECTS` are dropped from ``env`` (None: this process's)."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k not in GIT_REDIRECTS}
    return run(["git", *args], cwd=cwd, env=env, timeout=timeout, check=check, text=text, error=error)


def dvc(
    *args: str,
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float = QUICK_TIMEOUT,
    check: bool = True,
    text: bool = True,
    error: type[UserError] = ProgramError,
) -> subprocess.CompletedProcess[Any]:
    """``dvc ARGS`` (:func:`dvc_executable`) through :func:`run`."""
    return run([dvc_executable(), *args], cwd=cwd, env=env, timeout=timeout, check=check, text=text,
               error=error)
