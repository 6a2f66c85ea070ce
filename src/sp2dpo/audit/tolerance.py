"""Float noise or a real change: two versions of an output compared within a numeric tolerance.

``sp2dpo verify`` calls an output *equivalent* when its bytes differ but its content agrees
within a relative tolerance (default :data:`DEFAULT_TOLERANCE`), which is what a re-run on
another kind of CPU (without the pins of :mod:`sp2dpo.numerics`) or on a GPU produces. The rules,
by file type (the suffix):

- JSON (metrics, reports, eval answers) and JSON lines (call store segments, IFEval results):
  the same structure (keys, list lengths, value types), strings, booleans, nulls and integers
  exact (counts, steps, token counts are not float noise), every non-integer number within the
  tolerance;
- tables (``.csv``, ``.parquet``): the same columns in the same order and the same number of
  rows; float columns cell by cell within the tolerance, every other column exact;
- ``.safetensors`` (adapters): the same tensor names, shapes and metadata; per tensor, max |Δ|
  divided by the tensor's scale (its largest |value| in either version) within the tolerance;
- ``.md``/``.txt`` (reports): the same text once the numbers are taken out; decimal numbers within
  the tolerance, integers exact;
- directories: the same files, each one identical or equivalent;
- anything else (plots, binaries): exact, or it differs.

The relative deviation of two numbers is ``|a - b| / max(|a|, |b|)`` (0 when both are 0; NaN
equals NaN; an infinity equals only itself). Each comparison reports the largest deviation found
and where, so a ``differs`` line shows how far off the worst number is, and an ``equivalent``
line how close the noise came to the tolerance.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo.audit.describe import load_tensors, safetensors_metadata

#: Relative deviation allowed for a float (a tensor: max |Δ| over the tensor's scale).
DEFAULT_TOLERANCE = 1e-5

#: A number in text: an optional sign, digits with an optional fraction, an optional exponent.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")


@dataclasses.dataclass(frozen=True)
class Closeness:
    """How two versions compare: ``equivalent`` within the tolerance, or why not.

    Attributes:
        equivalent: every number within the tolerance and everything else exact.
        deviation: the largest relative deviation found among the numbers compared (0.0: none).
        where: the number (dotted JSON path, ``column[row]``, tensor name, ``file: ...``) with it.
        reason: why the versions are not equivalent ("" when they are).
    """

    equivalent: bool
    deviation: float = 0.0
    where: str = ""
    reason: str = ""

    def describe(self) -> str:
        """``largest relative deviation 1.2e-07 (final_loss)``, or ``no numeric deviation``."""
        if not self.deviation:
            return "no numeric deviation"
        return f"largest relative deviation {self.deviation:.3g} ({self.where})"


class _Tracker:
    """The running maximum deviation and the first exact mismatch of one comparison."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.deviation = 0.0
        self.where = ""
        self.mismatch = ""

    def number(self, a: float, b: float, where: str) -> None:
        self.deviation_at(relative_deviation(a, b), where)

    def deviation_at(self, d: float, where: str) -> None:
        if d > self.deviation:
            self.deviation, self.where = d, where

    def exact(self, same: bool, where: str, what: str) -> None:
        if not same and not self.mismatch:
            self.mismatch = f"{where}: {what}"

    def result(self) -> Closeness:
        if self.mismatch:
            return Closeness(False, self.deviation, self.where, self.mismatch)
        if self.deviation > self.tolerance:
            return Closeness(False, self.deviation, self.where,
                             f"{self.where}: relative deviation {self.deviation:.3g} > tolerance "
                             f"{self.tolerance:g}")
        return Closeness(True, self.deviation, self.where)


def relative_deviation(a: float, b: float) -> float:
    """``|a - b| / max(|a|, |b|)``; 0 for equal values (NaN equals NaN), inf against a non-finite."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def check_tolerance(tolerance: float) -> float:
    """A usable tolerance: finite and >= 0 (0: only identical outputs pass)."""
    if not isinstance(tolerance, int | float) or not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"--tolerance must be a finite number >= 0, got {tolerance!r}")
    return float(tolerance)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def compare_file(name: str, old: bytes, new: bytes, tolerance: float = DEFAULT_TOLERANCE) -> Closeness:
    """Compare two versions of the file ``name`` (its suffix picks the rules of the module); the
    reason, when not equivalent, names the place inside the file, not the file."""
    if old == new:
        return Closeness(True)
    suffix = name.lower().rsplit(".", 1)[-1] if "." in name else ""
    comparer = _COMPARERS.get(suffix)
    if comparer is None:
        return Closeness(False, reason=f"bytes differ and .{suffix or '(none)'} files compare exactly")
    tracker = _Tracker(tolerance)
    try:
        comparer(old, new, tracker)
    except Exception as exc:  # unreadable as its suffix says: it cannot be shown equivalent
        return Closeness(False, reason=f"not comparable as .{suffix} ({_short(str(exc))})")
    return tracker.result()


def _json(old: bytes, new: bytes, t: _Tracker) -> None:
    _walk(json.loads(old), json.loads(new), "", t)


def _jsonl(old: bytes, new: bytes, t: _Tracker) -> None:
    a = [line for line in old.decode("utf-8").splitlines() if line.strip()]
    b = [line for line in new.decode("utf-8").splitlines() if line.strip()]
    t.exact(len(a) == len(b), "(records)", f"{len(a)} -> {len(b)} records")
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        _walk(json.loads(x), json.loads(y), f"[{i}]", t)


def _walk(a: Any, b: Any, path: str, t: _Tracker) -> None:
    where = path or "(root)"
    if isinstance(a, dict) and isinstance(b, dict):
        t.exact(list(a) == list(b), where, "keys differ")
        for key in a:
            if key in b:
                _walk(a[key], b[key], f"{path}.{key}" if path else str(key), t)
    elif isinstance(a, list) and isinstance(b, list):
        t.exact(len(a) == len(b), where, f"{len(a)} -> {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _walk(x, y, f"{path}[{i}]", t)
    elif _is_float_pair(a, b):
        t.number(float(a), float(b), where)
    else:
        t.exact(type(a) is type(b) and a == b, where, f"{_short(json.dumps(a))} -> {_short(json.dumps(b))}")


def _is_float_pair(a: Any, b: Any) -> bool:
    """Two JSON numbers at least one of which is not an integer (integers compare exactly)."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))
    return numbers and (isinstance(a, float) or isinstance(b, float))


