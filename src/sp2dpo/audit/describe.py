"""What differs between two versions of a pipeline output, said in one line, by file type.

``sp2dpo verify`` re-runs a revision's pipeline and compares every output with the md5 its
``dvc.lock`` records. A differing hash alone does not tell an auditor whether a timestamp moved
or the beta schedule did, so for each differing output the describers here read both versions
and name what changed in terms of the file's content:

- a beta artifact (a CSV with ``prompt_id`` and ``beta_*`` columns): the audit diff summary of
  :mod:`sp2dpo.audit.compare` (pairs moved, max |Δβ|, category flips) and the columns changed;
- other tables (``.csv``, ``.parquet``): rows added, removed and changed, matched on a key
  (``call_key``; else ``prompt_id`` with ``annotator`` and ``variant`` when present; else the
  position), and the columns changed (with the max |Δ| of numeric ones), added and removed;
- JSON: the changed leaves as dotted paths with ``old -> new``;
- JSON lines (call store segments, IFEval results): records added, removed and changed, matched on
  their ``key`` field when every record has a unique one, and the fields that changed;
- ``.safetensors``: tensors added, removed, reshaped, and the max |Δ| over the common ones (how
  adapters trained on different hardware are compared: bitwise equality cannot hold there);
- directories: files added, removed and changed, each changed file described as above;
- anything else: the byte sizes (``.md``/``.txt``: the number of lines changed).

Every describer takes the two versions' bytes and never raises on unreadable content: a file that
does not parse as its suffix says falls back to the byte-level description.
"""

from __future__ import annotations

import difflib
import io
import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo.audit import compare

#: How many changed keys, columns, fields or files one line names before "+N more".
LIMIT = 5
#: Row keys of tables, in order of preference (the first one present in both versions wins).
CALL_KEY = "call_key"
PAIR_KEY = "prompt_id"
PAIR_KEY_EXTRAS = ("annotator", "variant")
#: Field that keys the records of a JSON-lines file (the call store's cache key).
RECORD_KEY = "key"

Reader = Callable[[str], bytes | None]


def describe_file(name: str, old: bytes, new: bytes, *, limit: int = LIMIT) -> str:
    """One line saying how ``new`` differs from ``old``, chosen by the suffix of ``name``."""
    if old == new:
        return "same bytes"
    suffix = name.lower().rsplit(".", 1)[-1] if "." in name else ""
    describer = {
        "csv": _describe_csv,
        "parquet": describe_table,
        "json": describe_json,
        "jsonl": describe_jsonl,
        "safetensors": describe_safetensors,
        "md": describe_text,
        "txt": describe_text,
    }.get(suffix)
    if describer is not None:
        try:
            return describer(name, old, new, limit=limit)
        except Exception as exc:  # unreadable as its suffix says: the bytes still compare
            return f"{describe_bytes(old, new)}; not readable as .{suffix}: {_short(str(exc), 60)}"
    return describe_bytes(old, new)


def describe_bytes(old: bytes, new: bytes) -> str:
    return f"bytes differ ({len(old)} -> {len(new)} bytes)"


def describe_text(name: str, old: bytes, new: bytes, *, limit: int = LIMIT) -> str:
    """The number of lines changed (a replaced line counts once)."""
    a = old.decode("utf-8", errors="replace").splitlines()
    b = new.decode("utf-8", errors="replace").splitlines()
    changed = sum(
        max(i2 - i1, j2 - j1)
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
        if tag != "equal"
    )
    if not changed:
        return f"same lines; {describe_bytes(old, new)} (line endings or trailing newline)"
    return f"{changed} line{'s' * (changed != 1)} changed ({len(a)} -> {len(b)} lines)"


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def _read_table(name: str, data: bytes) -> pd.DataFrame:
    if name.lower().endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(data))
    return pd.read_csv(io.BytesIO(data))


def is_beta_artifact(columns: Sequence[str]) -> bool:
    """A beta artifact (or schedule): a ``prompt_id`` column and at least one ``beta_*`` one."""
    return PAIR_KEY in columns and any(str(c).startswith("beta_") for c in columns)


def _describe_csv(name: str, old: bytes, new: bytes, *, limit: int = LIMIT) -> str:
    header_old = list(pd.read_csv(io.BytesIO(old), nrows=0).columns)
    header_new = list(pd.read_csv(io.BytesIO(new), nrows=0).columns)
    if is_beta_artifact(header_old) and is_beta_artifact(header_new):
        try:
            return describe_beta(name, old, new, limit=limit)
        except compare.AuditError:
            pass  # not a well-formed artifact (duplicate ids, bad cells): compare it as a table
    return describe_table(name, old, new, limit=limit)


