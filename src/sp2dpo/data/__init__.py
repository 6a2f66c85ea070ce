"""The data stages: ``fetch`` (raw pairs -> canonical pairs table) and ``filter`` (hygiene rules).

Two reply forms are accepted: the HF form, where ``chosen``/``rejected`` are chat transcripts
whose last assistant message is the reply, and plain strings.
"""

from sp2dpo.data.fetch import (
    SNAPSHOT_SUFFIXES,
    DataError,
    FetchPaths,
    HubUnavailableError,
    fetch,
    iter_snapshot,
    normalize_record,
    prompt_id_of,
    read_hub,
    read_snapshot,
    subsample,
    to_pairs_frame,
)
from sp2dpo.data.fetch import run as run_fetch
from sp2dpo.data.filter import FilterPaths, filter_pairs
from sp2dpo.data.filter import run as run_filter

__all__ = [
    "SNAPSHOT_SUFFIXES",
    "DataError",
    "FetchPaths",
    "FilterPaths",
    "HubUnavailableError",
    "fetch",
    "filter_pairs",
    "iter_snapshot",
    "normalize_record",
    "prompt_id_of",
    "read_hub",
    "read_snapshot",
    "run_fetch",
    "run_filter",
    "subsample",
    "to_pairs_frame",
]
