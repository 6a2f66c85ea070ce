"""``sp2dpo sweep select``: the finished experiments of a sweep, lambda* and the selection report.

The experiments are read from ``dvc exp show --json`` (DVC's record of each experiment's params
and metrics): those named ``<sweep.name>-<n>``. Each one's setting is the value of every swept
key in its own ``params.yaml`` (what DVC ran, profile included), and its score the selection
metric of ``methods.<method>`` in its ``reports/eval/<student>.json`` (read whole from the
experiment's commit: ``dvc exp show`` drops list values) with the 95% interval the report gives
(``<metric>_ci``). lambda* is the best score in ``sweep.direction``; ties go to the
earlier experiment of the grid. The best is called *distinguishable* from the runner-up when the
95% interval of their per-pair difference excludes 0: every experiment scores the same held-out
pairs, so a seeded paired bootstrap of the difference (:mod:`sp2dpo.sweep.paired`) is the test.
Where an experiment has no per-pair file (a metric of another suite), the conservative marginal
reading is used instead (their two 95% intervals do not overlap) and the report says so.

The report (``reports/sweep/<name>/``): ``selection.json``, ``selection.md`` (every setting side by
side with its interval) and one plot per swept variable (``<key>.png``: the metric against the
variable's values, with the intervals and lambda* marked).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core import artifacts, programs
from sp2dpo.core.config import SweepConfig
from sp2dpo.sweep import paired
from sp2dpo.sweep.queue import SweepError

#: The two criteria of "distinguishable", as the report states them.
PAIRED_CRITERION = ("the 95% interval of the paired per-pair difference (best - runner-up, seeded "
                    "bootstrap over the shared held-out pairs) excludes 0")
MARGINAL_CRITERION = "best and runner-up 95% intervals do not overlap (no per-pair data)"


@dataclasses.dataclass(frozen=True)
class Trial:
    """One experiment of the sweep as DVC recorded it."""

    name: str
    rev: str
    index: int  #: position in the grid (1-based, from the name)
    state: str  #: DVC executor state: success, failed, queued, running (or "" for a finished one)
    setting: dict[str, Any]
    student: str | None = None
    method: str | None = None
    value: float | None = None
    ci: tuple[float, float] | None = None
    problem: str | None = None  #: why it has no score
    #: per-pair values of the metric by prompt_id (:mod:`sp2dpo.sweep.paired`), when available
    pairs: dict[str, float] | None = dataclasses.field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "rev": self.rev, "state": self.state, "setting": self.setting,
            "student": self.student, "method": self.method, "value": self.value,
            "ci": list(self.ci) if self.ci else None, "problem": self.problem,
        }


@dataclasses.dataclass(frozen=True)
class Selection:
    """lambda* and the evidence: every trial, the best, the runner-up, distinguishability."""

    sweep: str
    metric: str
    direction: str
    variables: list[str]
    trials: list[Trial]
    best: Trial | None
    runner_up: Trial | None
    distinguishable: bool | None
    criterion: str = MARGINAL_CRITERION
    #: experiment name -> the paired difference best - that experiment (:func:`paired.paired_interval`)
    paired: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep,
            "metric": self.metric,
            "direction": self.direction,
            "variables": self.variables,
            "criterion": self.criterion,
            "paired_vs_best": self.paired,
            "best": self.best.to_json() if self.best else None,
            "lambda_star": self.best.setting if self.best else None,
            "runner_up": self.runner_up.to_json() if self.runner_up else None,
            "distinguishable": self.distinguishable,
            "trials": [t.to_json() for t in self.trials],
        }


def dotted(mapping: Any, key: str) -> Any:
    """``mapping["a"]["b"]`` for ``"a.b"``; raises KeyError naming the missing part."""
    node = mapping
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(part)
        node = node[part]
    return node


def _file_data(files: Mapping[str, Any] | None, path: str) -> Mapping[str, Any] | None:
    entry = (files or {}).get(path)
    if not isinstance(entry, Mapping) or "error" in entry:
        return None
    data = entry.get("data")
    return data if isinstance(data, Mapping) else None


#: Reads a JSON file as committed in an experiment: ``(rev, path) -> mapping or None``.
FileReader = Callable[[str, str], Mapping[str, Any] | None]


def git_reader(repo: str | Path = ".") -> FileReader:
    """A :data:`FileReader` over ``git show REV:PATH``: DVC experiments are commits, and the
    metrics files (``cache: false``) are in them whole, intervals included (``dvc exp show``
    keeps only a metrics file's numbers, not its lists)."""

    def read(rev: str, path: str) -> Mapping[str, Any] | None:
        try:
            done = programs.git("show", f"{rev}:{path}", cwd=repo, check=False)
        except programs.ProgramError:  # no git, or no answer in time
            return None
        if done.returncode != 0:
            return None
        try:
            data = json.loads(done.stdout)
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, Mapping) else None

    return read


