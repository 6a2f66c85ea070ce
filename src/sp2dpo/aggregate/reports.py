"""Reports of the ``aggregate`` stage: metrics JSON plus PNG plots with the data behind each.

Written under a report folder ``R`` (``reports`` in the pipeline):

``R/aggregate.json``
    counts (calls per problem, pairs kept / excluded per reason), tie-break rates, teacher
    agreement, disagreement means, summary statistics of the ensemble-level beta columns, and
    the bias-decomposition offsets when enabled. Declared as DVC metrics.
``R/aggregate/beta_distribution.{png,csv}``
    histogram of JMAMP (``beta_annotators_mean_ens``) over [beta_min, beta_max], overall and by
    the cross-annotator dominant category; CSV columns ``bin_left, bin_right, bin_center, all``
    and one count column per category.
``R/aggregate/category_mix.{png,csv}``
    share of each ensemble category per teacher (and across teachers); CSV ``annotator,
    category, label, count, share``.
``R/aggregate/teacher_agreement.{png,csv}``
    per pair of teachers: category agreement rate of ``category_A_ens`` and Spearman rank
    correlation of ``effective_gap_A_ens``; CSV ``annotator_a, annotator_b, pair,
    category_agreement, gap_spearman`` (header only with a single teacher).
``R/aggregate/disagreement.{png,csv}``
    histograms of the prompt-level MAD per teacher and of the teacher-level std and MAD; CSV
    ``measure, bin_left, bin_right, bin_center, count``.
``R/aggregate/tie_breaks.{png,csv}``
    tie-break rate of the category vote per teacher and across teachers; CSV ``annotator, n,
    tie_breaks, rate``.

Everything is deterministic: no timestamps in the PNGs, fixed bins, fixed float formats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo.core import artifacts
from sp2dpo.core.schemas import CATEGORIES

#: Histogram bins of the beta distribution (over the envelope) and of the disagreement measures.
BETA_BINS = 27
DISAGREEMENT_BINS = 25
_DIGITS = 10  # significant digits of floats in the JSON report and the plot CSVs


def _num(x: Any) -> float | None:
    """A JSON-safe float rounded to :data:`_DIGITS` significant digits (NaN -> null)."""
    x = float(x)
    if not math.isfinite(x):
        return None
    return float(f"{x:.{_DIGITS}g}")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    ra = pd.Series(a).rank(method="average").to_numpy()
    rb = pd.Series(b).rank(method="average").to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _summary(values: np.ndarray) -> dict[str, float | None]:
    q = np.quantile(values, [0.05, 0.5, 0.95])
    return {
        "mean": _num(values.mean()),
        "std": _num(values.std()),
        "min": _num(values.min()),
        "p05": _num(q[0]),
        "median": _num(q[1]),
        "p95": _num(q[2]),
        "max": _num(values.max()),
    }


def metrics(
    frame: pd.DataFrame,
    annotators: Sequence[str],
    counts: dict[str, Any],
    info: dict[str, Any],
) -> dict[str, Any]:
    """The ``aggregate.json`` metrics for an artifact ``frame`` (see the module docstring)."""
    n = len(frame)
    out: dict[str, Any] = {
        "panel": {
            "annotators": len(annotators),
            "variants": int(frame["prompt_variant_count"].iloc[0]),
        },
        **counts,
    }
    ties = {a: _num(frame[f"category_{a}_ens_tie_break"].mean()) for a in annotators}
    ties["annotators"] = _num(frame["category_annotators_ens_tie_break"].mean())
    out["tie_break_rate"] = ties

    agree, rho = {}, {}
    for i, a in enumerate(annotators):
        for b in annotators[i + 1 :]:
            key = f"{a}~{b}"
            agree[key] = _num((frame[f"category_{a}_ens"] == frame[f"category_{b}_ens"]).mean())
            rho[key] = _num(
                _spearman(
                    frame[f"effective_gap_{a}_ens"].to_numpy(),
                    frame[f"effective_gap_{b}_ens"].to_numpy(),
                )
            )
    out["agreement"] = {
        "category_agreement": agree,
        "gap_spearman": rho,
        "mean_category_agreement": _mean_or_none(agree.values()),
        "mean_gap_spearman": _mean_or_none(rho.values()),
    }
    out["disagreement"] = {
        "prompt_mad_mean": {
            a: _num(frame[f"disagreement_prompt_mad_{a}"].mean()) for a in annotators
        },
        "annotators_std_mean": _num(frame["disagreement_annotators_std"].mean()),
        "annotators_mad_mean": _num(frame["disagreement_annotators_mad"].mean()),
    }
    out["category_annotators_ens"] = {
        c: int((frame["category_annotators_ens"] == c).sum()) for c in CATEGORIES
    }
    beta_cols = [
        c
        for c in frame.columns
        if c.startswith("beta_")
        and (c.endswith("_ens") or c in ("beta_random", "beta_pooled", "beta_debiased"))
    ]
    out["beta"] = {c: _summary(frame[c].to_numpy()) for c in beta_cols} if n else {}
    out.update(info)
    return out


def _mean_or_none(values: Any) -> float | None:
    vals = [v for v in values if v is not None]
    return _num(np.mean(vals)) if vals else None


# --------------------------------------------------------------------------------------------
# plot data
# --------------------------------------------------------------------------------------------


def beta_distribution(frame: pd.DataFrame, beta_min: float, beta_max: float) -> pd.DataFrame:
    """Histogram table of JMAMP: overall (``all``) and one count column per category."""
    edges = np.linspace(beta_min, beta_max, BETA_BINS + 1)
    values = frame["beta_annotators_mean_ens"].to_numpy()
    table = {
        "bin_left": edges[:-1],
        "bin_right": edges[1:],
        "bin_center": (edges[:-1] + edges[1:]) / 2,
        "all": np.histogram(values, bins=edges)[0],
    }
    category = frame["category_annotators_ens"].to_numpy()
    for c in CATEGORIES:
        table[c] = np.histogram(values[category == c], bins=edges)[0]
    return pd.DataFrame(table)


def category_mix(frame: pd.DataFrame, annotators: Sequence[str]) -> pd.DataFrame:
    """Counts and shares of each ensemble category per teacher, then across teachers."""
    rows = []
    for a in [*annotators, "annotators"]:
        col = frame[f"category_{a}_ens"]
        for c in CATEGORIES:
            count = int((col == c).sum())
            rows.append(
                {
                    "annotator": a,
                    "category": c,
                    "label": f"{a}: {c}",
                    "count": count,
                    "share": count / len(frame) if len(frame) else 0.0,
                }
            )
    return pd.DataFrame(rows)


def teacher_agreement(frame: pd.DataFrame, annotators: Sequence[str]) -> pd.DataFrame:
    """Category agreement rate and gap rank correlation for every pair of teachers."""
    rows = []
    for i, a in enumerate(annotators):
        for b in annotators[i + 1 :]:
            rows.append(
                {
                    "annotator_a": a,
                    "annotator_b": b,
                    "pair": f"{a} vs {b}",
                    "category_agreement": float(
                        (frame[f"category_{a}_ens"] == frame[f"category_{b}_ens"]).mean()
                    ),
                    "gap_spearman": _spearman(
                        frame[f"effective_gap_{a}_ens"].to_numpy(),
                        frame[f"effective_gap_{b}_ens"].to_numpy(),
                    ),
                }
            )
    cols = ["annotator_a", "annotator_b", "pair", "category_agreement", "gap_spearman"]
    return pd.DataFrame(rows, columns=cols)


def disagreement(
    frame: pd.DataFrame, annotators: Sequence[str], beta_min: float, beta_max: float
) -> pd.DataFrame:
    """Histogram table (long format) of the disagreement measures.

    Prompt MADs (of gaps in [0, 1]) use bins over [0, 0.5]; the teacher-level std and MAD (of
    betas) use bins over [0, (beta_max - beta_min) / 2]: both are the measures' largest values.
    """
    parts = []
    specs = [(f"prompt_mad_{a}", f"disagreement_prompt_mad_{a}", 0.5) for a in annotators]
    half = (beta_max - beta_min) / 2
    specs += [("annotators_std", "disagreement_annotators_std", half)]
    specs += [("annotators_mad", "disagreement_annotators_mad", half)]
    for measure, col, top in specs:
        edges = np.linspace(0.0, top, DISAGREEMENT_BINS + 1)
        counts = np.histogram(np.clip(frame[col].to_numpy(), 0.0, top), bins=edges)[0]
        parts.append(
            pd.DataFrame(
                {
                    "measure": measure,
                    "bin_left": edges[:-1],
                    "bin_right": edges[1:],
                    "bin_center": (edges[:-1] + edges[1:]) / 2,
                    "count": counts,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def tie_breaks(frame: pd.DataFrame, annotators: Sequence[str]) -> pd.DataFrame:
    """Tie-break counts and rates of the category vote per teacher and across teachers."""
    rows = []
    for a in [*annotators, "annotators"]:
        flags = frame[f"category_{a}_ens_tie_break"]
        rows.append(
            {
                "annotator": a,
                "n": len(frame),
                "tie_breaks": int(flags.sum()),
                "rate": float(flags.mean()) if len(frame) else 0.0,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def write(
    frame: pd.DataFrame,
    annotators: Sequence[str],
    metrics_obj: dict[str, Any],
    report_dir: str | Path,
    beta_min: float,
    beta_max: float,
    excluded: pd.DataFrame | None = None,
) -> list[Path]:
    """Write ``aggregate.json``, every plot (PNG + CSV) and the excluded pairs
    (``aggregate/excluded.csv``: ``prompt_id, reason``) under ``report_dir``.

    Returns:
        The paths written.
    """

    report_dir = Path(report_dir)
    plot_dir = report_dir / "aggregate"
    written = [report_dir / "aggregate.json"]
    artifacts.write_json(metrics_obj, written[0])
    tables = {
        "beta_distribution": beta_distribution(frame, beta_min, beta_max),
        "category_mix": category_mix(frame, annotators),
        "teacher_agreement": teacher_agreement(frame, annotators),
        "disagreement": disagreement(frame, annotators, beta_min, beta_max),
        "tie_breaks": tie_breaks(frame, annotators),
    }
    for name, table in tables.items():
        path = plot_dir / f"{name}.csv"
        artifacts.write_table(table, path, float_format=f"%.{_DIGITS}g")
        written.append(path)
    written += _draw(tables, annotators, plot_dir)
    if excluded is not None:
        written.append(plot_dir / "excluded.csv")
        artifacts.write_table(excluded[["prompt_id", "reason"]], written[-1])
    return written


def _draw(tables: dict[str, pd.DataFrame], annotators: Sequence[str], plot_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    paths = []
    with plt.rc_context({"figure.dpi": 100, "font.size": 9, "svg.hashsalt": "sp2dpo"}):
        # beta distribution: overall and by dominant category
        t = tables["beta_distribution"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        width = float(t["bin_right"].iloc[0] - t["bin_left"].iloc[0])
        ax1.bar(t["bin_left"], t["all"], width=width, align="edge", color="#4c72b0")
        ax1.set(title="JMAMP beta_i (beta_annotators_mean_ens)", xlabel="beta", ylabel="pairs")
        for c in CATEGORIES:
            total = t[c].sum()
            if total:
                ax2.step(t["bin_center"], t[c] / total, where="mid", label=f"{c} (n={total})")
        ax2.set(title="by dominant category (share within category)", xlabel="beta", ylabel="share")
        if ax2.lines:
            ax2.legend(fontsize=7)
        paths.append(artifacts.save_figure(fig, plot_dir / "beta_distribution.png", bottom=0.14, wspace=0.22))

        # category mix per teacher
        t = tables["category_mix"]
        names = [*annotators, "annotators"]
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 3), 3.6))
        bottom = np.zeros(len(names))
        for c in CATEGORIES:
            share = t[t["category"] == c].set_index("annotator").loc[names, "share"].to_numpy()
            ax.bar(names, share, bottom=bottom, label=c)
            bottom += share
        ax.set(
            title="category mix of the prompt-ensemble vote", ylabel="share of pairs", ylim=(0, 1)
        )
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
        paths.append(artifacts.save_figure(fig, plot_dir / "category_mix.png", right=0.8, bottom=0.12))

        # teacher agreement matrices
        t = tables["teacher_agreement"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        j = len(annotators)
        for ax, col, title in (
            (axes[0], "category_agreement", "category agreement rate"),
            (axes[1], "gap_spearman", "Spearman rho of ensemble gaps"),
        ):
            mat = np.eye(j)
            for row in t.itertuples(index=False):
                a, b = annotators.index(row.annotator_a), annotators.index(row.annotator_b)
                mat[a, b] = mat[b, a] = getattr(row, col)
            image = ax.imshow(
                mat, vmin=0 if col == "category_agreement" else -1, vmax=1, cmap="viridis"
            )
            ax.set_xticks(range(j), annotators, rotation=45, ha="right")
            ax.set_yticks(range(j), annotators)
            for a in range(j):
                for b in range(j):
                    value = mat[a, b]
                    text = "n/a" if np.isnan(value) else f"{value:.2f}".replace("-0.00", "0.00")
                    dark = np.isnan(value) or value < 0.6
                    ax.text(
                        b,
                        a,
                        text,
                        ha="center",
                        va="center",
                        color="white" if dark else "black",
                        fontsize=8,
                    )
            ax.set_title(title if j > 1 else f"{title}\n(single teacher)")
            fig.colorbar(image, ax=ax, fraction=0.046)
        paths.append(
            artifacts.save_figure(fig, plot_dir / "teacher_agreement.png", bottom=0.2, right=0.93, wspace=0.45)
        )

        # disagreement distributions
        t = tables["disagreement"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for measure, part in t.groupby("measure", sort=False):
            ax = ax1 if str(measure).startswith("prompt_mad_") else ax2
            ax.step(part["bin_center"], part["count"], where="mid", label=str(measure))
        ax1.set(
            title="prompt disagreement (MAD over variants, Eq. 36)",
            xlabel="gap MAD",
            ylabel="pairs",
        )
        ax2.set(
            title="teacher disagreement of beta_A_ens (Eqs. 37-38)", xlabel="beta", ylabel="pairs"
        )
        ax1.legend(fontsize=7)
        ax2.legend(fontsize=7)
        paths.append(artifacts.save_figure(fig, plot_dir / "disagreement.png", bottom=0.14, wspace=0.22))

        # tie-break rates
        t = tables["tie_breaks"]
        fig, ax = plt.subplots(figsize=(max(5, 1.0 * len(t) + 2), 3.2))
        ax.bar(t["annotator"], t["rate"], color="#dd8452")
        ax.set(title="tie-break rate of the category vote", ylabel="share of pairs", ylim=(0, 1))
        paths.append(artifacts.save_figure(fig, plot_dir / "tie_breaks.png", bottom=0.15))
    return paths