def describe_beta(name: str, old: bytes, new: bytes, *, limit: int = LIMIT) -> str:
    """The audit diff summary of two beta artifacts, then the columns that changed."""
    a = compare.side_from_bytes(old, f"REV:{name}")
    b = compare.side_from_bytes(new, name)
    common = [c for c in a.frame.columns if c in b.frame.columns and str(c).startswith("beta_")]
    column = compare.DEFAULT_COLUMN if compare.DEFAULT_COLUMN in common else (common or [None])[0]
    if column is None:
        raise compare.AuditError(f"{name}: no beta column in both versions")
    result = compare.diff(a, b, column=column, allow_panel_change=True, top=0)
    parts = [
        f"beta artifact: pairs {result['n_old']} -> {result['n_new']} "
        f"(+{result['added']} -{result['removed']}), {result['n_changed']} moved by more than "
        f"{result['threshold']}, max |Δβ| {_num(result['max_abs_change'])} and mean |Δβ| "
        f"{_num(result['mean_abs_change'])} ({column})"
    ]
    flips = sum(result["category_flips"].values())
    if flips:
        parts.append(f"{flips} category flip{'s' * (flips != 1)} ({result['category_column']})")
    if result["panel_old"] != result["panel_new"]:
        parts.append(f"teachers {','.join(result['panel_old'])} -> {','.join(result['panel_new'])}")
    table = table_diff(_read_table(name, old), _read_table(name, new))
    columns = _columns_part(table, limit)
    if columns:
        parts.append(columns)
    return "; ".join(parts)


def table_key(old: pd.DataFrame, new: pd.DataFrame) -> list[str]:
    """The columns that identify a row in both tables (``[]``: match rows by position)."""
    both = [c for c in old.columns if c in new.columns]
    if CALL_KEY in both:
        key = [CALL_KEY]
    elif PAIR_KEY in both:
        key = [PAIR_KEY, *(c for c in PAIR_KEY_EXTRAS if c in both)]
    else:
        return []
    if old.duplicated(key).any() or new.duplicated(key).any():
        return []
    return key


def table_diff(old: pd.DataFrame, new: pd.DataFrame) -> dict[str, Any]:
    """Rows added/removed/changed (on :func:`table_key`) and columns changed/added/removed.

    ``columns_changed`` maps each common column with a changed cell to the max |Δ| over common
    rows (None for a non-numeric column).
    """
    key = table_key(old, new)
    o = old.set_index(key) if key else old.reset_index(drop=True)
    n = new.set_index(key) if key else new.reset_index(drop=True)
    added = n.index.difference(o.index, sort=False)
    removed = o.index.difference(n.index, sort=False)
    common = o.index.intersection(n.index, sort=False)
    columns = [c for c in o.columns if c in n.columns]
    changed_rows = np.zeros(len(common), dtype=bool)
    columns_changed: dict[str, float | None] = {}
    for column in columns:
        a, b = o.loc[common, column], n.loc[common, column]
        mask, max_delta = _cells_differ(a, b)
        if mask.any():
            changed_rows |= mask
            columns_changed[str(column)] = max_delta
    dtypes = {
        str(c): f"{o[c].dtype} -> {n[c].dtype}" for c in columns if o[c].dtype != n[c].dtype
    }
    reordered = bool(
        key and not len(added) and not len(removed) and list(o.index) != list(n.index)
    )
    return {
        "key": key,
        "rows_old": len(o),
        "rows_new": len(n),
        "rows_added": len(added),
        "rows_removed": len(removed),
        "rows_changed": int(changed_rows.sum()),
        "columns_changed": columns_changed,
        "columns_added": [str(c) for c in n.columns if c not in o.columns],
        "columns_removed": [str(c) for c in o.columns if c not in n.columns],
        "dtypes_changed": dtypes,
        "reordered": reordered,
    }


