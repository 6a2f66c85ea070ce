"""``reports/index.md``: one page linking every report the pipeline wrote, in pipeline order.

Each stage's report is linked (relative to ``reports/``) with a one-line summary read from its JSON;
plots are embedded as images next to the CSV behind them; training runs form one table; the
evaluation table (``reports/eval.md``) is linked and embedded. A report that does not exist yet is
listed as "not produced yet", so the page also shows what is left to run. Any other file under
``reports/`` is listed at the end, so nothing the pipeline wrote is hidden. The output is
deterministic: sorted, fixed number formats, no timestamps, so the report stage re-runs to the same
bytes.

```bash
sp2dpo report                     # writes reports/index.md and the results table (= `dvc repro report`)
```
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sp2dpo.core.artifacts import write_text

#: The index's file name, inside the reports folder.
INDEX = Path("index.md")
NOT_PRODUCED = "not produced yet"
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")

FOOTER = """## Reproduce and compare

```bash
dvc repro                                   # re-run what changed (every report above)
dvc exp run -S aggregate.prompt_operator=weighted_mean   # an experiment with one param changed
dvc exp show                                # experiments side by side: params and metrics
dvc metrics diff                            # metrics of the workspace vs HEAD (or: REV_A REV_B)
dvc plots diff -o build/plots/diff          # the plots of two revisions overlaid (HTML)
sp2dpo audit diff HEAD:data/beta/beta.csv data/beta/beta.csv   # what changed in the beta schedule
sp2dpo report                               # rebuild this page and the results table
```

