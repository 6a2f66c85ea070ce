"""The results table: every student's eval report combined, laid out like the paper's Table 2.

Inputs: ``reports/eval/<student>.json`` (one per student, from ``eval@<student>``). Outputs:

- ``reports/eval.json``: ``{"<student>": {"<method>": {lc, wr, ...}}}`` plus the method behind LC
  (DVC metrics: ``dvc metrics diff`` compares experiments on it);
- ``reports/eval.md``: the suites in the paper's reporting order: AlpacaEval 2.0 LC and WR per
  student (columns) and method (rows), as in Table 2 of the paper; MT-Bench (turn 1, turn 2,
  overall); IFEval accuracies; Arena-Hard-Auto (score with its 95% interval, verdict labels);
  then the held-out preference accuracy of ``sp2dpo prefeval`` (no judge);
- ``reports/eval_plot.csv`` + ``reports/eval_plot.png``: the same numbers as a plot.
"""

from __future__ import annotations

import json
import math
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
#: (key in the report, column label) of the IFEval table.
IFEVAL_COLUMNS = [
    ("prompt_level_strict_acc", "prompt strict"),
    ("inst_level_strict_acc", "inst. strict"),
    ("prompt_level_loose_acc", "prompt loose"),
    ("inst_level_loose_acc", "inst. loose"),
]


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
    known = [m for m in METHOD_LABELS if m in methods]
    return known + sorted(set(methods) - set(known))


