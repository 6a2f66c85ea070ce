"""Tests of sp2dpo/evaluate/benchmarks/alpaca.py: AlpacaEval file formats, checks and atomic writers."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sp2dpo.evaluate.benchmarks import alpaca
from sp2dpo.evaluate.benchmarks.alpaca import AlpacaEvalFormatError

MODELS = ["alpaca-7b", "gpt-3.5-turbo-1106", "OpenHermes-2.5-Mistral-7B", "gpt4_gamed"]


def annotations_path(evalsets: Path, model: str) -> Path:
    return (
        evalsets / "alpaca_eval" / "annotations"
        / f"{model}.weighted_alpaca_eval_gpt4_turbo.annotations.json.gz"
    )


@pytest.fixture(scope="module")
def reference_path(evalsets: Path) -> Path:
    return evalsets / "alpaca_eval" / "gpt4_1106_preview.json.gz"


@pytest.fixture(scope="module")
def reference(reference_path: Path) -> list[dict]:
    return alpaca.read_model_outputs(reference_path)


@pytest.fixture(scope="module")
def gamed_records(evalsets: Path) -> list[dict]:
    with gzip.open(annotations_path(evalsets, "gpt4_gamed"), "rt", encoding="utf-8") as fh:
        return json.load(fh)


def small(records: list[dict], n: int = 5) -> list[dict]:
    return copy.deepcopy(records[:n])


def dump(obj: object, path: Path) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# the shipped files
# --------------------------------------------------------------------------------------------


def test_reference_outputs_are_805_unique_instructions_in_alpacaeval_order(reference):
    assert len(reference) == 805
    assert {r["generator"] for r in reference} == {"gpt4_1106_preview"}
    index = alpaca.instruction_index(reference)
    assert len(index) == 805
    assert [index[r["instruction"]] for r in reference] == list(range(805))
    counts = pd.Series([r["dataset"] for r in reference]).value_counts().to_dict()
    assert counts == {"selfinstruct": 252, "oasst": 188, "koala": 156, "helpful_base": 129,
                      "vicuna": 80}


@pytest.mark.parametrize("model", MODELS)
def test_real_annotations_read_and_match_the_reference(evalsets, reference, model):
    path = annotations_path(evalsets, model)
    frame = alpaca.read_annotations(path)
    assert len(frame) == 805
    assert set(frame["generator_1"]) == {"gpt4_1106_preview"}
    assert set(frame["generator_2"]) == {model}
    assert frame["preference"].dtype == np.float64
    assert frame["preference"].between(1, 2).all()
    assert list(frame.columns[:8]) == list(alpaca.ANNOTATION_KEYS[:8])
    # The shipped annotations are in AlpacaEval order (docs/data.md).
    index = alpaca.match_reference(frame, reference, str(path))
    assert index.tolist() == list(range(805))


def test_match_reference_gives_positions_of_shuffled_annotations(gamed_records, reference):
    rows = [gamed_records[i] for i in (804, 3, 400, 0)]
    frame = alpaca.validate_annotations(rows)
    assert alpaca.match_reference(frame, reference).tolist() == [804, 3, 400, 0]


# --------------------------------------------------------------------------------------------
# bad input: one clear error naming file, item and field
# --------------------------------------------------------------------------------------------


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        alpaca.read_annotations(tmp_path / "nope.json")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not a readable JSON file"),
        ('{"instruction": "x"}', "expected a JSON list of objects, found a JSON dict"),
        ("[]", "empty list"),
        ('[1, "x"]', "item 0 is a JSON int, expected an object"),
    ],
)
def test_structural_errors(tmp_path, content, match):
    path = tmp_path / "ann.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(AlpacaEvalFormatError, match=match) as err:
        alpaca.read_annotations(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["ann.json", "ann.json.gz"])
def test_duplicate_json_key_names_file_and_key(tmp_path, gamed_records, name):
    text = json.dumps(gamed_records[:2])
    text = text.replace('"preference": ', '"preference": 1.0, "preference": ', 1)
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    with pytest.raises(AlpacaEvalFormatError) as err:
        alpaca.read_annotations(path)
    assert str(err.value) == f"{path}: not a readable JSON file (duplicate key 'preference')"


def test_empty_file_and_bad_gzip_are_errors(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    with pytest.raises(AlpacaEvalFormatError, match=r"empty\.json: not a readable JSON"):
        alpaca.read_annotations(empty)
    fake = tmp_path / "fake.json.gz"
    fake.write_text("[]", encoding="utf-8")
    with pytest.raises(AlpacaEvalFormatError, match=r"fake\.json\.gz: not a readable JSON"):
        alpaca.read_annotations(fake)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("preference", None, r"item 2 field 'preference' is null"),
        ("preference", "1.5", r"item 2 field 'preference' must be a number in \[1, 2\], found str"),
        ("preference", True, r"item 2 field 'preference' must be a number.*found bool"),
        ("preference", 2.5, r"item 2 field 'preference' = 2.5 is outside \[1, 2\]"),
        ("preference", 0.0, r"item 2 field 'preference' = 0.0 is outside \[1, 2\]"),
        ("preference", float("nan"), r"item 2 field 'preference' = nan is outside"),
        ("output_2", None, r"item 2 field 'output_2' must be a string, found null"),
        ("instruction", 7, r"item 2 field 'instruction' must be a string, found int 7"),
    ],
)
def test_bad_field_values(tmp_path, gamed_records, field, value, match):
    rows = small(gamed_records)
    rows[2][field] = value
    path = dump(rows, tmp_path / "ann.json")
    with pytest.raises(AlpacaEvalFormatError, match=match) as err:
        alpaca.read_annotations(path)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize("field", alpaca.REQUIRED_ANNOTATION_FIELDS)
def test_missing_required_field(tmp_path, gamed_records, field):
    rows = small(gamed_records)
    del rows[3][field]
    path = dump(rows, tmp_path / "ann.json")
    with pytest.raises(AlpacaEvalFormatError, match=rf"ann.json: item 3 misses field\(s\) '{field}'"):
        alpaca.read_annotations(path)


def test_optional_fields_may_be_missing(tmp_path, gamed_records):
    rows = [{k: r[k] for k in alpaca.REQUIRED_ANNOTATION_FIELDS} for r in small(gamed_records)]
    frame = alpaca.read_annotations(dump(rows, tmp_path / "ann.json"))
    assert list(frame.columns) == list(alpaca.REQUIRED_ANNOTATION_FIELDS)


@pytest.mark.parametrize("field", ["generator_1", "generator_2"])
def test_mixed_generators_name_the_values(tmp_path, gamed_records, field):
    rows = small(gamed_records)
    rows[1][field] = "other-model"
    rows[4][field] = "other-model"
    path = dump(rows, tmp_path / "ann.json")
    with pytest.raises(AlpacaEvalFormatError, match=rf"mixed {field} across items") as err:
        alpaca.read_annotations(path)
    message = str(err.value)
    assert "(item 1 differs from item 0)" in message
    assert f"{rows[0][field]!r} (3 items)" in message
    assert "'other-model' (2 items)" in message


def test_duplicated_instruction(tmp_path, gamed_records):
    rows = small(gamed_records)
    rows[4]["instruction"] = rows[1]["instruction"]
    path = dump(rows, tmp_path / "ann.json")
    with pytest.raises(AlpacaEvalFormatError,
                       match=r"item 4 field 'instruction' duplicates item 1"):
        alpaca.read_annotations(path)


def test_instruction_not_in_reference(gamed_records, reference):
    rows = small(gamed_records)
    rows[2]["instruction"] = "Write a haiku about DVC."
    frame = alpaca.validate_annotations(rows, "ann.json")
    with pytest.raises(AlpacaEvalFormatError, match="mismatched instructions") as err:
        alpaca.match_reference(frame, reference, "ann.json", "ref.json")
    message = str(err.value)
    assert "1 of 5" in message and "item 2 'Write a haiku about DVC.'" in message
    assert "field 'instruction'" in message and "ref.json" in message


def test_output_1_different_from_reference(gamed_records, reference):
    rows = small(gamed_records)
    rows[3]["output_1"] += " (edited)"
    frame = alpaca.validate_annotations(rows, "ann.json")
    with pytest.raises(AlpacaEvalFormatError,
                       match=r"mismatched instructions: field 'output_1' differs .* 1 of 5 items "
                             r"\(first: item 3 \(reference index 3\)\)"):
        alpaca.match_reference(frame, reference, "ann.json", "ref.json")


def test_model_outputs_checks(tmp_path, reference):
    rows = copy.deepcopy(reference[:4])
    rows[1]["generator"] = "someone-else"
    with pytest.raises(AlpacaEvalFormatError, match="mixed generator across items"):
        alpaca.read_model_outputs(dump(rows, tmp_path / "out.json"))
    rows = copy.deepcopy(reference[:4])
    del rows[2]["output"]
    with pytest.raises(AlpacaEvalFormatError, match=r"item 2 misses field\(s\) 'output'"):
        alpaca.read_model_outputs(dump(rows, tmp_path / "out.json"))
    rows = copy.deepcopy(reference[:4])
    rows[3]["instruction"] = rows[0]["instruction"]
    with pytest.raises(AlpacaEvalFormatError, match="item 3 field 'instruction' duplicates item 0"):
        alpaca.read_model_outputs(dump(rows, tmp_path / "out.json"))


def test_format_error_is_a_value_error():
    assert issubclass(AlpacaEvalFormatError, ValueError)


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_annotations_round_trip_is_deterministic(tmp_path, evalsets, suffix):
    frame = alpaca.read_annotations(annotations_path(evalsets, "alpaca-7b"))
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    alpaca.write_annotations(frame, first)
    alpaca.write_annotations(frame.to_dict(orient="records"), second)
    assert first.read_bytes() == second.read_bytes()
    back = alpaca.read_annotations(first)
    pd.testing.assert_frame_equal(back, frame)
    records = alpaca.load_json_list(first)
    assert list(records[0]) == list(alpaca.ANNOTATION_KEYS)
    assert not list(tmp_path.glob(".*.tmp"))


def test_annotation_key_order_and_text(tmp_path, gamed_records):
    rows = small(gamed_records, 2)
    rows[0] = {"extra": 1, **dict(reversed(list(rows[0].items())))}
    rows[0]["instruction"] = "Grüße ✓"
    path = tmp_path / "a.json"
    alpaca.write_annotations(rows, path)
    text = path.read_text(encoding="utf-8")
    assert "Grüße ✓" in text  # UTF-8, not \\u escapes
    assert text.startswith('[\n  {\n    "instruction"')
    assert list(json.loads(text)[0]) == [*alpaca.ANNOTATION_KEYS, "extra"]


def test_writer_refuses_invalid_records_and_leaves_no_file(tmp_path, gamed_records):
    rows = small(gamed_records)
    rows[0]["preference"] = 3
    path = tmp_path / "a.json.gz"
    with pytest.raises(AlpacaEvalFormatError, match=r"item 0 field 'preference' = 3.0"):
        alpaca.write_annotations(rows, path)
    assert list(tmp_path.iterdir()) == []


def test_model_outputs_round_trip(tmp_path, reference, reference_path):
    out = tmp_path / "ref.json.gz"
    alpaca.write_model_outputs(reference, out)
    assert alpaca.read_model_outputs(out) == alpaca.read_model_outputs(reference_path)
    first = alpaca.load_json_list(out)[0]
    assert list(first) == list(alpaca.MODEL_OUTPUT_KEYS)
    again = tmp_path / "again.json.gz"
    alpaca.write_model_outputs(pd.DataFrame(reference), again)
    assert again.read_bytes() == out.read_bytes()
