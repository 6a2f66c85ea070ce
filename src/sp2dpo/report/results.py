"""The results table: every student's eval report combined, laid out like the paper's Table 2.

Inputs: ``reports/eval/<student>.json`` (one per student, from ``eval@<student>``). Outputs:

- ``reports/eval.json``: ``{"<student>": {"<method>": {lc, wr, ...}}}`` plus the method behind LC
  (DVC metrics: ``dvc metrics diff`` compares experiments on it);
- ``reports/eval.md``: the suites in the paper's reporting order: AlpacaEval 2.0 LC and WR per
  student (columns) and method (rows), as in Table 2 of the paper; MT-Bench (turn 1, turn 2,
  overall); IFEval accuracies; Arena-Hard-Auto (score with its 95% interval, verdict labels);
  then the held-out preference accuracy of ``sp2dpo prefeval`` (no judge);
- ``reports/eval_plot.csv`` + ``reports/eval_plot.png``: the same numbers as a plot.

Each suite is one :class:`SuiteTable` in :data:`SUITE_TABLES` (the fields :func:`combine` keeps,
the caption, columns and layout :func:`markdown` writes): a new suite is one more entry.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sp2dpo.core import artifacts

#: Row order and labels of the table (the paper's Table 2); other methods follow, by name.
METHOD_LABELS = {
    "base": "Base (instruction-tuned)",
    "rand_beta": "Rand-β_i (U[β_min, β_max])",
    "dpo": "DPO (global β)",
    "sp2dpo": "SP²DPO (JMAMP)",
}
#: The Arena-Hard verdict labels in the table's column order (strongest for A first). The
#: report's JSON sorts keys, so the counts are read by label, never in stored order.
VERDICT_ORDER = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
#: A combined report: ``{"<student>": {"methods": {"<method>": {row key: value}}, ...}}``.
Combined = dict[str, Any]


def load_reports(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``reports/eval/<student>.json`` files by student name, sorted."""
    folder = Path(folder)
    reports = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "methods" not in data or "student" not in data:
            raise ValueError(f"{path}: not an eval report (expected keys `student`, `methods`)")
        reports[data["student"]] = data
    return reports


def method_order(methods: set[str] | list[str]) -> list[str]:
    """The paper's methods in :data:`METHOD_LABELS` order, then any other method by name."""
    known = [m for m in METHOD_LABELS if m in methods]
    return known + sorted(set(methods) - set(known))


# ------------------------------------------------------------------------------ cell formats


