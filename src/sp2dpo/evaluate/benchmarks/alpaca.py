"""AlpacaEval 2.0 file formats: model outputs and judge annotations, read with clear checks.

Two JSON formats (plain ``.json`` or gzip-compressed ``.json.gz``), as in tatsu-lab/alpaca_eval
``results/<model>/``:

* **model outputs**: a JSON list of ``{"dataset", "instruction", "output", "generator"}``. The
  reference file (``gpt4_1106_preview``) fixes the *AlpacaEval index* of each instruction: its
  0-based position there, the order AlpacaEval uses for per-instruction parameters such as the
  instruction difficulty of the length-controlled GLM.
* **annotations**: a JSON list of ``{"instruction", "output_1", "generator_1", "dataset",
  "output_2", "generator_2", "annotator", "preference", ...}``, one pairwise judgement per
  instruction; ``output_1`` is the baseline, ``output_2`` the evaluated model and ``preference``
  is in [1, 2] (1: baseline preferred, 2: model preferred, 1.5: a draw).

Every reader fails with an :class:`AlpacaEvalFormatError` (a ``ValueError``) naming the file, the
item index and the field, so the ``sp2dpo`` command prints one clear line instead of a traceback.
A key given twice in one object is refused (:mod:`sp2dpo.core.jsonio`), not resolved as "last
wins".
Writers are atomic and deterministic (same records, same bytes).
"""

from __future__ import annotations

import gzip
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sp2dpo.core import jsonio
from sp2dpo.core.artifacts import atomic_path, check_input

#: Key order of an AlpacaEval model-outputs item (extra keys follow, sorted).
MODEL_OUTPUT_KEYS = ("dataset", "instruction", "output", "generator")
#: Key order of an AlpacaEval annotation item (extra keys follow, sorted).
ANNOTATION_KEYS = (
    "instruction",
    "output_1",
    "generator_1",
    "dataset",
    "output_2",
    "generator_2",
    "annotator",
    "preference",
    "price_per_example",
    "time_per_example",
    "raw_completion",
)
#: Fields every model-outputs item must have.
REQUIRED_MODEL_OUTPUT_FIELDS = ("instruction", "output", "generator")
#: Fields every annotation must have (the rest of :data:`ANNOTATION_KEYS` is optional).
REQUIRED_ANNOTATION_FIELDS = (
    "instruction",
    "output_1",
    "generator_1",
    "output_2",
    "generator_2",
    "preference",
)
#: Text fields that must be JSON strings.
_TEXT_FIELDS = ("instruction", "output", "output_1", "output_2", "generator", "generator_1",
                "generator_2")


class AlpacaEvalFormatError(ValueError):
    """An AlpacaEval file that breaks its format; the message names file, item and field."""


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


def load_json_list(path: str | Path) -> list[dict[str, Any]]:
    """Read a non-empty JSON list of objects from ``.json`` or ``.json.gz``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        AlpacaEvalFormatError: not JSON (a key given twice in one object included: ``FILE: not
            a readable JSON file (duplicate key 'NAME')``), not a list, empty, or an item that is
            not an object.
    """
    path = check_input(path)
    try:
        if _is_gzip(path):
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                obj = jsonio.load(fh)
        else:
            with open(path, encoding="utf-8") as fh:
                obj = jsonio.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise AlpacaEvalFormatError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(obj, list):
        raise AlpacaEvalFormatError(
            f"{path}: expected a JSON list of objects, found a JSON {type(obj).__name__}"
        )
    if not obj:
        raise AlpacaEvalFormatError(f"{path}: empty list, no items")
    for i, item in enumerate(obj):
        if not isinstance(item, dict):
            raise AlpacaEvalFormatError(
                f"{path}: item {i} is a JSON {type(item).__name__}, expected an object"
            )
    return obj