Offline plot pages need the inlined vega builds: `make plots` (`npm ci`, then
`sp2dpo plots-template`, then `dvc plots show`).
"""


# -- small formatting helpers ------------------------------------------------------------------


def _link(rel: str, text: str | None = None) -> str:
    """A markdown link to ``rel`` (a path relative to ``reports/``)."""
    return f"[{text or f'`{rel}`'}]({quote(rel)})"


def _num(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals (``-`` for missing or NaN); ints stay ints."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _cell(value: Any) -> str:
    """A table cell: no pipes or newlines."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _read_json(path: Path) -> tuple[Any, str | None]:
    """``(data, None)``, or ``(None, reason)`` when the file is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, ValueError) as exc:
        return None, f"unreadable: {type(exc).__name__}"


# -- one-line summaries, one per report ----------------------------------------------------------


def summarize_fetch(data: dict[str, Any]) -> str:
    """``reports/fetch.json``: rows, origin, source."""
    text = f"{data.get('rows', '?')} rows from `{data.get('origin', '?')}` (source: {data.get('source', '?')}"
    if data.get("limit") is not None:
        text += f", limit {data['limit']}"
    return text + f", {data.get('with_scores', 0)} with scores)"


def summarize_filter(data: dict[str, Any]) -> str:
    """``reports/filter.json``: raw, kept, dropped and the count per rule."""
    rules = ", ".join(f"{rule} {n}" for rule, n in sorted(data.get("rules", {}).items()))
    text = f"{data.get('raw', '?')} raw -> {data.get('kept', '?')} kept, {data.get('dropped', '?')} dropped"
    if rules:
        text += f" ({rules})"
    if "identical_replies_seen" in data:
        text += f"; identical replies seen: {data['identical_replies_seen']}"
        text += " (dropped)" if data.get("drop_identical") else " (kept: rule off)"
    return text


def _nonzero_statuses(status: dict[str, int]) -> str:
    ok = [("ok", status["ok"])] if "ok" in status else []
    rest = [(k, v) for k, v in sorted(status.items()) if k != "ok" and v]
    return ", ".join(f"{k} {v}" for k, v in ok + rest) or "-"


def summarize_annotate(data: dict[str, Any]) -> str:
    """``reports/annotate.json``: calls, pairs, panel, statuses, cost."""
    teachers, variants = data.get("teachers", []), data.get("variants", [])
    return (
        f"{data.get('calls', '?')} calls on {data.get('pairs', '?')} pairs "
        f"({data.get('pairs_complete', '?')} complete); {len(teachers)} teachers x "
        f"{len(variants)} variants; status: {_nonzero_statuses(data.get('status', {}))}; "
        f"cost ${_num(float(data.get('cost_usd', 0.0)), 4)}"
    )


def annotate_table(data: dict[str, Any]) -> list[str]:
    """Per teacher: model, calls, statuses, tokens and cost (latencies are in MLflow)."""
    rows = []
    for teacher, t in sorted(data.get("per_teacher", {}).items()):
        rows.append(
            [
                teacher,
                f"`{t.get('model', '?')}`",
                _num(t.get("calls")),
                _nonzero_statuses(t.get("status", {})),
                _num(t.get("pairs_incomplete")),
                f"{_num(t.get('prompt_tokens'))} / {_num(t.get('completion_tokens'))}",
                "$" + _num(float(t.get("cost_usd", 0.0)), 4),
            ]
        )
    if not rows:
        return []
    header = [
        "teacher",
        "model",
        "calls",
        "status",
        "pairs incomplete",
        "tokens in / out",
        "cost",
    ]
    return _table(header, rows)


def summarize_aggregate(data: dict[str, Any]) -> str:
    """``reports/aggregate.json``: pairs kept, panel, JMAMP beta, teacher agreement."""
    pairs, panel = data.get("pairs", {}), data.get("panel", {})
    text = (
        f"{pairs.get('kept', '?')}/{pairs.get('total', '?')} pairs kept ({pairs.get('excluded', '?')} excluded); "
        f"panel {panel.get('annotators', '?')} teachers x {panel.get('variants', '?')} variants"
    )
    jmamp = data.get("beta", {}).get("beta_annotators_mean_ens")
    if jmamp:
        text += (
            f"; JMAMP beta mean {_num(jmamp.get('mean'))} (min {_num(jmamp.get('min'))}, "
            f"max {_num(jmamp.get('max'))})"
        )
    agreement = data.get("agreement", {}).get("mean_category_agreement")
    if agreement is not None:
        text += f"; mean teacher category agreement {_num(agreement, 2)}"
    return text


def summarize_eval(data: dict[str, Any]) -> str:
    """``reports/eval.json``: per student, the methods with LC/WR."""
    parts = []
    for student, s in sorted(data.items()):
        if not isinstance(s, dict):
            continue
        methods = s.get("methods", {})
        cells = ", ".join(
            f"{m} LC {_num(r.get('length_controlled_winrate'), 2)} / WR {_num(r.get('win_rate'), 2)}"
            for m, r in sorted(methods.items())
        )
        parts.append(f"{student}: {cells}" if cells else f"{student}: no methods")
    return "; ".join(parts) + " (percent)" if parts else "no students"


def summarize_eval_student(data: dict[str, Any]) -> str:
    """``reports/eval/<student>.json``: methods evaluated and the judge."""
    methods = ", ".join(sorted(data.get("methods", {})))
    judge = (data.get("judge") or {}).get("model", "?")
    return f"{data.get('student', '?')}: methods {methods or '-'}; judge `{judge}`"


# -- the page ------------------------------------------------------------------------------------


class _Page:
    """Collects the lines of the index and the report files it linked."""

    def __init__(self, reports: Path) -> None:
        self.reports = reports
        self.lines: list[str] = []
        self.linked: set[str] = {INDEX.name}

    def rel(self, path: Path) -> str:
        return path.relative_to(self.reports).as_posix()

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def json_item(
        self, rel: str, summarize: Callable[[dict[str, Any]], str]
    ) -> dict[str, Any] | None:
        """A bullet for one JSON report: link + summary, or "not produced yet". Returns its data."""
        path = self.reports / rel
        if not path.is_file():
            self.add(f"- `{rel}`: {NOT_PRODUCED}")
            return None
        self.linked.add(rel)
        data, problem = _read_json(path)
        if problem is None and not isinstance(data, dict):
            problem = "unexpected content (not a JSON object)"
        self.add(f"- {_link(rel)}: {problem or summarize(data)}")
        return data if problem is None else None

    def plots(self, folder: str, what: str) -> None:
        """Each image in ``reports/<folder>/`` embedded, with the CSV behind it; then other CSVs."""
        root = self.reports / folder
        files = sorted(p for p in root.glob("*") if p.is_file()) if root.is_dir() else []
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        csvs = [p for p in files if p.suffix.lower() == ".csv"]
        if not images and not csvs:
            self.add(f"- {what} (`{folder}/*.png`, `{folder}/*.csv`): {NOT_PRODUCED}")
            return
        for image in images:
            self.image(image)
        for data in csvs:
            if self.rel(data) not in self.linked:
                self.linked.add(self.rel(data))
                self.add(f"- {_link(self.rel(data))} (plot data)")


    def image(self, image: Path) -> None:
        """One image embedded, linked with the CSV of the same name behind it."""
        rel = self.rel(image)
        data = image.with_suffix(".csv")
        self.linked.add(rel)
        line = f"- {_link(rel)}"
        if data.is_file():
            self.linked.add(self.rel(data))
            line += f" (data: {_link(self.rel(data))})"
        self.add(line, "", f"  ![{image.stem}]({quote(rel)})", "")


def _train_rows(page: _Page) -> list[list[str]]:
    rows = []
    for path in sorted((page.reports / "train").glob("*.json")):
        rel = page.rel(path)
        page.linked.add(rel)
        data, problem = _read_json(path)
        if problem is not None or not isinstance(data, dict):
            rows.append(
                ["?", "?", "?", "?", "?", "?", _link(rel, path.name), problem or "not a JSON object"]
            )
            continue
        beta = data.get("beta_column") or ""
        if not beta:
            stats = data.get("beta", {})
            value = stats.get("min") if stats.get("min") == stats.get("max") else None
            beta = f"global {_num(value, 3)}" if value is not None else "global"
        else:
            beta = f"`{beta}`"
        curve = path.with_name(f"{path.stem}_loss.csv")
        if curve.is_file():
            page.linked.add(page.rel(curve))
            curve_link = _link(page.rel(curve), curve.name)
        else:
            curve_link = NOT_PRODUCED
        rows.append(
            [
                _cell(data.get("student", "?")),
                _cell(data.get("method", "?")),
                f"`{data['loss']}`" if data.get("loss") else "?",
                beta,
                _num(data.get("final_loss")),
                _num(data.get("global_step")),
                _link(rel, path.name),
                curve_link,
            ]
        )
    return rows


def _demote_headings(markdown: str, levels: int = 2) -> list[str]:
    """Lines of ``markdown`` with every ATX heading ``levels`` deeper (outside code fences)."""
    out, fenced = [], False
    for line in markdown.rstrip("\n").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("#"):
            line = "#" * levels + line
        out.append(line)
    return out


def build_index(reports: str | Path) -> str:
    """The markdown of ``index.md`` for the reports folder ``reports``.

    Args:
        reports: the folder holding the stages' reports (``reports/`` in the pipeline).

    Returns:
        The page: stages in pipeline order (fetch, filter, annotate, aggregate, train, eval), each
        report linked relative to ``reports/`` with a summary, plots embedded, missing reports
        marked "not produced yet", other files under ``reports/`` listed, and a footer on how to
        reproduce and compare runs.
    """
    reports = Path(reports)
    page = _Page(reports)
    page.add(
        "# Reports",
        "",
        "Every report of the pipeline `fetch -> filter -> annotate -> aggregate -> train -> eval`, "
        "in that order. Generated by `sp2dpo.report.index`; do not edit by hand.",
        "",
        "## fetch",
        "",
    )
    page.json_item("fetch.json", summarize_fetch)
    page.add("", "## filter", "")
    page.json_item("filter.json", summarize_filter)

    page.add("", "## annotate", "")
    annotate = page.json_item("annotate.json", summarize_annotate)
    if annotate:
        page.add("", *annotate_table(annotate))

    page.add("", "## aggregate", "")
    page.json_item("aggregate.json", summarize_aggregate)
    excluded = reports / "aggregate" / "excluded.csv"
    if excluded.is_file():
        n = max(0, len(excluded.read_text(encoding="utf-8").splitlines()) - 1)
        page.linked.add("aggregate/excluded.csv")
        page.add(f"- {_link('aggregate/excluded.csv')}: {n} pair(s) excluded, each with its reason")
    page.plots("aggregate", "beta distribution and diagnostics plots")

    page.add("", "## train", "")
    rows = _train_rows(page)
    if rows:
        page.add(
            *_table(
                ["student", "method", "loss", "beta", "final loss", "steps", "report", "loss curve"], rows
            )
        )
    else:
        page.add(f"- training reports (`train/<student>-<method>.json`): {NOT_PRODUCED}")

    page.add("", "## eval", "")
    students = sorted((reports / "eval").glob("*.json")) if (reports / "eval").is_dir() else []
    for path in students:
        page.json_item(page.rel(path), summarize_eval_student)
    if not students:
        page.add(f"- per-student evaluation (`eval/<student>.json`): {NOT_PRODUCED}")
    page.json_item("eval.json", summarize_eval)
    table = reports / "eval.md"
    if table.is_file():
        page.linked.add("eval.md")
        page.add(f"- {_link('eval.md')}: the results table (Table 2), below", "")
        page.add(*_demote_headings(table.read_text(encoding="utf-8")), "")
    else:
        page.add(f"- `eval.md` (results table): {NOT_PRODUCED}")
    plot = reports / "eval_plot.png"
    if plot.is_file():
        page.image(plot)
    else:
        page.add(f"- evaluation plot (`eval_plot.png`, `eval_plot.csv`): {NOT_PRODUCED}")

    others = (
        sorted(
            page.rel(p)
            for p in reports.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(reports).parts)
            and page.rel(p) not in page.linked
        )
        if reports.is_dir()
        else []
    )
    if others:
        page.add("", "## other files", "")
        page.add(*(f"- {_link(rel)}" for rel in others))

    page.add("", *FOOTER.rstrip("\n").splitlines())
    lines: list[str] = []
    for line in page.lines:  # one blank line between blocks
        if not (line == "" and lines and lines[-1] == ""):
            lines.append(line)
    return "\n".join(lines) + "\n"


def write_index(reports: str | Path = "reports") -> Path:
    """Write :func:`build_index` to ``<reports>/index.md`` atomically.

    Args:
        reports: the reports folder.

    Returns:
        The path written.
    """
    path = Path(reports) / INDEX
    write_text(build_index(reports), path)
    return path