def describe_table(name: str, old: bytes, new: bytes, *, limit: int = LIMIT) -> str:
    d = table_diff(_read_table(name, old), _read_table(name, new))
    by = f"by {'+'.join(d['key'])}" if d["key"] else "by position"
    parts = [
        f"rows {d['rows_old']} -> {d['rows_new']} ({by}): {d['rows_changed']} changed, "
        f"{d['rows_added']} added, {d['rows_removed']} removed"
    ]
    columns = _columns_part(d, limit)
    if columns:
        parts.append(columns)
    if d["dtypes_changed"]:
        parts.append("dtypes changed: " + _listed([f"{c} ({t})" for c, t in d["dtypes_changed"].items()], limit))
    if d["reordered"]:
        parts.append("rows reordered")
    if len(parts) == 1 and not (d["rows_changed"] or d["rows_added"] or d["rows_removed"]):
        parts.append(f"same values; {describe_bytes(old, new)} (encoding or metadata)")
    return "; ".join(parts)


def _columns_part(d: Mapping[str, Any], limit: int) -> str:
    parts = []
    if d["columns_changed"]:
        named = [c if delta is None else f"{c} (max |Δ| {_num(delta)})" for c, delta in d["columns_changed"].items()]
        parts.append("columns changed: " + _listed(named, limit))
    if d["columns_added"]:
        parts.append("columns added: " + _listed(d["columns_added"], limit))
    if d["columns_removed"]:
        parts.append("columns removed: " + _listed(d["columns_removed"], limit))
    return "; ".join(parts)


def _cells_differ(a: pd.Series, b: pd.Series) -> tuple[np.ndarray, float | None]:
    """Which cells of two aligned columns differ (NaN equals NaN), and the max |Δ| when numeric."""
    numeric = pd.api.types.is_numeric_dtype(a.dtype) and pd.api.types.is_numeric_dtype(b.dtype)
    if numeric and not (pd.api.types.is_bool_dtype(a.dtype) or pd.api.types.is_bool_dtype(b.dtype)):
        x, y = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
        mask = ~((x == y) | (np.isnan(x) & np.isnan(y)))
        deltas = np.abs(x - y)[mask]
        finite = deltas[np.isfinite(deltas)]
        return mask, float(finite.max()) if len(finite) else (math.inf if mask.any() else None)
    mask = np.array([not _same_cell(x, y) for x, y in zip(a, b, strict=True)], dtype=bool)
    return mask, None


def _same_cell(x: Any, y: Any) -> bool:
    if _is_missing(x) and _is_missing(y):
        return True
    return _canonical(x) == _canonical(y)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _canonical(value: Any) -> str:
    """A cell as exact, comparable text (lists, arrays and dicts included)."""
    return json.dumps(_plain(value), sort_keys=True, ensure_ascii=False, default=repr)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------------------------
# JSON and JSON lines
# --------------------------------------------------------------------------------------------


def leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Every scalar of a JSON value by dotted path (``a.b``, list items as ``a[0]``); an empty
    dict or list is a leaf itself."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj:
        out = {}
        for i, v in enumerate(obj):
            out.update(leaves(v, f"{prefix}[{i}]"))
        return out
    return {prefix or "(root)": obj}


_ABSENT = object()


