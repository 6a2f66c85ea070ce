"""The ``fetch`` stage: raw preference pairs (the Hub at a pinned revision, or a local snapshot)
to the canonical pairs table (:class:`sp2dpo.core.schemas.PairsTable`).

Two reply forms are accepted: the HF form, where ``chosen``/``rejected`` are chat transcripts
(lists of ``{"role", "content"}`` messages) whose last assistant message is the reply, and plain
strings. A snapshot whose record gives a key twice is refused (:mod:`sp2dpo.core.jsonio`), not
resolved as "last wins".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo.core import artifacts, jsonio
from sp2dpo.core.config import DataConfig
from sp2dpo.core.errors import UserError
from sp2dpo.core.schemas import PAIR_COLUMNS, PairsTable

log = logging.getLogger(__name__)

#: Snapshot formats, by suffix (``.gz`` may follow ``.jsonl`` or ``.json``).
SNAPSHOT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


class DataError(UserError, ValueError):
    """Bad input data; the message names the file, the line or row, and the field."""


class HubUnavailableError(UserError, RuntimeError):
    """The Hugging Face Hub cannot be reached for a ``source: hub`` fetch."""


# --------------------------------------------------------------------------------------------
# record normalisation
# --------------------------------------------------------------------------------------------


def prompt_id_of(prompt: str) -> str:
    """The HF ``prompt_id`` convention: sha256 of the UTF-8 prompt, hex.

    >>> prompt_id_of("how can i develop a habit of drawing daily")[:8]
    '086b3e24'
    """
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _reply_text(value: Any, field: str, where: str) -> str:
    """The assistant reply of a plain string or of a chat transcript."""
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        for i, message in enumerate(value):
            if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
                raise DataError(
                    f"{where}: field '{field}' message {i} must be an object with a string "
                    f"'content'"
                )
        replies = [m["content"] for m in value if m.get("role") == "assistant"]
        if not replies:
            raise DataError(f"{where}: field '{field}' has no assistant message")
        return replies[-1]
    raise DataError(
        f"{where}: field '{field}' must be a string or a list of chat messages, "
        f"got {type(value).__name__}"
    )


def _score(value: Any, field: str, where: str) -> float | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise DataError(f"{where}: field '{field}' must be a number or null, got {value!r}")
    return float(value)


def normalize_record(record: Any, source: str, where: str) -> dict[str, Any]:
    """One raw record to a canonical pairs row.

    Args:
        record: a mapping in the HF ``ultrafeedback_binarized`` schema or with string replies.
        source: the value of the ``source`` column (where the row came from).
        where: location used in error messages, e.g. ``"snap.jsonl:12"``.

    Raises:
        DataError: naming ``where`` and the offending field.
    """
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for field in ("prompt", "chosen", "rejected"):
        if field not in record or record[field] is None:
            raise DataError(f"{where}: missing required field '{field}'")
    prompt = record["prompt"]
    if not isinstance(prompt, str):
        raise DataError(f"{where}: field 'prompt' must be a string, got {type(prompt).__name__}")
    prompt_id = record.get("prompt_id")
    if prompt_id is None:
        prompt_id = prompt_id_of(prompt)
    elif not isinstance(prompt_id, str) or not prompt_id:
        raise DataError(f"{where}: field 'prompt_id' must be a non-empty string, got {prompt_id!r}")
    return {
        "prompt_id": prompt_id,
        "prompt": prompt,
        "chosen": _reply_text(record["chosen"], "chosen", where),
        "rejected": _reply_text(record["rejected"], "rejected", where),
        "score_chosen": _score(record.get("score_chosen"), "score_chosen", where),
        "score_rejected": _score(record.get("score_rejected"), "score_rejected", where),
        "source": source,
    }


def to_pairs_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Canonical rows to a frame with the pairs-table dtypes and column order."""
    frame = pd.DataFrame.from_records(list(rows), columns=PAIR_COLUMNS)
    for column in ("score_chosen", "score_rejected"):
        frame[column] = frame[column].astype("float64")
    for column in ("prompt_id", "prompt", "chosen", "rejected", "source"):
        frame[column] = frame[column].astype("str")
    return frame


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SNAPSHOT_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise DataError(
        f"{path}: unknown snapshot type; expected one of {', '.join(SNAPSHOT_SUFFIXES)}"
    )


