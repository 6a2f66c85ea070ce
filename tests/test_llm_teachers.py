"""The `local` backend (in-process LocalScorer) through the same pipeline as the HTTP backend:
same parsing, statuses, call log and call table."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from sp2dpo.core.config import ConfigError
from sp2dpo.llm.callstore import CallStore
from tests.conftest import annotate_file
from tests.fault_server import params

LOCAL = {"id": "smollm2", "backend": "local", "model": "local:smollm2-135m-instruct", "max_input_tokens": 640}


def test_too_small_input_budget_is_a_config_error_naming_the_teacher(tmp_path):
    pairs = pd.DataFrame({"prompt_id": ["x"], "prompt": ["p"], "chosen": ["c"], "rejected": ["r"]})
    pairs.to_parquet(tmp_path / "pairs.parquet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params([{**LOCAL, "max_input_tokens": 64}], variants=1)))
    with pytest.raises(ConfigError, match="teacher 'smollm2': max_input_tokens=64 is too small"):
        annotate_file(tmp_path / "params.yaml", tmp_path / "pairs.parquet", tmp_path / "c.parquet", report=None)
    assert not CallStore(tmp_path / "c").read()


@pytest.mark.slow
def test_local_teacher_annotates_deterministically(tmp_path):
    pairs = pd.DataFrame({
        "prompt_id": ["capital"],
        "prompt": ["What is the capital of France?"],
        "chosen": ["Paris is the capital of France."],
        "rejected": ["The capital of France is Berlin."],
    })
    pairs.to_parquet(tmp_path / "pairs.parquet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params([LOCAL], variants=1)))
    out = tmp_path / "calls.parquet"
    summary = annotate_file(tmp_path / "params.yaml", tmp_path / "pairs.parquet", out,
                           report=tmp_path / "report.json")
    table = pd.read_parquet(out)
    assert len(table) == 1 and (table["status"] == "ok").all()
    assert table["category"].notna().all() and table["magnitude"].between(0, 1).all()
    assert (table["attempts"] == 1).all() and (table["prompt_tokens"] <= 640).all()
    assert summary["per_teacher"]["smollm2"]["pairs_incomplete"] == 0
    assert summary["per_teacher"]["smollm2"]["cost_usd"] == 0.0

    # Same messages, same answer: a fresh log re-computes identical fields.
    again = tmp_path / "again.parquet"
    annotate_file(tmp_path / "params.yaml", tmp_path / "pairs.parquet", again, report=None)
    columns = ["category", "magnitude", "confidence", "call_key", "request_sha256"]
    pd.testing.assert_frame_equal(table[columns], pd.read_parquet(again)[columns])
    record = next(iter(CallStore(tmp_path / "calls").read().values()))
    assert record["backend"] == "local" and record["raw_response"] == record["response_text"]
