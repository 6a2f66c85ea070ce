"""AlpacaEval 2.0 leaderboard metrics of one annotations file (``sp2dpo winrate``).

Input: a validated annotations frame (:func:`sp2dpo.evaluate.benchmarks.alpaca.read_annotations`), one row per
instruction, ``output_1`` the baseline, ``output_2`` the evaluated model, ``preference`` in [1, 2].
With ``p_i = preference_i - 1`` (the probability that the model wins) and ``n`` rows:

* ``win_rate = 100 * mean(p)``
* ``standard_error = std(100 * p, ddof=1) / sqrt(n)`` (pandas ``sem``)
* ``n_wins = #(pref > 1.5)``, ``n_wins_base = #(pref < 1.5)``, ``n_draws = #(pref == 1.5)``
* ``discrete_win_rate = 100 * (n_wins + n_draws / 2) / n``
* ``avg_length = int(mean(len(output_2)))`` in characters

All rates are in percent, as in the official leaderboard CSV, which these reproduce exactly.

The length-controlled win rate (``length_controlled_winrate``) comes from :mod:`.lc`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo.evaluate.benchmarks import alpaca
from sp2dpo.evaluate.benchmarks.lc import (
    LC_METHODS,
    LengthControlInputError,
    OfficialLCInputs,
    length_controlled_winrate,
)

# --------------------------------------------------------------------------------------------
# leaderboard metrics
# --------------------------------------------------------------------------------------------


def head_to_head(frame: pd.DataFrame) -> dict[str, Any]:
    """The leaderboard's raw metrics of one annotations frame (percent; see module docstring).

    Example:
        >>> f = pd.DataFrame({"preference": [1.0, 2.0, 1.5, 1.9], "output_2": ["a", "bb", "c", "dddd"]})
        >>> m = head_to_head(f)
        >>> m["win_rate"], m["n_wins"], m["n_wins_base"], m["n_draws"], m["discrete_win_rate"]
        (60.0, 2, 1, 1, 62.5)
        >>> m["avg_length"]
        2
    """
    pref = frame["preference"].astype(float)
    scaled = (pref - 1) * 100
    n_total = len(pref)
    n_wins = int((pref > 1.5).sum())
    n_wins_base = int((pref < 1.5).sum())
    n_draws = int((pref == 1.5).sum())
    return {
        "win_rate": float(scaled.mean()),
        "standard_error": float(scaled.sem()) if n_total > 1 else math.nan,
        "n_wins": n_wins,
        "n_wins_base": n_wins_base,
        "n_draws": n_draws,
        "n_total": n_total,
        "discrete_win_rate": 100 * (n_wins + 0.5 * n_draws) / n_total,
        "avg_length": int(frame["output_2"].str.len().mean()),
    }


def winrate(
    frame: pd.DataFrame,
    official: OfficialLCInputs | None = None,
    index: np.ndarray | None = None,
) -> dict[str, Any]:
    """All leaderboard metrics of one annotations frame, as one flat dict (percent).

    Keys: those of :func:`head_to_head`, ``length_controlled_winrate`` (NaN when it cannot be
    computed), ``length_controlled_method``, ``lc_is_offline_estimate`` and, when LC is NaN or 50
    by definition, ``length_controlled_note``.
    """
    metrics = head_to_head(frame)
    lc = length_controlled_winrate(frame, official, index)
    metrics["length_controlled_winrate"] = lc.winrate
    metrics["length_controlled_method"] = lc.method.name
    metrics["lc_is_offline_estimate"] = lc.method.is_offline_estimate
    if lc.reason is not None:
        metrics["length_controlled_note"] = lc.reason
    return metrics


def evaluate_file(
    annotations: str | Path,
    reference: str | Path | None = None,
    instruction_difficulty: str | Path | None = None,
    df_gamed: str | Path | None = None,
) -> dict[str, Any]:
    """Read an annotations file (and optional reference / Hub files) and return :func:`winrate`.

    Raises:
        ValueError: only one of ``instruction_difficulty`` / ``df_gamed``; the official LC
            without ``reference``; any format error (:class:`~sp2dpo.evaluate.benchmarks.alpaca.AlpacaEvalFormatError`,
            :class:`LengthControlInputError`).
        FileNotFoundError: a missing input file.
    """
    if (instruction_difficulty is None) != (df_gamed is None):
        raise LengthControlInputError(
            "--instruction-difficulty and --df-gamed go together (official length_controlled_v1 "
            "LC); give both or neither (offline estimate)"
        )
    frame = alpaca.read_annotations(annotations)
    outputs = None if reference is None else alpaca.read_model_outputs(reference)
    official = None
    if instruction_difficulty is not None and df_gamed is not None:
        if outputs is None:
            raise LengthControlInputError(
                "the official LC (--instruction-difficulty, --df-gamed) needs --reference: the "
                "reference outputs give each instruction's AlpacaEval index"
            )
        official = OfficialLCInputs.read(instruction_difficulty, df_gamed)
    return evaluate_annotations(
        frame, reference=outputs, official=official, source=str(annotations),
        reference_source=str(reference),
    )


def evaluate_annotations(
    frame: pd.DataFrame,
    *,
    reference: Sequence[Mapping[str, Any]] | None = None,
    official: OfficialLCInputs | None = None,
    source: str = "<annotations>",
    reference_source: str = "<reference>",
) -> dict[str, Any]:
    """:func:`winrate` of validated annotations, already-loaded reference outputs and Hub files
    (the eval stage reads those once for every method). With ``reference``, each annotation must
    match it (:func:`sp2dpo.evaluate.benchmarks.alpaca.match_reference`) and gets its AlpacaEval index.

    Raises:
        AlpacaEvalFormatError: mismatched instructions.
        LengthControlInputError: ``official`` without ``reference``.
    """
    index = None
    if reference is not None:
        index = alpaca.match_reference(frame, reference, source, reference_source)
    if official is not None and index is None:
        raise LengthControlInputError(
            "the official LC needs the reference outputs: they give each instruction's "
            "AlpacaEval index"
        )
    return winrate(frame, official, index)


def json_ready(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v
        for k, v in metrics.items()
    }


def render_text(metrics: dict[str, Any]) -> str:
    """One ``key: value`` line per metric; the LC line says when it is the offline estimate."""
    lines = []
    for key, value in metrics.items():
        line = f"{key}: {'nan' if isinstance(value, float) and math.isnan(value) else value}"
        if key == "length_controlled_winrate" and metrics.get("lc_is_offline_estimate"):
            method = LC_METHODS.get(metrics.get("length_controlled_method", ""))
            why = method.description if method else "not the leaderboard LC"
            line += f"  (offline estimate: {why})"
        lines.append(line)
    return "\n".join(lines) + "\n"