def _check_fields(records: Sequence[Mapping[str, Any]], required: Sequence[str], source: str) -> None:
    for i, item in enumerate(records):
        missing = [f for f in required if f not in item]
        if missing:
            raise AlpacaEvalFormatError(
                f"{source}: item {i} misses field(s) {', '.join(map(repr, missing))}"
            )
        for field in required:
            if field in _TEXT_FIELDS and not isinstance(item[field], str):
                raise AlpacaEvalFormatError(
                    f"{source}: item {i} field {field!r} must be a string, "
                    f"found {_describe(item[field])}"
                )


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check_unique_instructions(records: Sequence[Mapping[str, Any]], source: str) -> None:
    first: dict[str, int] = {}
    for i, item in enumerate(records):
        j = first.setdefault(item["instruction"], i)
        if j != i:
            raise AlpacaEvalFormatError(
                f"{source}: item {i} field 'instruction' duplicates item {j} "
                f"({_snippet(item['instruction'])})"
            )


def _check_single_value(records: Sequence[Mapping[str, Any]], field: str, source: str) -> None:
    counts = Counter(item[field] for item in records)
    if len(counts) > 1:
        found = ", ".join(f"{v!r} ({n} items)" for v, n in counts.most_common())
        first_other = next(
            i for i, item in enumerate(records) if item[field] != records[0][field]
        )
        raise AlpacaEvalFormatError(
            f"{source}: mixed {field} across items (item {first_other} differs from item 0); "
            f"found {found}; one file must compare one model with one baseline"
        )