def leaf_changes(old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """``(path, old value, new value)`` for every changed leaf (an absent side is ``_ABSENT``),
    in the order of the old document, then the new one's additions."""
    a, b = leaves(old), leaves(new)
    changes = [
        (path, value, b.get(path, _ABSENT))
        for path, value in a.items()
        if path not in b or _json_text(value) != _json_text(b[path])
    ]
    return changes + [(path, _ABSENT, v) for path, v in b.items() if path not in a]


def json_changes(old: Any, new: Any) -> list[str]:
    """``path: old -> new``, ``path added (value)`` and ``path removed`` for every changed leaf."""
    out = []
    for path, a, b in leaf_changes(old, new):
        if a is _ABSENT:
            out.append(f"{path} added ({_short(_json_text(b))})")
        elif b is _ABSENT:
            out.append(f"{path} removed")
        else:
            out.append(f"{path}: {_short(_json_text(a))} -> {_short(_json_text(b))}")
    return out


def describe_json(name: str, old: bytes, new: bytes, *, limit: int = LIMIT) -> str:
    changes = json_changes(json.loads(old), json.loads(new))
    if not changes:
        return f"same values; {describe_bytes(old, new)} (key order or formatting)"
    return f"{len(changes)} key{'s' * (len(changes) != 1)} changed: " + _listed(changes, limit)


def _records(data: bytes) -> list[Any]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def describe_jsonl(name: str, old: bytes, new: bytes, *, limit: int = LIMIT) -> str:
    """Records added/removed/changed, matched on their ``key`` (else by position), and the
    fields (dotted paths) changed in any record."""
    a, b = _records(old), _records(new)
    keyed = all(
        all(isinstance(r, dict) and RECORD_KEY in r for r in side)
        and len({_json_text(r[RECORD_KEY]) for r in side}) == len(side)
        for side in (a, b)
    )
    if keyed:
        ma = {_json_text(r[RECORD_KEY]): r for r in a}
        mb = {_json_text(r[RECORD_KEY]): r for r in b}
    else:
        ma, mb = dict(enumerate(a)), dict(enumerate(b))
    fields: dict[str, None] = {}
    changed = 0
    for k, record in ma.items():
        if k in mb and _json_text(record) != _json_text(mb[k]):
            changed += 1
            for path, _, _ in leaf_changes(record, mb[k]):
                fields.setdefault(path, None)
    added = sum(k not in ma for k in mb)
    removed = sum(k not in mb for k in ma)
    by = f"by {RECORD_KEY}" if keyed else "by position"
    parts = [f"records {len(a)} -> {len(b)} ({by}): {changed} changed, {added} added, {removed} removed"]
    if fields:
        parts.append("fields changed: " + _listed(list(fields), limit))
    if keyed and not (changed or added or removed) and list(ma) != list(mb):
        parts.append("records reordered")
    elif not (changed or added or removed):
        parts.append(f"same records; {describe_bytes(old, new)} (formatting)")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------------


def load_tensors(data: bytes) -> dict[str, np.ndarray]:
    """The tensors of a ``.safetensors`` file as float64 arrays (bfloat16 through torch)."""
    try:
        from safetensors.numpy import load

        return {k: np.asarray(v, dtype=np.float64) for k, v in load(data).items()}
    except Exception:  # a dtype numpy lacks (bfloat16): torch reads every safetensors dtype
        from safetensors.torch import load as load_torch

        return {k: v.double().numpy() for k, v in load_torch(data).items()}


def safetensors_metadata(data: bytes) -> Any:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]).get("__metadata__")


def describe_safetensors(name: str, old: bytes, new: bytes, *, limit: int = LIMIT) -> str:
    """Tensors added/removed/reshaped, how many differ, and the max |Δ| over common tensors."""
    a, b = load_tensors(old), load_tensors(new)
    common = [k for k in a if k in b]
    reshaped = [k for k in common if a[k].shape != b[k].shape]
    differing, max_delta = 0, 0.0
    for k in common:
        if k in reshaped or np.array_equal(a[k], b[k], equal_nan=True):
            continue
        differing += 1
        if a[k].size:
            max_delta = max(max_delta, float(np.nanmax(np.abs(a[k] - b[k]))))
    parts = [f"tensors {len(a)} -> {len(b)}: {differing} differ, max |Δ| {_num(max_delta)}"]
    if reshaped:
        parts.append("shape changed: " + _listed([f"{k} {a[k].shape} -> {b[k].shape}" for k in reshaped], limit))
    if added := [k for k in b if k not in a]:
        parts.append("added: " + _listed(added, limit))
    if removed := [k for k in a if k not in b]:
        parts.append("removed: " + _listed(removed, limit))
    if not (differing or reshaped or added or removed):
        metadata = safetensors_metadata(old) != safetensors_metadata(new)
        parts.append(f"same tensors; {'metadata' if metadata else 'layout'} differs")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# directories
# --------------------------------------------------------------------------------------------


def describe_dir(
    old: Mapping[str, str],
    new: Mapping[str, str],
    read_old: Reader,
    read_new: Reader,
    *,
    limit: int = 3,
) -> str:
    """Files added, removed and changed between two listings (``relpath -> md5``); each changed
    file (up to ``limit``) described in brackets. A reader returns None when it has no copy."""
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(p for p in set(old) & set(new) if old[p] != new[p])
    parts = [
        f"files {len(old)} -> {len(new)}: {len(changed)} changed, {len(added)} added, "
        f"{len(removed)} removed"
    ]
    if changed:
        shown = []
        for path in changed[:limit]:
            a, b = read_old(path), read_new(path)
            what = "REV's copy not available" if a is None else (
                "missing after the re-run" if b is None else describe_file(path, a, b, limit=limit)
            )
            shown.append(f"{path} [{what}]")
        more = f" +{len(changed) - limit} more" if len(changed) > limit else ""
        parts.append("changed: " + ", ".join(shown) + more)
    if added:
        parts.append("added: " + _listed(added, limit))
    if removed:
        parts.append("removed: " + _listed(removed, limit))
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def _listed(items: Sequence[str], limit: int) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" +{len(items) - limit} more" if len(items) > limit else "")


def _json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"
