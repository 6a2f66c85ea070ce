"""Auditing beta artifacts: what changed in the enforcement schedule between two versions, and why.

A side of a diff is a beta CSV path or ``REV:path``, where REV is anything git resolves to a
commit (a hash, a branch, a tag, ``HEAD~1``, a DVC experiment's ref). At a revision the file is
read from git when git tracks it, otherwise through DVC (``dvc.api.open``), which finds the
version that revision's ``dvc.lock`` / ``.dvc`` files name in the local cache or a remote, so
two commits or two experiments compare without a checkout. The process variables that produced
each side are read from that revision's ``dvc.lock`` (the params the producing stage actually
ran with), else its ``params.yaml``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from sp2dpo.core import programs
from sp2dpo.core.beta import JMAMP_COLUMN, panel_of, parse_beta_table
from sp2dpo.core.config import BetaConfig, flatten
from sp2dpo.core.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_COLUMN = JMAMP_COLUMN
DEFAULT_THRESHOLD = 0.05
#: Stage whose params describe a beta artifact in ``dvc.lock``.
PRODUCER_STAGE = "aggregate"


class AuditError(UserError, ValueError):
    """A diff that cannot be made; the message says which side and why."""


@dataclasses.dataclass(frozen=True)
class Side:
    """One version of a beta artifact."""

    label: str  # as given on the command line
    frame: pd.DataFrame
    params: dict[str, Any]  # flattened process variables ({} when unknown)
    params_source: str  # where the params came from


# --------------------------------------------------------------------------------------------
# resolving a side
# --------------------------------------------------------------------------------------------


#: Timeout (s) of one git command (rev-parse, show of one file).
GIT_TIMEOUT = 120


def _git(repo: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """``git ARGS`` in ``repo`` (:func:`sp2dpo.core.programs.git`), its output as bytes; an
    :class:`AuditError` when git cannot run there (no such folder, no git) or does not end."""
    return programs.git(*args, cwd=repo, env=env, timeout=GIT_TIMEOUT, check=False, text=False, error=AuditError)


def git_root(start: Path, env: Mapping[str, str] | None = None) -> Path:
    """The top folder of the git repository holding ``start``."""
    proc = _git(start, "rev-parse", "--show-toplevel", env=env)
    if proc.returncode != 0:
        raise AuditError(f"{start}: not a git repository")
    return Path(proc.stdout.decode().strip())


def resolve_commit(repo: Path, rev: str, env: Mapping[str, str] | None = None) -> str:
    """The full hash of the commit ``rev`` names in ``repo``."""
    proc = _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", env=env)
    if proc.returncode != 0:
        raise AuditError(f"revision {rev!r} does not exist in {repo}")
    return proc.stdout.decode().strip()


def git_show(repo: Path, commit: str, path: str, env: Mapping[str, str] | None = None) -> bytes | None:
    """``path``'s bytes at ``commit`` (None: git does not track it there)."""
    proc = _git(repo, "show", f"{commit}:{path}", env=env)
    return proc.stdout if proc.returncode == 0 else None


def _dvc_read(repo: Path, commit: str, path: str) -> bytes | None:
    """The bytes DVC tracks at ``path`` in revision ``commit``; None when DVC does not track it."""
    from dvc.api import DVCFileSystem

    try:
        fs = DVCFileSystem(str(repo), rev=commit)
        if not fs.exists(path) or not fs.isfile(path):
            return None
    except Exception as exc:  # not a DVC repository at that revision, or an unreadable lock file
        log.debug("dvc cannot list %s at %s: %s", path, commit, exc)
        return None
    try:
        return fs.read_bytes(path)
    except Exception:
        raise AuditError(
            f"{path} at {commit[:12]} is tracked by DVC but its data is neither in the local "
            "cache nor in a remote (`dvc push` from where it was produced, or `dvc fetch`)"
        ) from None