def _cell(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; a dash for a missing or NaN value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _interval(ci: Any, digits: int = 2) -> str:
    """``[low, high]`` with ``digits`` decimals; a dash for a missing interval."""
    return "—" if not ci else f"[{_cell(ci[0], digits)}, {_cell(ci[1], digits)}]"


def _verdicts(verdicts: Any) -> str:
    """The Arena-Hard verdict counts in :data:`VERDICT_ORDER` (absent labels 0); a dash if none."""
    return " / ".join(str(verdicts.get(label, 0)) for label in VERDICT_ORDER) if verdicts else "—"


def _text(value: Any) -> str:
    """The value as Python writes it (``None`` included)."""
    return f"{value}"


def number(digits: int = 2) -> Callable[[Any], str]:
    """The format of a number cell with ``digits`` decimals."""
    return functools.partial(_cell, digits=digits)


def interval(digits: int = 2) -> Callable[[Any], str]:
    """The format of a ``[low, high]`` interval cell with ``digits`` decimals."""
    return functools.partial(_interval, digits=digits)


# ------------------------------------------------------------------------------ the suite specs


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a suite's table: header, the suite's field shown, its format, alignment."""

    header: str
    field: str
    format: Callable[[Any], str] = _cell
    align: str = "---:"


#: Layouts of a suite's table: one row per method with each student's columns side by side (the
#: paper's Table 2), or one row per method and student.
STUDENT_COLUMNS = "student columns"
METHOD_STUDENT_ROWS = "method x student rows"


def _no_lines(combined: Combined) -> list[str]:
    """No footnotes."""
    return []


@dataclasses.dataclass(frozen=True)
class SuiteTable:
    """One eval suite: what :func:`combine` keeps of it and how :func:`markdown` lays it out.

    Attributes:
        section: the suite's key in a method's entry of the eval report (``"mt_bench"``).
        prefix: prepended to each field's name for its key in a combined row.
        fields: the suite's values kept in the combined rows (``turn1``, ...).
        scale: a factor applied to every non-missing value (fractions to percent), or None.
        caption: the lines above the table (a leading blank line separates it from the last).
        columns: the table's value columns, after ``Method`` (and ``Student``).
        layout: :data:`STUDENT_COLUMNS` or :data:`METHOD_STUDENT_ROWS`.
        shown_if: fields of which any student's method must have a value for the table to show.
        rows_need: a field a row must have a value for to show (else every present method does).
        footnotes: lines after every suite's table (the document's end), whether shown or not.
    """

    section: str
    prefix: str
    fields: tuple[str, ...]
    caption: Callable[[Combined], list[str]]
    columns: tuple[Column, ...]
    layout: str = METHOD_STUDENT_ROWS
    shown_if: tuple[str, ...] = ()
    rows_need: str | None = None
    scale: float | None = None
    footnotes: Callable[[Combined], list[str]] = _no_lines

    def __post_init__(self) -> None:
        if self.layout not in (STUDENT_COLUMNS, METHOD_STUDENT_ROWS):
            raise ValueError(f"{self.section}: unknown table layout {self.layout!r}")
        used = {col.field for col in self.columns} | set(self.shown_if)
        if self.rows_need is not None:
            used.add(self.rows_need)
        if not used <= set(self.fields):
            raise ValueError(f"{self.section}: table fields {sorted(used - set(self.fields))} not in `fields`")

    def key(self, field: str) -> str:
        """The combined row's key of one of the suite's fields."""
        return self.prefix + field

    def flatten(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The suite's part of a combined row, from a method's entry of the eval report."""
        values = entry.get(self.section) or {}
        row = {}
        for field in self.fields:
            value = values.get(field)
            row[self.key(field)] = value if value is None or self.scale is None else self.scale * value
        return row

    def shown(self, combined: Combined) -> bool:
        """Whether any student's method has a value for one of :attr:`shown_if`."""
        return any(_any(combined, self.key(field)) for field in self.shown_if)


def _caption(text: str) -> Callable[[Combined], list[str]]:
    """A fixed caption: a blank line, the text, a blank line."""
    return lambda combined: ["", text, ""]


def _alpaca_caption(combined: Combined) -> list[str]:
    """The judges and the LC method(s) of Table 2."""
    lc_notes = sorted({str(data["length_controlled_method"]) for data in combined.values()})
    judges = sorted({str(data["judge"]) for data in combined.values()})
    offline = " (an offline estimate, not the official LC: see docs/stages.md, eval)"
    return [
        "AlpacaEval 2.0: length-controlled win rate (LC%) and raw win rate (WR%) against the "
        "gpt4_1106_preview reference, judged by " + ", ".join(f"`{j}`" for j in judges) + ".",
        "LC method: " + ", ".join(f"`{n}`" for n in lc_notes)
        + (offline if any("offline" in n for n in lc_notes) else "") + ".",
        "",
    ]


def _alpaca_footnotes(combined: Combined) -> list[str]:
    """The judged instructions per model and every method's LC note."""
    lines = []
    rows = [row for data in combined.values() for row in data["methods"].values()]
    if _any(combined, "win_rate"):
        n = sorted({row.get("n_total") for row in rows}, key=str)
        lines += ["", f"Judged instructions per model: {', '.join(str(x) for x in n)}."]
    notes = sorted({
        f"{s}/{m}: {row['length_controlled_note']}"
        for s, data in combined.items() for m, row in data["methods"].items() if row.get("length_controlled_note")
    })
    if notes:
        lines += ["", "LC notes:", "", *[f"- {note}" for note in notes]]
    return lines


