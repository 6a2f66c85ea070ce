"""Run logs: what one run measured, kept out of every DVC output.

Wall-clock facts (latencies, call and run durations, finish times, what the cache answered) differ
between two runs of the same code on the same inputs, so they never go into a DVC-tracked output
or metrics file: those must be a function of code, params and inputs alone, or a re-run could
not reproduce the committed ``dvc.lock``. A stage writes them here instead (and to MLflow): one
JSON file per run under ``logs/<stage>/`` in the pipeline, a folder git and DVC ignore.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sp2dpo import numerics
from sp2dpo.core import artifacts

#: Where the pipeline's stages keep their run logs (relative to the repository root).
PIPELINE_DIR = Path("logs")


def write(folder: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (plus ``finished_at`` and the CPU numerics the run used, ``numerics``:
    :func:`sp2dpo.numerics.state`) to ``folder/<UTC time>-<pid>.json`` atomically.

    Returns:
        The file written.
    """
    now = dt.datetime.now(dt.UTC)
    path = Path(folder) / f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{os.getpid()}.json"
    stamp = {"finished_at": now.isoformat(timespec="milliseconds"), "numerics": numerics.state()}
    artifacts.write_json({**stamp, **payload}, path)
    return path