def _score(cfg: SweepConfig, params: Mapping[str, Any], metrics: Mapping[str, Any] | None,
           rev: str = "", read_file: FileReader | None = None,
           ) -> tuple[str | None, str | None, float | None, tuple[float, float] | None, str | None]:
    """``(student, method, value, ci, problem)`` of one experiment."""
    matrix = params.get("matrix") or {}
    student = cfg.student or next(iter(matrix.get("students") or []), None)
    methods = matrix.get("methods") or []
    method = cfg.method or (methods[0] if len(methods) == 1 else None)
    if student is None:
        return None, None, None, None, "no student (set sweep.student)"
    if method is None:
        return student, None, None, None, (
            f"{len(methods)} methods trained: set sweep.method to the one that selects"
        )
    path = f"reports/eval/{student}.json"
    report = (read_file(rev, path) if read_file is not None and rev else None) or _file_data(metrics, path)
    if report is None:
        return student, method, None, None, f"no reports/eval/{student}.json in its metrics"
    try:
        raw = dotted(report, f"methods.{method}.{cfg.metric}")
    except KeyError:
        return student, method, None, None, f"methods.{method}.{cfg.metric} not in reports/eval/{student}.json"
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return student, method, None, None, f"methods.{method}.{cfg.metric} = {raw!r} is not a number"
    ci = None
    try:
        low, high = dotted(report, f"methods.{method}.{cfg.metric}_ci")
        ci = (float(low), float(high))
    except (KeyError, TypeError, ValueError):
        pass
    return student, method, float(raw), ci, None


def read_trials(
    show: Sequence[Mapping[str, Any]], cfg: SweepConfig, read_file: FileReader | None = None,
    read_pairs: paired.PairReader | None = None,
) -> list[Trial]:
    """The sweep's experiments in ``dvc exp show --json`` output, in grid order.

    ``read_file`` (e.g. :func:`git_reader`) reads each experiment's eval report whole from its
    commit; without it (or where it finds nothing) the numbers ``dvc exp show`` lists are used,
    which hold no intervals. ``read_pairs`` (e.g. :func:`paired.dvc_reader`) reads each scored
    experiment's per-pair held-out records, for the paired test.

    Raises:
        SweepError: when ``show`` holds none of them.
    """
    pattern = re.compile(rf"^{re.escape(cfg.name)}-(\d+)$")
    trials: list[Trial] = []
    for baseline in show:
        for group in baseline.get("experiments") or []:
            state = str(((group.get("executor") or {}).get("state")) or "")
            for rev in group.get("revs") or []:
                match = pattern.match(str(rev.get("name") or ""))
                if not match:
                    continue
                data = rev.get("data") or {}
                params = _file_data(data.get("params"), "params.yaml") or {}
                setting = {}
                for key in cfg.variables:
                    try:
                        setting[key] = dotted(params, key)
                    except KeyError:
                        setting[key] = None
                problem = None
                if rev.get("error"):
                    problem = f"DVC: {rev['error'].get('msg') or rev['error']}"
                if state and state != "success":
                    problem = f"DVC state {state}"
                scored = (_score(cfg, params, data.get("metrics"), str(rev.get("rev") or ""), read_file)
                          if problem is None else (None,) * 4 + (problem,))
                student, method, value, ci, problem = scored
                commit = str(rev.get("rev") or "")
                pairs = None
                if read_pairs is not None and value is not None and student and method and commit:
                    records = read_pairs(commit, paired.per_pair_path(student, method))
                    pairs = paired.values(records, cfg.metric) if records else None
                trials.append(Trial(
                    name=str(rev["name"]), rev=commit, index=int(match.group(1)),
                    state=state, setting=setting, student=student, method=method, value=value,
                    ci=ci, problem=problem, pairs=pairs,
                ))
    if not trials:
        raise SweepError(
            f"sweep {cfg.name!r}: no experiment named {cfg.name}-<n> in `dvc exp show` "
            "(run `sp2dpo sweep run` first, or check sweep.name)"
        )
    return sorted(trials, key=lambda t: t.index)


def select(trials: Sequence[Trial], cfg: SweepConfig) -> Selection:
    """lambda*: the best scored trial in ``cfg.direction`` (ties: earlier in the grid), with the
    paired difference to every other scored trial that has per-pair values, and whether the best
    is distinguishable from the runner-up (module docstring)."""
    sign = 1.0 if cfg.direction == "maximize" else -1.0
    ranked = sorted((t for t in trials if t.value is not None), key=lambda t: (-sign * t.value, t.index))
    best = ranked[0] if ranked else None
    runner = ranked[1] if len(ranked) > 1 else None
    compared: dict[str, dict[str, Any]] = {}
    if best is not None and best.pairs:
        for t in ranked[1:]:
            found = paired.paired_interval(best.pairs, t.pairs) if t.pairs else None
            if found is not None:
                compared[t.name] = found
    distinguishable = None
    criterion = MARGINAL_CRITERION
    if runner is not None and runner.name in compared:
        low, high = compared[runner.name]["ci"]
        distinguishable = low > 0 if cfg.direction == "maximize" else high < 0
        criterion = PAIRED_CRITERION
    elif best is not None and runner is not None and best.ci and runner.ci:
        if cfg.direction == "maximize":
            distinguishable = best.ci[0] > runner.ci[1]
        else:
            distinguishable = best.ci[1] < runner.ci[0]
    return Selection(
        sweep=cfg.name, metric=cfg.metric, direction=cfg.direction, variables=list(cfg.variables),
        trials=list(trials), best=best, runner_up=runner, distinguishable=distinguishable,
        criterion=criterion, paired=compared,
    )