def _params_at(
    repo: Path, commit: str | None, path: str, content: bytes
) -> tuple[dict[str, Any], str]:
    """The params the producing stage ran with, from ``dvc.lock`` at ``commit`` (None: the
    workspace), when that lock records ``path`` as the stage's output with exactly these bytes
    (the md5 DVC records); otherwise no provenance: ``({}, "unknown ...")``."""
    where = commit[:12] if commit else "workspace"
    lock = git_show(repo, commit, "dvc.lock") if commit else (
        (repo / "dvc.lock").read_bytes() if (repo / "dvc.lock").exists() else None
    )
    if not lock:
        return {}, f"unknown (no dvc.lock at {where})"
    stage = (yaml.safe_load(lock) or {}).get("stages", {}).get(PRODUCER_STAGE, {})
    outs = {o.get("path"): o.get("md5") for o in stage.get("outs", []) if isinstance(o, dict)}
    if path not in outs:
        return {}, f"unknown (the {PRODUCER_STAGE} stage at {where} did not write {path})"
    if outs[path] != hashlib.md5(content).hexdigest():
        return {}, f"unknown (not the {path} that dvc.lock at {where} records)"
    merged: dict[str, Any] = {}
    for values in (stage.get("params") or {}).values():
        merged.update(flatten(values))
    return merged, f"{where}:dvc.lock ({PRODUCER_STAGE})"


#: (beta_min, beta_max): the envelope a side's beta values must lie in.
Envelope = tuple[float, float]


def envelope_of(params: Mapping[str, Any], override: Envelope | None = None) -> tuple[Envelope, str]:
    """The envelope a side is checked against, and where it comes from: ``override`` (the
    ``--beta-min``/``--beta-max`` flags), else the producing stage's recorded ``beta.min`` and
    ``beta.max``, else the defaults (the paper's [0.03, 0.3])."""
    if override is not None:
        return override, "--beta-min/--beta-max"
    if "beta.min" in params and "beta.max" in params:
        return (float(params["beta.min"]), float(params["beta.max"])), "the recorded params"
    default = BetaConfig()
    return (default.min, default.max), "the default envelope"


