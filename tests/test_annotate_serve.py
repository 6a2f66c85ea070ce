"""Integration: the OpenAI-compatible backend against a real `transformers serve` on loopback,
serving the packaged SmolLM2-135M-Instruct (converted safetensors folder): the session-scoped
``serve`` fixture of ``tests/conftest.py``."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tests.conftest import annotate_file
from tests.fault_server import params


@pytest.mark.slow
def test_annotate_through_transformers_serve(serve, tmp_path):
    base_url, folder = serve
    pairs = pd.DataFrame({
        "prompt_id": ["sum", "capital"],
        "prompt": ["What is 2 + 2?", "What is the capital of France?"],
        "chosen": ["4.", "Paris."],
        "rejected": ["5.", "Lyon."],
    })
    pairs.to_json(tmp_path / "pairs.jsonl", orient="records", lines=True)
    real = {"id": "smollm2", "backend": "openai", "preset": "transformers-serve", "model": folder,
            "base_url": base_url, "max_concurrency": 1}
    # The server is pinned to one model: another name is a 400, recorded and not retried.
    wrong = {**real, "id": "other", "model": "not-the-served-model"}
    # Short templates keep CPU prefill small; the shipped ones are tested elsewhere.
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "sys.txt").write_text(
        'Reply with JSON only: {"semantic_gap_category": one of Safety, Factuality, Instruction, '
        'Reasoning, Helpfulness, Style, "semantic_gap_magnitude": 0..1, "semantic_gap_confidence": 0..1}'
    )
    (prompts / "user.txt").write_text("Q: ${prompt}\nWinner: ${winner}\nLoser: ${loser}\n(${boundary})")
    cfg = params([real, wrong], variants=1, timeout_s=120, max_retries=0, max_tokens=48)
    cfg["prompts"] = {"dir": str(prompts), "user": "user.txt", "variants": [{"name": "v1", "system": "sys.txt"}]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(cfg))

    out = tmp_path / "calls.parquet"
    summary = annotate_file(tmp_path / "params.yaml", tmp_path / "pairs.jsonl", out, report=None)
    table = pd.read_parquet(out)
    assert len(table) == 2 * 2 and summary["calls_made"] == 4

    served = table[table["annotator"] == "smollm2"]
    # A 135M model may or may not write valid JSON: assert the pipeline, not the model's quality.
    assert set(served["status"]) <= {"ok", "invalid_json", "out_of_range"}
    assert served["response_text"].str.len().gt(0).all()
    assert (served["prompt_tokens"] > 30).all() and (served["completion_tokens"] > 0).all()
    assert (served["attempts"] == 1).all()
    other = table[table["annotator"] == "other"]
    assert (other["status"] == "http_error").all() and other["error"].str.contains("HTTP 400").all()

    # Re-running calls nothing: every call is cached.
    again = annotate_file(tmp_path / "params.yaml", tmp_path / "pairs.jsonl", out, report=None)
    assert again["calls_made"] == 0
