"""The ``filter`` stage: the paper's hygiene rules (App. E.2), with exact counts per rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from sp2dpo.core import artifacts
from sp2dpo.core.config import FilterConfig
from sp2dpo.core.schemas import FilteredPairsTable, PairsTable
from sp2dpo.data.fetch import DataError


def _blank(series: pd.Series) -> pd.Series:
    return series.str.strip().eq("")


def filter_pairs(frame: pd.DataFrame, cfg: FilterConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Apply the hygiene rules and count exactly what each one hits.

    Every rule is evaluated on the raw rows: ``duplicate_prompt_id`` hits each row whose
    ``prompt_id`` already appeared earlier (the first occurrence is kept), ``empty_*`` hit rows
    whose field is empty or white space only, and ``identical_replies`` (only when
    ``cfg.drop_identical``) hits rows whose two replies are equal. A row hit by several rules is
    dropped once, so ``dropped`` can be less than the sum of the rule counts.

    Returns:
        The kept rows (original order, fresh index) and the counts report.
    """
    rules: dict[str, pd.Series] = {
        "duplicate_prompt_id": frame["prompt_id"].duplicated(keep="first"),
        "empty_prompt": _blank(frame["prompt"]),
        "empty_chosen": _blank(frame["chosen"]),
        "empty_rejected": _blank(frame["rejected"]),
    }
    identical = frame["chosen"].eq(frame["rejected"])
    if cfg.drop_identical:
        rules["identical_replies"] = identical
    hit = pd.Series(False, index=frame.index)
    for mask in rules.values():
        hit |= mask
    report = {
        "raw": len(frame),
        "rules": {name: int(mask.sum()) for name, mask in rules.items()},
        "dropped": int(hit.sum()),
        "kept": int((~hit).sum()),
        "drop_identical": cfg.drop_identical,
        "identical_replies_seen": int(identical.sum()),
    }
    return frame.loc[~hit].reset_index(drop=True), report


@dataclasses.dataclass(frozen=True)
class FilterPaths:
    """Where ``filter`` reads and writes; :meth:`pipeline` gives the DVC stage's paths."""

    pairs: Path
    out: Path
    report: Path

    @classmethod
    def pipeline(cls) -> FilterPaths:
        return cls(
            pairs=Path("data/pairs/fetched.parquet"),
            out=Path("data/pairs/filtered.parquet"),
            report=Path("reports/filter.json"),
        )


def run(cfg: FilterConfig, paths: FilterPaths) -> dict[str, Any]:
    """Read fetched pairs, filter them, write the filtered table and its report (``filter.json``)."""
    kept, counts = filter_pairs(artifacts.read_table(paths.pairs, PairsTable), cfg)
    if kept.empty:
        raise DataError(
            f"{paths.pairs}: no pair left after filtering ({counts['raw']} raw; dropped by rule: "
            + ", ".join(f"{k} {v}" for k, v in counts["rules"].items())
            + ")"
        )
    artifacts.write_table(kept, paths.out, FilteredPairsTable)
    artifacts.write_json(counts, paths.report)
    return counts