def _parse_csv(content: bytes, label: str, envelope: Envelope | None = None,
               params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The side's table, checked as strictly as the aggregate stage writes it (field counts,
    cell types, schema, finite values inside the envelope, one row per pair)."""
    (lo, hi), source = envelope_of(params or {}, envelope)
    try:
        return parse_beta_table(content, label, lo, hi)
    except (UserError, ValueError) as exc:
        # a value outside the envelope fails the schema's in_range check: say which envelope
        raise AuditError(f"{exc} [envelope [{lo}, {hi}] from {source}]"
                         if "in_range" in str(exc) else str(exc)) from None


def side_from_bytes(content: bytes, label: str) -> Side:
    """A side from a beta artifact's bytes, without provenance (``sp2dpo verify`` reads both
    versions itself: from the DVC cache and from a re-run)."""
    return Side(label, _parse_csv(content, label), {}, "unknown (read from bytes)")


def load_side(spec: str, cwd: str | Path = ".", *, envelope: Envelope | None = None) -> Side:
    """Read one side of a diff: ``path`` or ``REV:path``, checked as strictly as the pipeline
    writes it (:func:`sp2dpo.core.beta.parse_beta_table`) against ``envelope``, else the
    envelope its producing stage recorded, else the default one.

    Raises:
        AuditError: the revision does not exist, the path is not tracked at that revision (by git
            or DVC), or the file is not a well-formed beta artifact.
    """
    cwd = Path(cwd)
    local = cwd / spec
    if local.exists() or ":" not in spec:
        if local.is_dir():
            raise AuditError(f"{spec}: is a folder; give a beta artifact CSV (or REV:path)")
        if not local.exists():
            raise AuditError(f"{spec}: no such file")
        content = local.read_bytes()
        try:
            repo = git_root(local.parent.resolve())
            rel = local.resolve().relative_to(repo).as_posix()
            params, source = _params_at(repo, None, rel, content)
        except (AuditError, ValueError):
            params, source = {}, "unknown (not inside a git repository)"
        return Side(spec, _parse_csv(content, spec, envelope, params), params, source)
    rev, path = spec.split(":", 1)
    repo = git_root(cwd.resolve())
    commit = resolve_commit(repo, rev)
    rel = str((cwd.resolve() / path).relative_to(repo)) if not Path(path).is_absolute() else path
    content = git_show(repo, commit, rel)
    if content is None:
        content = _dvc_read(repo, commit, rel)
    if content is None:
        raise AuditError(
            f"{rel} is not tracked at revision {rev!r} ({commit[:12]}): git has no such file "
            "and no dvc.lock / .dvc file of that revision names it"
        )
    params, source = _params_at(repo, commit, Path(rel).as_posix(), content)
    return Side(spec, _parse_csv(content, spec, envelope, params), params, source)


def load_pairs(path: str | Path) -> pd.DataFrame:
    """The pairs table behind ``--pairs`` (``prompt_id``, ``prompt``), for prompt snippets.

    Raises:
        AuditError: not a table, or without those columns.
    """
    from sp2dpo.core.artifacts import read_table
    from sp2dpo.core.errors import InputPathError

    try:
        frame = read_table(path)
    except (FileNotFoundError, InputPathError) as exc:  # missing, or a folder
        raise AuditError(f"--pairs {exc}") from None
    except Exception as exc:  # pyarrow, JSON and CSV parsers each raise their own kind
        raise AuditError(f"--pairs {path}: not a readable table ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("prompt_id", "prompt") if c not in frame.columns]
    if missing:
        raise AuditError(f"--pairs {path}: not a pairs table (no {' or '.join(missing)} column)")
    return frame[["prompt_id", "prompt"]].astype({"prompt_id": str})


# --------------------------------------------------------------------------------------------
# the diff
# --------------------------------------------------------------------------------------------


def panel(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The panel of an artifact: its teacher ids and prompt variants, from its columns."""
    return panel_of(list(frame.columns))


def default_category_column(frame: pd.DataFrame) -> str | None:
    """The first ``category_*_ens`` column in column order (the pinned default)."""
    return next((c for c in frame.columns if c.startswith("category_") and c.endswith("_ens")), None)


def _need(side: Side, column: str, role: str) -> None:
    if column not in side.frame.columns:
        options = [c for c in side.frame.columns if c.startswith(role.split("_")[0] + "_")]
        raise AuditError(
            f"{side.label}: no column {column!r}; {role} columns there: {', '.join(options) or 'none'}"
        )


