"""What every subcommand module shares: the params loader, side-report paths and the argparse
value types that name their flag in the error (``argument --limit: must be a positive integer,
got -2``)."""

from __future__ import annotations

import argparse
import math
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


# ------------------------------------------------------------------------------ flag value types
# argparse prints a type's ArgumentTypeError as `argument --FLAG: MESSAGE` and exits with status 2,
# so every numeric flag is checked here, where its name is known, not deep in the library.

#: The most bootstrap rounds a flag accepts (each round holds a resample in memory).
MAX_ROUNDS = 1_000_000
#: Seeds are numpy seeds: 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def _integer(text: str, low: int, high: int | None, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    """A count of at least 1 (``--limit``, ``--batch-size``, ``--jobs``)."""
    return _integer(text, 1, None, "a positive integer")


def rounds_int(text: str) -> int:
    """Bootstrap rounds: 0 (no interval) up to :data:`MAX_ROUNDS`."""
    return _integer(text, 0, MAX_ROUNDS, f"an integer from 0 to {MAX_ROUNDS:,}")


def seed_int(text: str) -> int:
    """A random seed: 0 up to :data:`MAX_SEED`."""
    return _integer(text, 0, MAX_SEED, f"an integer from 0 to {MAX_SEED}")


def finite_float(text: str) -> float:
    """A finite number (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (a threshold, a tolerance, a timeout)."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """A count that may be 0 (``--top``)."""
    return _integer(text, 0, None, "an integer >= 0")
