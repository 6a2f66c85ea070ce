"""Tests for `sp2dpo.audit.tolerance`: float noise (equivalent, with the largest deviation) told
from a real change (differs), per file type, on the committed reports and on small tensors."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save

from sp2dpo.audit.tolerance import (
    DEFAULT_TOLERANCE,
    check_tolerance,
    compare_dir,
    compare_file,
    relative_deviation,
)
from tests.conftest import ROOT

TRAIN_REPORT = ROOT / "reports" / "train" / "smollm2-sp2dpo.json"
EVAL_REPORT = ROOT / "reports" / "eval" / "smollm2.json"
EVAL_PLOT = ROOT / "reports" / "eval_plot.csv"


def scale_floats(obj, factor):
    """Every non-integer number of a JSON value multiplied by ``factor``."""
    if isinstance(obj, dict):
        return {k: scale_floats(v, factor) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scale_floats(v, factor) for v in obj]
    if isinstance(obj, float):
        return obj * factor
    return obj


def test_relative_deviation_and_the_tolerance_check():
    assert relative_deviation(1.0, 1.0) == 0.0
    assert relative_deviation(0.0, 0.0) == 0.0
    assert relative_deviation(math.nan, math.nan) == 0.0
    assert relative_deviation(2.0, 1.0) == 0.5
    assert relative_deviation(-1.0, 1.0) == 2.0
    assert relative_deviation(math.inf, 1.0) == math.inf
    assert check_tolerance(0) == 0.0 and check_tolerance(1e-3) == 1e-3
    for bad in (math.nan, math.inf, -1e-6):
        with pytest.raises(ValueError, match="--tolerance must be a finite number >= 0"):
            check_tolerance(bad)


@pytest.mark.parametrize("path", [TRAIN_REPORT, EVAL_REPORT], ids=["train", "eval"])
def test_a_committed_report_perturbed_by_1e7_is_equivalent_by_1e2_differs(path):
    old = path.read_bytes()
    report = json.loads(old)
    close = json.dumps(scale_floats(report, 1 + 1e-7), indent=2).encode()
    result = compare_file(path.name, old, close)
    assert result.equivalent, result.reason
    assert result.deviation == pytest.approx(1e-7, rel=1e-3)
    assert result.where  # names the number
    assert "largest relative deviation 1e-07" in result.describe()

    far = json.dumps(scale_floats(report, 1 + 1e-2), indent=2).encode()
    result = compare_file(path.name, old, far)
    assert not result.equivalent
    assert result.deviation == pytest.approx(1e-2, rel=0.02)  # relative to the larger
    assert "> tolerance 1e-05" in result.reason
    # a tolerance of 0 accepts only the same numbers
    assert not compare_file(path.name, old, close, 0.0).equivalent
    assert compare_file(path.name, old, far, 0.02).equivalent


def test_json_strings_integers_and_structure_are_exact():
    base = {"method": "sp2dpo", "global_step": 3, "num_tokens": 1_000_000, "final_loss": 0.6932,
            "flags": [True, None]}

    def cmp(new):
        return compare_file("r.json", json.dumps(base).encode(), json.dumps(new).encode())

    assert not cmp({**base, "method": "dpo"}).equivalent
    assert "method" in cmp({**base, "method": "dpo"}).reason
    assert not cmp({**base, "global_step": 4}).equivalent  # counts are not float noise,
    assert not cmp({**base, "num_tokens": 1_000_001}).equivalent  # however close
    assert not cmp({**base, "flags": [False, None]}).equivalent
    assert not cmp({**base, "extra": 1}).equivalent
    assert not cmp({**base, "flags": [True]}).equivalent
    assert cmp({**base, "final_loss": 0.6932 * (1 + 3e-6)}).equivalent
    assert not cmp({**base, "final_loss": math.nan}).equivalent


def test_table_floats_within_tolerance_strings_exact():
    old = EVAL_PLOT.read_bytes()
    frame = pd.read_csv(io.BytesIO(old))
    floats = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    strings = [c for c in frame.columns if pd.api.types.is_string_dtype(frame[c])]
    assert floats and strings, frame.dtypes  # the committed table has both kinds

    def to_bytes(f: pd.DataFrame) -> bytes:
        return f.to_csv(index=False, float_format="%.17g").encode()

    noisy = frame.copy()
    noisy[floats[0]] = noisy[floats[0]] * (1 + 1e-7) + 1e-300
    result = compare_file("eval_plot.csv", old, to_bytes(noisy))
    assert result.equivalent and 0 < result.deviation < 2e-7, result
    assert result.where.startswith(f"{floats[0]}[")

    far = frame.copy()
    far[floats[0]] = far[floats[0]] * 1.01 + 1e-3
    assert not compare_file("eval_plot.csv", old, to_bytes(far)).equivalent

    renamed = frame.copy()
    renamed.loc[0, strings[0]] = "Something else"
    result = compare_file("eval_plot.csv", old, to_bytes(renamed))
    assert not result.equivalent and result.reason.startswith(f"{strings[0]}[0]")
    # parquet: the same rules
    buffers = []
    for f in (frame, noisy):
        buf = io.BytesIO()
        f.to_parquet(buf, index=False)
        buffers.append(buf.getvalue())
    assert compare_file("t.parquet", *buffers).equivalent


def test_safetensors_relative_to_the_tensor_scale():
    rng = np.random.default_rng(0)
    a = {"lora_A": rng.normal(size=(4, 8)).astype(np.float32), "lora_B": np.zeros((8, 4), np.float32)}
    old = save(a, metadata={"format": "pt"})
    scale = float(np.abs(a["lora_A"]).max())
    nudged = a["lora_A"].copy()
    nudged[0, 0] += np.float32(scale * 1e-6)
    result = compare_file("adapter_model.safetensors", old, save({**a, "lora_A": nudged}, metadata={"format": "pt"}))
    assert result.equivalent and result.deviation == pytest.approx(1e-6, rel=0.1)
    assert result.where.startswith("lora_A")
    moved = a["lora_A"] * np.float32(1.05)
    assert not compare_file("x.safetensors", old, save({**a, "lora_A": moved}, metadata={"format": "pt"})).equivalent
    reshaped = {**a, "lora_B": np.zeros((4, 8), np.float32)}
    assert not compare_file("x.safetensors", old, save(reshaped, metadata={"format": "pt"})).equivalent
    assert not compare_file("x.safetensors", old, save(a, metadata={"format": "np"})).equivalent


def test_text_numbers_within_tolerance_words_exact():
    old = b"| method | WR |\n|---|---|\n| dpo | 38.22863017677538 |\n3 of 8 pairs\n"
    assert compare_file("eval.md", old, old.replace(b"38.22863017677538", b"38.22862205140234")).equivalent
    assert not compare_file("eval.md", old, old.replace(b"38.22863017677538", b"38.3")).equivalent
    assert not compare_file("eval.md", old, old.replace(b"3 of 8", b"4 of 8")).equivalent  # integers exact,
    big = b"1000000 tokens\n"
    assert not compare_file("eval.md", big, b"1000001 tokens\n").equivalent  # however close
    assert not compare_file("eval.md", old, old.replace(b"dpo", b"ipo")).equivalent
    # a file type with no rules compares exactly
    assert not compare_file("plot.png", b"\x89PNG1", b"\x89PNG2").equivalent
    assert compare_file("plot.png", b"same", b"same").equivalent


def test_directories_take_the_largest_deviation_and_need_the_same_files():
    files_old = {"a.json": b'{"x": 1.0}', "b.json": b'{"x": 2.0}', "c.txt": b"same"}
    files_new = {"a.json": b'{"x": 1.000001}', "b.json": b'{"x": 2.00000004}', "c.txt": b"same"}
    listing_old = {k: f"md5-{v!r}" for k, v in files_old.items()}
    listing_new = {k: f"md5-{v!r}" for k, v in files_new.items()}
    result = compare_dir(listing_old, listing_new, files_old.get, files_new.get)
    assert result.equivalent and result.deviation == pytest.approx(1e-6, rel=1e-3)
    assert result.where.startswith("a.json: ")
    result = compare_dir(listing_old, listing_new, files_old.get, files_new.get, 1e-7)
    assert not result.equivalent and result.reason.startswith("a.json: ")
    fewer = {k: v for k, v in listing_new.items() if k != "c.txt"}
    assert "c.txt" in compare_dir(listing_old, fewer, files_old.get, files_new.get).reason
    assert DEFAULT_TOLERANCE == 1e-5