def _fmt(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else f"{value:.4f}"


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def markdown(sel: Selection) -> str:
    """The selection report as markdown."""
    lines = [f"# Sweep `{sel.sweep}`: selection by `{sel.metric}` ({sel.direction})", ""]
    if sel.best is None:
        lines += ["No experiment has a score: nothing selected.", ""]
    else:
        setting = ", ".join(f"`{k}` = `{_show(v)}`" for k, v in sel.best.setting.items())
        lines += [f"**lambda\\* = {setting}** (experiment `{sel.best.name}`): "
                  f"{sel.metric} = {_fmt(sel.best.value, sel.best.ci)}.", ""]
        if sel.runner_up is not None:
            verdict = {True: "distinguishable", False: "not distinguishable", None: "unknown (no intervals)"}
            found = sel.paired.get(sel.runner_up.name)
            if found is not None:
                why = (f"paired over the {found['n']} held-out pairs both scored: best - runner-up = "
                       f"{found['diff']:.4f} [{found['ci'][0]:.4f}, {found['ci'][1]:.4f}] "
                       f"({found['rounds']} bootstrap rounds, seed {found['seed']}); distinguishable "
                       "when that interval excludes 0; not distinguishable does not prove equality")
            else:
                why = ("no per-pair data, so the marginal criterion: their 95% intervals do not "
                       "overlap; overlapping intervals do not prove equality")
            lines += [
                f"Runner-up `{sel.runner_up.name}`: {_fmt(sel.runner_up.value, sel.runner_up.ci)}. "
                f"Best vs runner-up: **{verdict[sel.distinguishable]}** ({why}).",
                "",
            ]
    header = ["experiment", *[f"`{k}`" for k in sel.variables], "method", sel.metric, "95% CI",
              "best - this, paired [95% CI]", "note"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in sel.trials:
        mark = " (lambda*)" if sel.best is not None and t.name == sel.best.name else ""
        ci = f"[{t.ci[0]:.4f}, {t.ci[1]:.4f}]" if t.ci else "-"
        value = f"{t.value:.4f}" if t.value is not None else "-"
        found = sel.paired.get(t.name)
        diff = f"{found['diff']:.4f} [{found['ci'][0]:.4f}, {found['ci'][1]:.4f}]" if found else "-"
        cells = [f"`{t.name}`{mark}", *[f"`{_show(t.setting.get(k))}`" for k in sel.variables],
                 t.method or "-", value, ci, diff, t.problem or ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Apply lambda* to the workspace: `sp2dpo sweep select --apply` "
              "(runs `dvc exp apply` on the best experiment).", ""]
    return "\n".join(lines)


def _plot(sel: Selection, key: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    scored = [t for t in sel.trials if t.value is not None]
    values = [t.setting.get(key) for t in scored]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    labels = sorted({_show(v) for v in values}, key=lambda s: [_show(v) for v in values].index(s))
    xs = [float(v) for v in values] if numeric else [labels.index(_show(v)) for v in values]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for t, x in zip(scored, xs, strict=True):
        low, high = t.ci if t.ci else (t.value, t.value)
        best = sel.best is not None and t.name == sel.best.name
        ax.errorbar([x], [t.value], yerr=[[t.value - low], [high - t.value]], fmt="o",
                    color="tab:red" if best else "tab:blue", capsize=4)
    if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 20:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
    ax.set_xlabel(key)
    ax.set_ylabel(f"{sel.metric}\n(95% CI)", fontsize=9)
    ax.set_title(f"sweep {sel.sweep}: {sel.metric} over {key}\n(red: lambda*)", fontsize=10)
    artifacts.save_figure(fig, path, left=0.15, bottom=0.24, top=0.86)


def write_report(sel: Selection, out: str | Path) -> list[Path]:
    """Write ``selection.json``, ``selection.md`` and one ``<key>.png`` per swept variable."""
    out = Path(out)
    written = [out / "selection.json", out / "selection.md"]
    artifacts.write_json(sel.to_json(), written[0])
    artifacts.write_text(markdown(sel), written[1])
    for key in sel.variables:
        path = out / f"{key}.png"
        _plot(sel, key, path)
        written.append(path)
    return written