def combine(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The combined metrics: per student and method, LC/WR/IFEval numbers (percent)."""
    out: dict[str, Any] = {}
    for student, report in reports.items():
        rows = {}
        for method, entry in report["methods"].items():
            ae = entry.get("alpaca_eval", {})
            row = {
                "length_controlled_winrate": ae.get("length_controlled_winrate"),
                "length_controlled_note": ae.get("length_controlled_note"),
                "win_rate": ae.get("win_rate"),
                "standard_error": ae.get("standard_error"),
                "discrete_win_rate": ae.get("discrete_win_rate"),
                "avg_length": ae.get("avg_length"),
                "n_total": ae.get("n_total"),
            }
            mt = entry.get("mt_bench") or {}
            for key in ("turn1", "turn2", "score"):
                row[f"mt_bench_{key}"] = mt.get(key)
            for key, _ in IFEVAL_COLUMNS:
                value = (entry.get("ifeval") or {}).get(key)
                row[f"ifeval_{key}"] = None if value is None else 100.0 * value
            pe = entry.get("prefeval") or {}
            for key in ("n", "accuracy", "accuracy_ci", "mean_margin", "mean_margin_ci",
                        "likelihood_accuracy"):
                row[f"prefeval_{key}"] = pe.get(key)
            ah = entry.get("arena_hard") or {}
            row["arena_hard_score"] = ah.get("score")
            row["arena_hard_ci"] = ah.get("ci")
            row["arena_hard_verdicts"] = ah.get("verdicts")
            rows[method] = row
        out[student] = {
            "methods": rows,
            "length_controlled_method": report.get("length_controlled_method"),
            "judge": report.get("judge", {}).get("model"),
        }
    return out


def _any(combined: dict[str, Any], key: str) -> bool:
    """Whether any student's method has a value for ``key``."""
    return any(row.get(key) is not None for data in combined.values() for row in data["methods"].values())


def _interval(ci: Any, digits: int = 2) -> str:
    return "—" if not ci else f"[{_cell(ci[0], digits)}, {_cell(ci[1], digits)}]"


def _cell(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def _alpaca_table(combined: dict[str, Any], students: list[str], methods: list[str]) -> list[str]:
    """Table 2: AlpacaEval 2.0 LC and WR per student, with the judge and the LC method."""
    lc_notes = sorted({str(combined[s]["length_controlled_method"]) for s in students})
    judges = sorted({str(combined[s]["judge"]) for s in students})
    lines = [
        "AlpacaEval 2.0: length-controlled win rate (LC%) and raw win rate (WR%) against the "
        "gpt4_1106_preview reference, judged by " + ", ".join(f"`{j}`" for j in judges) + ".",
        "LC method: " + ", ".join(f"`{n}`" for n in lc_notes)
        + (" (an offline estimate, not the official LC: see docs/stages.md, eval)" if any("offline" in n for n in lc_notes) else "")
        + ".",
        "",
    ]
    head = "| Method | " + " | ".join(f"{s} LC | {s} WR" for s in students) + " |"
    lines += [head, "|---|" + "---:|---:|" * len(students)]
    for method in methods:
        cells = []
        for s in students:
            row = combined[s]["methods"].get(method, {})
            cells += [_cell(row.get("length_controlled_winrate")), _cell(row.get("win_rate"))]
        lines.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    return lines


def markdown(combined: dict[str, Any]) -> str:
    """Table 2 (LC and WR per student) and the IFEval table, as markdown."""
    students = list(combined)
    methods = method_order({m for s in students for m in combined[s]["methods"]})
    lines = ["# Evaluation results", ""]
    if _any(combined, "win_rate"):
        lines += _alpaca_table(combined, students, methods)
    if _any(combined, "mt_bench_score"):
        lines += ["", "MT-Bench (single-answer grading 1-10, FastChat's templates; mean over the "
                  "judged turns):", ""]
        lines += ["| Method | Student | turn 1 | turn 2 | score |", "|---|---|---:|---:|---:|"]
        for method in methods:
            for s in students:
                row = combined[s]["methods"].get(method)
                if row is None:
                    continue
                cells = [_cell(row.get(f"mt_bench_{k}")) for k in ("turn1", "turn2", "score")]
                lines.append(f"| {METHOD_LABELS.get(method, method)} | {s} | " + " | ".join(cells) + " |")
    if any(_any(combined, f"ifeval_{key}") for key, _ in IFEVAL_COLUMNS):
        lines += ["", "IFEval (offline, rule-based; accuracy %):", ""]
        head = "| Method | Student | " + " | ".join(label for _, label in IFEVAL_COLUMNS) + " |"
        lines += [head, "|---|---|" + "---:|" * len(IFEVAL_COLUMNS)]
        for method in methods:
            for s in students:
                row = combined[s]["methods"].get(method)
                if row is None:
                    continue
                cells = [_cell(row.get(f"ifeval_{key}")) for key, _ in IFEVAL_COLUMNS]
                lines.append(f"| {METHOD_LABELS.get(method, method)} | {s} | " + " | ".join(cells) + " |")
    if _any(combined, "arena_hard_score"):
        lines += ["", "Arena-Hard-Auto v0.1 (win rate % against gpt-4-0314, Bradley-Terry over both "
                  "games of every prompt, 95% bootstrap interval; the judge's raw labels over both "
                  "games, A>>B / A>B / A=B / B>A / B>>A, where game 1 shows the baseline as A and "
                  "game 2 the model):", ""]
        lines += ["| Method | Student | score | 95% CI | verdicts |", "|---|---|---:|---|---|"]
        for method in methods:
            for s in students:
                row = combined[s]["methods"].get(method)
                if row is None:
                    continue
                interval = _interval(row.get("arena_hard_ci"))
                verdicts = row.get("arena_hard_verdicts") or {}
                counts = " / ".join(str(verdicts.get(label, 0)) for label in VERDICT_ORDER) if verdicts else "—"
                lines.append(f"| {METHOD_LABELS.get(method, method)} | {s} | "
                             f"{_cell(row.get('arena_hard_score'))} | {interval} | {counts} |")
    if _any(combined, "prefeval_accuracy"):
        lines += ["", "Held-out preference accuracy (`sp2dpo prefeval`: implicit-reward margin against "
                  "the model without adapter, ties 1/2; likelihood accuracy is reference-free; 95% "
                  "bootstrap intervals):", ""]
        lines += ["| Method | Student | pairs | accuracy | 95% CI | mean margin | 95% CI | "
                  "likelihood acc. |", "|---|---|---:|---:|---|---:|---|---:|"]
        for method in methods:
            for s in students:
                row = combined[s]["methods"].get(method)
                if row is None or row.get("prefeval_accuracy") is None:
                    continue
                lines.append(
                    f"| {METHOD_LABELS.get(method, method)} | {s} | {row['prefeval_n']} | "
                    f"{_cell(row['prefeval_accuracy'], 3)} | {_interval(row['prefeval_accuracy_ci'], 3)} | "
                    f"{_cell(row['prefeval_mean_margin'], 3)} | {_interval(row['prefeval_mean_margin_ci'], 3)} | "
                    f"{_cell(row['prefeval_likelihood_accuracy'], 3)} |"
                )
    if _any(combined, "win_rate"):
        n = sorted({combined[s]["methods"][m].get("n_total") for s in students for m in combined[s]["methods"]}, key=str)
        lines += ["", f"Judged instructions per model: {', '.join(str(x) for x in n)}."]
    notes = sorted({
        f"{s}/{m}: {row['length_controlled_note']}"
        for s in students for m, row in combined[s]["methods"].items() if row.get("length_controlled_note")
    })
    if notes:
        lines += ["", "LC notes:", "", *[f"- {note}" for note in notes]]
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