def diff(
    old: Side,
    new: Side,
    *,
    column: str = DEFAULT_COLUMN,
    threshold: float = DEFAULT_THRESHOLD,
    category_column: str | None = None,
    allow_panel_change: bool = False,
    pairs: pd.DataFrame | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """Compare two beta artifacts.

    Args:
        old, new: the two sides.
        column: the beta column compared over common pairs.
        threshold: a pair counts as changed when ``|new - old| > threshold``.
        category_column: category column for flips and per-category shifts (default: the first
            ``category_*_ens`` column of OLD).
        allow_panel_change: compare artifacts from different teacher panels (otherwise an error).
        pairs: optional pairs table (``prompt_id, prompt``) for prompt snippets of top changes.
        top: how many top changed pairs to list.

    Returns:
        A flat-ish dict (JSON-serialisable) with the pinned keys ``n_old, n_new, added, removed,
        common, mean_abs_change, max_abs_change, n_changed, category_flips`` and more.
    """
    if not (np.isfinite(threshold) and threshold >= 0):
        raise AuditError(f"--threshold must be a finite number >= 0, got {threshold}")
    if not column.startswith("beta_"):
        raise AuditError(f"--column {column}: not a beta column (the compared column is a beta_* column)")
    panel_old, panel_new = panel(old.frame), panel(new.frame)
    if panel_old != panel_new and not allow_panel_change:

        def shown(p: tuple[list[str], list[str]]) -> str:
            return f"{', '.join(p[0]) or 'no teachers'} x {', '.join(p[1]) or 'no variants'}"

        raise AuditError(
            f"the artifacts come from different panels (old: {shown(panel_old)}; new: "
            f"{shown(panel_new)}); per-teacher and per-variant columns do not correspond. "
            "Pass --allow-panel-change to compare a cross-panel column such as "
            f"{DEFAULT_COLUMN}"
        )
    _need(old, column, "beta_")
    _need(new, column, "beta_")
    category_column = category_column or default_category_column(old.frame)
    if category_column is not None:
        _need(old, category_column, "category_")
        _need(new, category_column, "category_")

    ids_old, ids_new = set(old.frame["prompt_id"]), set(new.frame["prompt_id"])
    common = sorted(ids_old & ids_new)
    o = old.frame.set_index("prompt_id").loc[common]
    n = new.frame.set_index("prompt_id").loc[common]
    change = (n[column] - o[column]).astype(float)
    abs_change = change.abs()
    changed = abs_change > threshold

    result: dict[str, Any] = {
        "old": old.label,
        "new": new.label,
        "column": column,
        "threshold": threshold,
        "n_old": len(ids_old),
        "n_new": len(ids_new),
        "added": len(ids_new - ids_old),
        "removed": len(ids_old - ids_new),
        "common": len(common),
        "mean_abs_change": _num(abs_change.mean()) if common else 0.0,
        "max_abs_change": _num(abs_change.max()) if common else 0.0,
        "mean_change": _num(change.mean()) if common else 0.0,
        "abs_change_quantiles": {
            f"p{q}": _num(abs_change.quantile(q / 100)) if common else 0.0 for q in (50, 90, 99)
        },
        "n_changed": int(changed.sum()),
        "panel_old": panel_old[0],
        "panel_new": panel_new[0],
        "variants_old": panel_old[1],
        "variants_new": panel_new[1],
        "category_column": category_column,
    }
    flips: dict[str, int] = {}
    matrix: dict[str, dict[str, int]] = {}
    shift: dict[str, dict[str, Any]] = {}
    if category_column is not None and common:
        cat_o, cat_n = o[category_column].astype(str), n[category_column].astype(str)
        for (a, b), count in pd.crosstab(cat_o, cat_n).stack().items():
            if count:
                matrix.setdefault(a, {})[b] = int(count)
                if a != b:
                    flips[f"{a}->{b}"] = int(count)
        for cat, values in change.groupby(cat_o, sort=True):
            shift[cat] = {"n": len(values), "mean_change": _num(values.mean())}
    result["category_flips"] = dict(sorted(flips.items()))
    result["category_matrix"] = matrix
    result["mean_shift_by_category"] = shift

    order = abs_change.sort_values(ascending=False, kind="mergesort").head(top)
    prompts = pairs.set_index("prompt_id")["prompt"] if pairs is not None else None
    result["top_changes"] = [
        {
            "prompt_id": pid,
            "old": _num(o.at[pid, column]),
            "new": _num(n.at[pid, column]),
            "change": _num(change.at[pid]),
            **({"category_old": o.at[pid, category_column], "category_new": n.at[pid, category_column]}
               if category_column else {}),
            **({"prompt": _snippet(prompts.get(pid))} if prompts is not None else {}),
        }
        for pid in order.index
        if order.at[pid] > 0
    ]
    result["params_old_source"] = old.params_source
    result["params_new_source"] = new.params_source
    result["params_diff"] = params_diff(old.params, new.params)
    return result


def params_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Process variables that differ: ``{key: {"old": ..., "new": ...}}`` (missing = None)."""
    keys = sorted(set(old) | set(new))
    return {k: {"old": old.get(k), "new": new.get(k)} for k in keys if old.get(k) != new.get(k)}


def _num(value: Any) -> float | None:
    """A plain float rounded to 12 decimals (stable JSON); None for a missing value."""
    return None if value is None or pd.isna(value) else float(round(float(value), 12))


def _snippet(text: Any, width: int = 80) -> str | None:
    if not isinstance(text, str):
        return None
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------


def render(result: Mapping[str, Any], fmt: str = "text") -> str:
    """The diff as ``json``, ``markdown`` or plain ``text``."""
    if fmt == "json":
        return json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False, default=_json_default)
    md = fmt == "markdown"
    lines = []
    h = (lambda s: f"## {s}") if md else (lambda s: f"{s}\n{'-' * len(s)}")
    lines.append(f"# beta artifact diff: {result['old']} -> {result['new']}" if md else
                 f"beta artifact diff: {result['old']} -> {result['new']}")
    lines += ["", h("pairs"), _table(md, ["old", "new", "added", "removed", "common"],
                                     [[result["n_old"], result["n_new"], result["added"], result["removed"], result["common"]]])]
    q = result["abs_change_quantiles"]
    lines += ["", h(f"change of {result['column']} (threshold {result['threshold']})"),
              _table(md, ["mean |change|", "p50", "p90", "p99", "max |change|", "mean change", "n changed"],
                     [[_fmt(result["mean_abs_change"]), _fmt(q["p50"]), _fmt(q["p90"]), _fmt(q["p99"]),
                       _fmt(result["max_abs_change"]), _fmt(result["mean_change"]), result["n_changed"]]])]
    if result["panel_old"] != result["panel_new"]:
        lines += ["", f"teacher panel changed: {', '.join(result['panel_old'])} -> {', '.join(result['panel_new'])}"]
    if result["variants_old"] != result["variants_new"]:
        lines += ["", f"prompt variants changed: {', '.join(result['variants_old'])} -> "
                      f"{', '.join(result['variants_new'])}"]
    if result["category_column"]:
        cats = sorted(set(result["category_matrix"]) | {b for row in result["category_matrix"].values() for b in row})
        rows = [[a, *[result["category_matrix"].get(a, {}).get(b, 0) for b in cats]] for a in cats]
        lines += ["", h(f"category flips ({result['category_column']}; rows old, columns new)"),
                  _table(md, ["old \\ new", *cats], rows) if rows else "(no common pairs)"]
        shift = result["mean_shift_by_category"]
        lines += ["", h("mean change by old category"),
                  _table(md, ["category", "n", "mean change"], [[c, v["n"], _fmt(v["mean_change"])] for c, v in shift.items()])]
    if result["top_changes"]:
        head = ["prompt_id", "old", "new", "change"] + (["category"] if result["category_column"] else []) + (
            ["prompt"] if "prompt" in result["top_changes"][0] else [])
        rows = []
        for t in result["top_changes"]:
            row = [t["prompt_id"][:12], _fmt(t["old"]), _fmt(t["new"]), _fmt(t["change"])]
            if result["category_column"]:
                row.append(t["category_old"] if t["category_old"] == t["category_new"] else f"{t['category_old']}->{t['category_new']}")
            if "prompt" in t:
                row.append(t["prompt"] or "")
            rows.append(row)
        lines += ["", h("top changed pairs"), _table(md, head, rows)]
    pd_ = result["params_diff"]
    lines += ["", h(f"process variables ({result['params_old_source']} -> {result['params_new_source']})")]
    lines.append(_table(md, ["key", "old", "new"], [[k, _val(v["old"]), _val(v["new"])] for k, v in pd_.items()])
                 if pd_ else "(no differences)")
    return "\n".join(lines) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.4f}"


def _val(v: Any) -> str:
    return "—" if v is None else json.dumps(v) if not isinstance(v, str) else v


def _table(md: bool, head: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in head]] + [[str(c) for c in r] for r in rows]
    if md:
        out = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells[1:]]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)