def iter_snapshot(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(location, record)`` for every record of a local snapshot.

    ``location`` is ``"FILE:LINE"`` for JSON lines (1-based, read by
    :func:`sp2dpo.core.jsonio.iter_jsonl`) and ``"FILE row N"`` otherwise (0-based, as pandas
    counts rows).
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.exists():
        raise DataError(f"{path}: snapshot file not found")
    if suffix.startswith(".jsonl"):
        yield from jsonio.iter_jsonl(path, error=DataError, allow_empty=True)
    elif suffix.startswith(".json"):
        try:
            with jsonio.open_text(path) as fh:
                records = jsonio.load(fh)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON: {exc}") from None
        except jsonio.READ_ERRORS as exc:
            raise DataError(jsonio.cannot_read(path, exc)) from None
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of records")
        for row, record in enumerate(records):
            yield f"{path} row {row}", record
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for row, record in enumerate(table.to_pylist()):
            yield f"{path} row {row}", record


def read_snapshot(path: str | Path) -> pd.DataFrame:
    """A local snapshot as a canonical pairs frame (``source`` = ``local:<file name>``)."""
    source = f"local:{Path(path).name}"
    return to_pairs_frame(normalize_record(rec, source, where) for where, rec in iter_snapshot(path))


def read_hub(hub_id: str, revision: str, split: str) -> pd.DataFrame:
    """Load ``hub_id`` at a pinned ``revision`` through ``datasets``.

    ``hub_id`` may also be a local folder in the Hub layout (``data/<split>-*.parquet``), which is
    how the Hub path is exercised offline.

    Raises:
        HubUnavailableError: in one sentence naming the offline alternative, when the Hub cannot
            be reached and the revision is not in the local ``datasets`` cache.
    """
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, split=split, revision=revision)
    except Exception as exc:  # datasets raises many types for "offline" / "not cached"
        if _looks_offline(exc):
            raise HubUnavailableError(
                f"cannot reach the Hugging Face Hub for {hub_id}@{revision[:12]} ({type(exc).__name__}); "
                "work offline with `data.source: local` and `data.path` pointing at a local "
                "snapshot (e.g. `dvc exp run -S data.source=local`)."
            ) from None
        raise
    source = f"hub:{hub_id}@{revision}:{split}"
    return to_pairs_frame(
        normalize_record(rec, source, f"{hub_id}@{revision[:12]}:{split} row {i}")
        for i, rec in enumerate(ds)
    )


def _looks_offline(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    markers = {
        "ConnectionError",
        "OfflineModeIsEnabled",
        "LocalEntryNotFoundError",
        "DatasetNotFoundError",
        "HfHubHTTPError",
        "Timeout",
        "ConnectTimeout",
        "MaxRetryError",
    }
    text = " ".join(str(e) for e in _chain(exc)).lower()
    return bool(names & markers) or "offline" in text or "couldn't reach" in text


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def subsample(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subsample of ``limit`` rows that keeps the original row order."""
    if limit is None or limit >= len(frame):
        return frame.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(frame), size=limit, replace=False))
    return frame.iloc[keep].reset_index(drop=True)


def fetch(cfg: DataConfig) -> pd.DataFrame:
    """The ``fetch`` stage: raw pairs from the configured source, canonicalised, subsampled."""
    if cfg.source == "hub":
        frame = read_hub(cfg.hub_id, cfg.revision, cfg.split)
        origin = f"{cfg.hub_id}@{cfg.revision}:{cfg.split}"
    else:
        frame = read_snapshot(cfg.path)
        origin = cfg.path
    if frame.empty:
        raise DataError(f"{origin}: no records (an empty snapshot would leave every stage with nothing to do)")
    log.info("fetched %d pairs from %s", len(frame), cfg.source)
    return subsample(frame, cfg.limit, cfg.seed)


@dataclasses.dataclass(frozen=True)
class FetchPaths:
    """Where ``fetch`` writes; :meth:`pipeline` gives the DVC stage's paths."""

    out: Path
    report: Path

    @classmethod
    def pipeline(cls) -> FetchPaths:
        return cls(out=Path("data/pairs/fetched.parquet"), report=Path("reports/fetch.json"))


def run(cfg: DataConfig, paths: FetchPaths) -> dict[str, Any]:
    """Fetch, validate and write the canonical pairs table and its report (``fetch.json``)."""
    frame = fetch(cfg)
    artifacts.write_table(frame, paths.out, PairsTable)
    summary = {
        "rows": len(frame),
        "source": cfg.source,
        "origin": cfg.path if cfg.source == "local" else f"{cfg.hub_id}@{cfg.revision}:{cfg.split}",
        "limit": cfg.limit,
        "with_scores": int(frame["score_chosen"].notna().sum()),
    }
    artifacts.write_json(summary, paths.report)
    return summary
