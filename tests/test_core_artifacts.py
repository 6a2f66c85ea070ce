"""Tests for sp2dpo.core.artifacts: atomic writes, schema messages, stable bytes."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest

from sp2dpo.core import artifacts
from sp2dpo.core.schemas import FilteredPairsTable, PairsTable
from sp2dpo.data import to_pairs_frame


def pairs(n: int = 3, **override) -> pd.DataFrame:
    rows = [
        {"prompt_id": f"id{i}", "prompt": f"p{i}", "chosen": "c", "rejected": "r",
         "score_chosen": 1.0, "score_rejected": None, "source": "s"} for i in range(n)
    ]
    for i, fields in override.items():
        rows[int(i[1:])].update(fields)
    return to_pairs_frame(rows)


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError), artifacts.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_schema_violation_names_file_column_rule_and_rows(tmp_path):
    frame = pairs(4, r1={"chosen": "  "}, r3={"rejected": ""})
    out = tmp_path / "filtered.parquet"
    with pytest.raises(artifacts.SchemaViolation) as info:
        artifacts.write_table(frame, out, FilteredPairsTable)
    message = str(info.value)
    assert str(out) in message and "FilteredPairsTable" in message
    assert "column 'chosen' fails str_matches" in message and "row(s) 1 ('  ')" in message
    assert "column 'rejected' fails str_matches" in message and "row(s) 3 ('')" in message
    assert not out.exists()


def test_strict_schema_rejects_extra_and_missing_columns(tmp_path):
    frame = pairs(2).assign(extra=1).drop(columns="source")
    with pytest.raises(artifacts.SchemaViolation, match=r"column_in_schema|column_in_dataframe"):
        artifacts.validate(frame, PairsTable, "x.parquet")


def test_parquet_round_trip_is_byte_stable(tmp_path):
    frame = pairs(5)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    artifacts.write_table(frame, a, PairsTable)
    artifacts.write_table(frame, b, PairsTable)
    assert a.read_bytes() == b.read_bytes()
    pd.testing.assert_frame_equal(artifacts.read_table(a, PairsTable), frame)


def test_write_json_is_sorted_and_stable(tmp_path):
    path = tmp_path / "r.json"
    artifacts.write_json({"b": 1, "a": {"d": 2, "c": 3}}, path)
    assert path.read_text() == json.dumps({"a": {"c": 3, "d": 2}, "b": 1}, indent=2) + "\n"


def test_unknown_table_type(tmp_path):
    with pytest.raises(ValueError, match=r"unknown table type '\.xlsx'"):
        artifacts.write_table(pairs(1), tmp_path / "t.xlsx")
    (tmp_path / "t.xlsx").write_text("")
    with pytest.raises(ValueError, match=r"unknown table type '\.xlsx'"):
        artifacts.read_table(tmp_path / "t.xlsx")


def test_sha256_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"abc")
    assert artifacts.sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_written_files_follow_the_umask_not_the_temp_files_0600(tmp_path):
    """Every artifact gets the mode a plain open() would give (0666 minus the umask)."""
    import subprocess
    import sys

    code = (
        "import os, stat; os.umask(0o027); from sp2dpo.core import artifacts; "
        f"artifacts.write_text('x', {str(tmp_path / 'a.txt')!r}); "
        f"print(oct(stat.S_IMODE(os.stat({str(tmp_path / 'a.txt')!r}).st_mode)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "0o640"
    artifacts.write_json({"a": 1}, tmp_path / "b.json")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o666 & ~mask


def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    from sp2dpo.core.errors import OutputPathError

    inp = tmp_path / "in.jsonl"
    inp.write_text("{}\n")
    with pytest.raises(OutputPathError, match=r"--out .*: is a folder; give a file path"):
        artifacts.check_output(tmp_path, what="--out")
    with pytest.raises(OutputPathError, match=r"cannot be created, .*in.jsonl is a file"):
        artifacts.check_output(inp / "x" / "out.json", what="--out")
    with pytest.raises(OutputPathError, match=r"is the input .*in.jsonl; write elsewhere"):
        artifacts.check_output(tmp_path / "sub" / ".." / "in.jsonl", inputs=[None, inp], what="--out")
    assert artifacts.check_output(tmp_path / "new" / "out.json", inputs=[inp]) == tmp_path / "new" / "out.json"
    # the writers themselves: one message, not an OS traceback, and nothing left behind
    with pytest.raises(OutputPathError, match="a part of its folder path is a file"):
        artifacts.write_text("x", inp / "out.txt")
    with pytest.raises(OutputPathError, match="is a folder, cannot write a file there"):
        artifacts.write_json({}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