def _table(old: bytes, new: bytes, t: _Tracker, parquet: bool) -> None:
    read = pd.read_parquet if parquet else pd.read_csv
    a, b = read(io.BytesIO(old)), read(io.BytesIO(new))
    t.exact(list(a.columns) == list(b.columns), "(columns)", "columns differ")
    t.exact(len(a) == len(b), "(rows)", f"{len(a)} -> {len(b)} rows")
    if t.mismatch:
        return
    for column in a.columns:
        x, y = a[column], b[column]
        if parquet:
            t.exact(x.dtype == y.dtype, str(column), f"dtype {x.dtype} -> {y.dtype}")
        if pd.api.types.is_float_dtype(x.dtype) and pd.api.types.is_float_dtype(y.dtype):
            for row, (u, v) in enumerate(zip(x.to_numpy(float), y.to_numpy(float), strict=True)):
                if u != v:
                    t.number(float(u), float(v), f"{column}[{row}]")
            continue
        for row, (u, v) in enumerate(zip(x, y, strict=True)):
            if not _same_cell(u, v):
                t.exact(False, f"{column}[{row}]", f"{_short(repr(u))} -> {_short(repr(v))}")
                break


def _same_cell(u: Any, v: Any) -> bool:
    missing = [x is None or (isinstance(x, float) and math.isnan(x)) for x in (u, v)]
    if all(missing):
        return True
    if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
        return bool(np.array_equal(np.asarray(u), np.asarray(v)))
    return bool(u == v)


def _safetensors(old: bytes, new: bytes, t: _Tracker) -> None:
    t.exact(safetensors_metadata(old) == safetensors_metadata(new), "(metadata)", "safetensors metadata differ")
    a, b = load_tensors(old), load_tensors(new)
    t.exact(sorted(a) == sorted(b), "(tensors)", "tensor names differ")
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.shape != y.shape:
            t.exact(False, name, f"shape {x.shape} -> {y.shape}")
            continue
        if not x.size or np.array_equal(x, y, equal_nan=True):
            continue
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            t.exact(False, name, "non-finite values differ")
            continue
        scale = max(float(np.abs(x).max()), float(np.abs(y).max()))
        t.deviation_at(float(np.abs(x - y).max()) / scale, f"{name}, max |Δ| over the tensor's scale")


def _text(old: bytes, new: bytes, t: _Tracker) -> None:
    a, b = old.decode("utf-8"), new.decode("utf-8")
    t.exact(_NUMBER.sub("#", a) == _NUMBER.sub("#", b), "(text)", "the text differs beyond its numbers")
    if t.mismatch:
        return
    for i, (x, y) in enumerate(zip(_numbers(a), _numbers(b), strict=True)):
        if x == y:
            continue
        where = f"number {i + 1} of the text ({x} -> {y})"
        if _is_integer_literal(x) and _is_integer_literal(y):
            t.exact(False, where, "integers differ")
        else:
            t.number(float(x), float(y), where)


def _numbers(text: str) -> Iterator[str]:
    return (m.group(0) for m in _NUMBER.finditer(text))


def _is_integer_literal(token: str) -> bool:
    return not any(c in token for c in ".eE")


_COMPARERS: dict[str, Callable[[bytes, bytes, _Tracker], None]] = {
    "json": _json,
    "jsonl": _jsonl,
    "csv": lambda o, n, t: _table(o, n, t, parquet=False),
    "parquet": lambda o, n, t: _table(o, n, t, parquet=True),
    "safetensors": _safetensors,
    "md": _text,
    "txt": _text,
}


# --------------------------------------------------------------------------------------------
# directories
# --------------------------------------------------------------------------------------------


def compare_dir(
    old: Mapping[str, str],
    new: Mapping[str, str],
    read_old: Callable[[str], bytes | None],
    read_new: Callable[[str], bytes | None],
    tolerance: float = DEFAULT_TOLERANCE,
) -> Closeness:
    """Two listings (``relpath -> md5``): the same files, each identical or equivalent; the
    largest deviation over the files. A reader returns None when it has no copy."""
    if set(old) != set(new):
        extra = sorted(set(old) ^ set(new))
        return Closeness(False, reason=f"files added or removed ({_short(', '.join(extra))})")
    worst = Closeness(True)
    for path in sorted(p for p in old if old[p] != new[p]):
        a, b = read_old(path), read_new(path)
        if a is None or b is None:
            return Closeness(False, worst.deviation, worst.where, f"{path}: a copy is not available")
        result = compare_file(path, a, b, tolerance)
        if result.deviation > worst.deviation:
            worst = Closeness(True, result.deviation, f"{path}: {result.where}")
        if not result.equivalent:
            return Closeness(False, worst.deviation, worst.where, f"{path}: {result.reason}")
    return worst


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
