"""The external programs the package runs, found the same way everywhere.

``dvc`` comes with the package (a dependency), so it sits beside the running interpreter even
when that interpreter's folder is not on PATH (``.venv/bin/python -m sp2dpo.cli ...`` without
activating the venv); PATH is the fallback.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sp2dpo.core.errors import UserError


class MissingProgram(UserError, ValueError):
    """A program the command needs is not installed."""


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
