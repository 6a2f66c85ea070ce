"""What every subcommand module shares: the params loader, side-report paths and the argparse
value types that name their flag in the error (``argument --limit: must be a positive integer,
got -2``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sp2dpo.core import config

Subparsers = argparse._SubParsersAction


def load_params(path: str | None, sections: list[str]) -> config.Params:
    """The params file (default: ``params.yaml``; without one, the defaults = the offline run)."""
    if path is None and not config.DEFAULT_PARAMS.exists():
        return config.defaults()
    return config.load(path or config.DEFAULT_PARAMS, sections=sections)


def side_path(out: Path, pipeline_out: Path, pipeline_side: Path, beside: Path) -> Path:
    """Where a side report goes: the pipeline's path when ``out`` is the pipeline's, else
    ``beside`` (a path next to ``out``)."""
    return pipeline_side if Path(out) == Path(pipeline_out) else beside


def add_params(p: argparse.ArgumentParser, sections: str) -> None:
    p.add_argument(
        "--params", default=None, metavar="FILE",
        help=f"params file (sections {sections}; default: params.yaml, else the defaults)",
    )
