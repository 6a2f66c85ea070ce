"""Sections ``data`` and ``filter``: where the raw pairs come from, and the hygiene rules."""

from __future__ import annotations

import dataclasses
from typing import Literal

from sp2dpo.core.config.base import field
from sp2dpo.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the raw preference pairs come from (the ``fetch`` stage)."""

    source: Literal["local", "hub"] = field(
        "local",
        "`local`: read the snapshot file at `path`; `hub`: load `hub_id` at `revision` through "
        "`datasets` (a local folder in the Hub layout also works as `hub_id`).",
    )
    path: str = field(
        "data/raw/uf_binarized_h4_train_prefs_500.jsonl.gz",
        "Local snapshot (.jsonl, .jsonl.gz, .json, .parquet) in the HF ultrafeedback_binarized "
        "schema or with plain-string replies. Used when source=local.",
    )
    hub_id: str = field(
        "HuggingFaceH4/ultrafeedback_binarized", "Hugging Face dataset id (source=hub)."
    )
    revision: str = field(
        "3949bf5f8c17c394422ccfab0c31ea9c20bdeb85",
        "Pinned dataset revision: a full 40-hex commit hash (source=hub).",
    )
    split: str = field("train_prefs", "Dataset split (source=hub).")
    limit: int | None = field(
        None, "Keep a seeded, order-stable random subsample of this many rows (null: all rows)."
    )
    seed: int = field(42, "Seed of the `limit` subsample.")

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"data.limit must be a positive integer or null, got {self.limit}")
        if self.source == "hub" and not _is_commit_hash(self.revision):
            raise ConfigError(
                f"data.revision must pin a full 40-character commit hash, got {self.revision!r}"
            )


def _is_commit_hash(value: str) -> bool:
    return len(value) == 40 and all(c in "0123456789abcdef" for c in value.lower())


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Hygiene rules of the ``filter`` stage (the paper's App. E.2)."""

    drop_identical: bool = field(
        False,
        "Also drop pairs whose chosen and rejected replies are identical (off in the paper).",
    )