#: The suites in the paper's reporting order: :func:`combine` flattens each, :func:`markdown`
#: writes each one's table in this order. A new suite is one more entry.
SUITE_TABLES: tuple[SuiteTable, ...] = (
    SuiteTable(
        section="alpaca_eval",
        prefix="",
        fields=("length_controlled_winrate", "length_controlled_note", "win_rate", "standard_error",
                "discrete_win_rate", "avg_length", "n_total"),
        caption=_alpaca_caption,
        columns=(Column("LC", "length_controlled_winrate"), Column("WR", "win_rate")),
        layout=STUDENT_COLUMNS,
        shown_if=("win_rate",),
        footnotes=_alpaca_footnotes,
    ),
    SuiteTable(
        section="mt_bench",
        prefix="mt_bench_",
        fields=("turn1", "turn2", "score"),
        caption=_caption("MT-Bench (single-answer grading 1-10, FastChat's templates; mean over the "
                         "judged turns):"),
        columns=(Column("turn 1", "turn1"), Column("turn 2", "turn2"), Column("score", "score")),
        shown_if=("score",),
    ),
    SuiteTable(
        section="ifeval",
        prefix="ifeval_",
        fields=("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                "inst_level_loose_acc"),
        scale=100.0,
        caption=_caption("IFEval (offline, rule-based; accuracy %):"),
        columns=(Column("prompt strict", "prompt_level_strict_acc"),
                 Column("inst. strict", "inst_level_strict_acc"),
                 Column("prompt loose", "prompt_level_loose_acc"),
                 Column("inst. loose", "inst_level_loose_acc")),
        shown_if=("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                  "inst_level_loose_acc"),
    ),
    SuiteTable(
        section="arena_hard",
        prefix="arena_hard_",
        fields=("score", "ci", "verdicts"),
        caption=_caption("Arena-Hard-Auto v0.1 (win rate % against gpt-4-0314, Bradley-Terry over "
                         "both games of every prompt, 95% bootstrap interval; the judge's raw labels "
                         "over both games, A>>B / A>B / A=B / B>A / B>>A, where game 1 shows the "
                         "baseline as A and game 2 the model):"),
        columns=(Column("score", "score"), Column("95% CI", "ci", interval(2), "---"),
                 Column("verdicts", "verdicts", _verdicts, "---")),
        shown_if=("score",),
    ),
    SuiteTable(
        section="prefeval",
        prefix="prefeval_",
        fields=("n", "accuracy", "accuracy_ci", "mean_margin", "mean_margin_ci", "likelihood_accuracy"),
        caption=_caption("Held-out preference accuracy (`sp2dpo prefeval`: implicit-reward margin "
                         "against the model without adapter, ties 1/2; likelihood accuracy is "
                         "reference-free; 95% bootstrap intervals):"),
        columns=(Column("pairs", "n", _text), Column("accuracy", "accuracy", number(3)),
                 Column("95% CI", "accuracy_ci", interval(3), "---"),
                 Column("mean margin", "mean_margin", number(3)),
                 Column("95% CI", "mean_margin_ci", interval(3), "---"),
                 Column("likelihood acc.", "likelihood_accuracy", number(3))),
        shown_if=("accuracy",),
        rows_need="accuracy",
    ),
)


# ------------------------------------------------------------------------------ combine and render


def combine(reports: dict[str, dict[str, Any]]) -> Combined:
    """The combined metrics: per student and method, every suite's fields (:data:`SUITE_TABLES`)."""
    out: Combined = {}
    for student, report in reports.items():
        rows = {}
        for method, entry in report["methods"].items():
            rows[method] = {k: v for suite in SUITE_TABLES for k, v in suite.flatten(entry).items()}
        out[student] = {
            "methods": rows,
            "length_controlled_method": report.get("length_controlled_method"),
            "judge": report.get("judge", {}).get("model"),
        }
    return out


def _any(combined: Combined, key: str) -> bool:
    """Whether any student's method has a value for ``key``."""
    return any(row.get(key) is not None for data in combined.values() for row in data["methods"].values())


def _table(suite: SuiteTable, combined: Combined, methods: list[str]) -> list[str]:
    """One suite's table (without its caption), in the suite's layout."""
    students = list(combined)

    def cells(row: dict[str, Any]) -> list[str]:
        return [col.format(row.get(suite.key(col.field))) for col in suite.columns]

    if suite.layout == STUDENT_COLUMNS:
        heads = [f"{s} {col.header}" for s in students for col in suite.columns]
        lines = ["| Method | " + " | ".join(heads) + " |",
                 "|---|" + "".join(f"{col.align}|" for _ in students for col in suite.columns)]
        for method in methods:
            row_cells = [c for s in students for c in cells(combined[s]["methods"].get(method, {}))]
            lines.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(row_cells) + " |")
        return lines
    lines = ["| Method | Student | " + " | ".join(col.header for col in suite.columns) + " |",
             "|---|---|" + "".join(f"{col.align}|" for col in suite.columns)]
    for method in methods:
        for s in students:
            row = combined[s]["methods"].get(method)
            if row is None or (suite.rows_need is not None and row.get(suite.key(suite.rows_need)) is None):
                continue
            lines.append(f"| {METHOD_LABELS.get(method, method)} | {s} | " + " | ".join(cells(row)) + " |")
    return lines


def markdown(combined: Combined) -> str:
    """Every shown suite's table in :data:`SUITE_TABLES` order, then their footnotes, as markdown."""
    methods = method_order({m for data in combined.values() for m in data["methods"]})
    lines = ["# Evaluation results", ""]
    for suite in SUITE_TABLES:
        if suite.shown(combined):
            lines += suite.caption(combined) + _table(suite, combined, methods)
    for suite in SUITE_TABLES:
        lines += suite.footnotes(combined)
    lines.append("")
    return "\n".join(lines)


def plot_rows(combined: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-format rows ``student, method, metric, value`` for the DVC plot."""
    rows = []
    for student, data in combined.items():
        for method in method_order(list(data["methods"])):
            row = data["methods"][method]
            for metric, key in (("LC", "length_controlled_winrate"), ("WR", "win_rate")):
                value = row.get(key)
                if value is not None and not math.isnan(value):
                    rows.append({"student": student, "method": method, "metric": metric,
                                 "label": f"{student}/{method}/{metric}", "value": round(float(value), 6)})
    return rows


def write_plot(rows: list[dict[str, Any]], csv_path: str | Path, png_path: str | Path) -> None:
    """The plot data as CSV and a grouped bar chart (LC and WR per student/method) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header = "student,method,metric,label,value"
    body = [f"{r['student']},{r['method']},{r['metric']},{r['label']},{r['value']!r}" for r in rows]
    artifacts.write_text("\n".join([header, *body]) + "\n", csv_path)

    groups = [(r["student"], r["method"]) for r in rows if r["metric"] == "LC"]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(groups) + 1), 3.2), dpi=100)
    width = 0.38
    for offset, metric in ((-width / 2, "LC"), (width / 2, "WR")):
        values = {(r["student"], r["method"]): r["value"] for r in rows if r["metric"] == metric}
        ax.bar([i + offset for i in range(len(groups))], [values.get(g, 0.0) for g in groups],
               width=width, label=f"{metric}%")
    ax.set_xticks(range(len(groups)), [f"{s}\n{m}" for s, m in groups], fontsize=8)
    ax.set_ylabel("percent")
    ax.set_title("AlpacaEval 2.0 vs gpt4_1106_preview")
    ax.legend(fontsize=8)
    artifacts.save_figure(fig, png_path, bottom=0.22, left=0.12)


def write_results(reports: Path) -> dict[str, Any]:
    """Combine ``<reports>/eval/*.json`` into ``eval.json``, ``eval.md`` and ``eval_plot.*`` there."""
    per_student = load_reports(reports / "eval")
    if not per_student:
        raise FileNotFoundError(f"{reports / 'eval'}: no eval reports; run `dvc repro eval` first")
    combined = combine(per_student)
    artifacts.write_json(combined, reports / "eval.json")
    artifacts.write_text(markdown(combined), reports / "eval.md")
    write_plot(plot_rows(combined), reports / "eval_plot.csv", reports / "eval_plot.png")
    return combined