def _snippet(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def _preference(value: Any, i: int, source: str) -> float:
    if value is None:
        raise AlpacaEvalFormatError(
            f"{source}: item {i} field 'preference' is null (a failed or missing judgement)"
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AlpacaEvalFormatError(
            f"{source}: item {i} field 'preference' must be a number in [1, 2], "
            f"found {_describe(value)}"
        )
    pref = float(value)
    if not math.isfinite(pref) or not 1.0 <= pref <= 2.0:
        raise AlpacaEvalFormatError(
            f"{source}: item {i} field 'preference' = {pref!r} is outside [1, 2] "
            "(1: output_1 preferred, 2: output_2 preferred)"
        )
    return pref


def validate_model_outputs(records: Sequence[Mapping[str, Any]], source: str) -> None:
    """Check a model-outputs list: required string fields, unique instructions, one generator.

    Raises:
        AlpacaEvalFormatError: the first problem found, naming ``source``, item and field.
    """
    if not records:
        raise AlpacaEvalFormatError(f"{source}: empty list, no items")
    _check_fields(records, REQUIRED_MODEL_OUTPUT_FIELDS, source)
    _check_unique_instructions(records, source)
    _check_single_value(records, "generator", source)


def read_model_outputs(path: str | Path) -> list[dict[str, Any]]:
    """Read and check an AlpacaEval model-outputs file (``.json`` or ``.json.gz``).

    Returns:
        The items, in file order (for the reference file this order is the AlpacaEval index).
    """
    records = load_json_list(path)
    validate_model_outputs(records, str(path))
    return records


def validate_annotations(
    records: Sequence[Mapping[str, Any]], source: str = "<annotations>"
) -> pd.DataFrame:
    """Check annotation records and return them as a frame with a float ``preference``.

    Checks: required fields (string texts), ``preference`` a number in [1, 2] (not null), a
    single ``generator_1`` and a single ``generator_2`` across items, unique instructions.

    Returns:
        A new frame, one row per annotation in input order, every field of the records kept.

    Raises:
        AlpacaEvalFormatError: the first problem found, naming ``source``, item and field.
    """
    if not records:
        raise AlpacaEvalFormatError(f"{source}: empty list, no annotations")
    _check_fields(records, REQUIRED_ANNOTATION_FIELDS, source)
    prefs = [_preference(item["preference"], i, source) for i, item in enumerate(records)]
    _check_single_value(records, "generator_1", source)
    _check_single_value(records, "generator_2", source)
    _check_unique_instructions(records, source)
    frame = pd.DataFrame.from_records([dict(item) for item in records])
    frame["preference"] = np.asarray(prefs, dtype=float)
    return frame


def read_annotations(path: str | Path) -> pd.DataFrame:
    """Read and check an AlpacaEval annotations file (``.json`` or ``.json.gz``).

    See :func:`validate_annotations` for the checks.
    """
    return validate_annotations(load_json_list(path), str(path))


def instruction_index(reference: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The AlpacaEval index of each instruction: its 0-based position in the reference file.

    Example:
        >>> instruction_index([{"instruction": "a"}, {"instruction": "b"}])
        {'a': 0, 'b': 1}
    """
    return {item["instruction"]: i for i, item in enumerate(reference)}


def match_reference(
    annotations: pd.DataFrame,
    reference: Sequence[Mapping[str, Any]],
    source: str = "<annotations>",
    reference_source: str = "<reference>",
) -> np.ndarray:
    """Check annotations against the reference outputs; return each row's AlpacaEval index.

    Every annotation's ``instruction`` must be in the reference and its ``output_1`` must equal
    the reference ``output`` for that instruction exactly.

    Returns:
        Integer array, one AlpacaEval index per annotation row (input order).

    Raises:
        AlpacaEvalFormatError: mismatched instructions, naming the first offending items.
    """
    index = instruction_index(reference)
    unknown = [i for i, text in enumerate(annotations["instruction"]) if text not in index]
    if unknown:
        shown = ", ".join(
            f"item {i} {_snippet(annotations['instruction'].iloc[i])}" for i in unknown[:3]
        )
        raise AlpacaEvalFormatError(
            f"{source}: mismatched instructions: {len(unknown)} of {len(annotations)} "
            f"annotation instructions are not in the reference {reference_source} "
            f"(field 'instruction'; first: {shown})"
        )
    positions = np.fromiter(
        (index[text] for text in annotations["instruction"]), dtype=np.int64,
        count=len(annotations),
    )
    differs = [
        i for i, (pos, out) in enumerate(zip(positions, annotations["output_1"], strict=True))
        if reference[pos]["output"] != out
    ]
    if differs:
        shown = ", ".join(
            f"item {i} (reference index {positions[i]})" for i in differs[:3]
        )
        raise AlpacaEvalFormatError(
            f"{source}: mismatched instructions: field 'output_1' differs from the reference "
            f"output in {reference_source} for {len(differs)} of {len(annotations)} items "
            f"(first: {shown}); were these annotations made against another baseline?"
        )
    return positions


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-ready value: numpy scalars to Python, NaN/NA to null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _ordered(item: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    out = {k: _plain(item[k]) for k in keys if k in item}
    out.update({k: _plain(item[k]) for k in sorted(item) if k not in out})
    return out


def _records(data: pd.DataFrame | Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(data, pd.DataFrame):
        return data.to_dict(orient="records")
    return list(data)


def dumps(records: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """Deterministic JSON text: ``indent=2``, non-ASCII kept (UTF-8), keys in AlpacaEval order."""
    ordered = [_ordered(item, keys) for item in records]
    return json.dumps(ordered, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def _write(text: str, path: str | Path) -> None:
    path = Path(path)
    data = text.encode("utf-8")
    with atomic_path(path) as tmp:
        if _is_gzip(path):
            # mtime=0 and no file name in the header: the same records give the same bytes.
            with open(tmp, "wb") as raw, gzip.GzipFile(
                filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0
            ) as fh:
                fh.write(data)
        else:
            tmp.write_bytes(data)


def write_model_outputs(data: pd.DataFrame | Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Check and write model outputs atomically (``.json`` or ``.json.gz`` by suffix)."""
    records = _records(data)
    validate_model_outputs(records, str(path))
    _write(dumps(records, MODEL_OUTPUT_KEYS), path)


def write_annotations(data: pd.DataFrame | Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Check and write annotations atomically (``.json`` or ``.json.gz`` by suffix)."""
    records = [{k: _plain(v) for k, v in item.items()} for item in _records(data)]
    validate_annotations(records, str(path))
    _write(dumps(records, ANNOTATION_KEYS), path)
