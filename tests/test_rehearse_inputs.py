"""The rehearsal's inputs: the full-size UltraFeedback stand-in (:mod:`sp2dpo.rehearse.snapshot`)
and the paper's four students as tiny models (:mod:`sp2dpo.rehearse.students`)."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sp2dpo.rehearse import snapshot, students
from tests.conftest import H4_SAMPLE, ROOT

# ------------------------------------------------------------------------------ the snapshot


def _records(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def snap(tmp_path_factory) -> tuple[Path, dict]:
    """1,200 rows: three rounds of the 498 usable shipped rows (no planted duplicate at this size)."""
    out = tmp_path_factory.mktemp("snap") / "train_prefs.jsonl.gz"
    return out, snapshot.write_snapshot(H4_SAMPLE, out, rows=1200, seed=0)


def test_snapshot_has_the_rows_and_every_prompt_is_unique(snap):
    path, info = snap
    records = _records(path)
    assert len(records) == info["rows"] == 1200
    assert info["planted"]["duplicate_prompt_id"] == 0
    prompts = [r["prompt"] for r in records]
    assert len(set(prompts)) == len(prompts) == info["unique_prompts"]
    assert len({r["prompt_id"] for r in records}) == len(records)
    # rounds 1 and 2 are variants of the real prompts, round 0 keeps them (and their Hub ids)
    real = {r["prompt"]: r["prompt_id"] for r in _records(H4_SAMPLE)}
    kept = [r for r in records if r["prompt"] in real]
    assert len(kept) == 498 and all(r["prompt_id"] == real[r["prompt"]] for r in kept)
    assert sum(p.endswith(" (variant 2)") for p in prompts) == 1200 - 2 * 498


def test_snapshot_rows_have_the_shape_of_the_hub_split(snap):
    path, _ = snap
    source = _records(H4_SAMPLE)
    for record in _records(path):
        assert list(record) == list(source[0])  # the Hub's keys, in its order
        prompt = record["prompt"]
        assert record["prompt_id"] == hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        for field in ("chosen", "rejected"):
            assert [m["role"] for m in record[field]] == ["user", "assistant"]
            assert record[field][0]["content"] == prompt
        assert record["messages"] == record["chosen"]
        assert isinstance(record["score_chosen"], float) and isinstance(record["score_rejected"], float)
        assert 1.0 <= record["score_rejected"] <= record["score_chosen"] <= 10.0
        same = record["chosen"][1]["content"] == record["rejected"][1]["content"]
        assert (record["score_chosen"] == record["score_rejected"]) == same


def test_snapshot_is_byte_identical_for_the_same_arguments(snap, tmp_path):
    path, info = snap
    header = path.read_bytes()[:10]
    assert header[3] == 0 and header[4:8] == bytes(4)  # gzip: no file name, time 0
    again = snapshot.write_snapshot(H4_SAMPLE, tmp_path / "again.jsonl.gz", rows=1200, seed=0)
    assert (tmp_path / "again.jsonl.gz").read_bytes() == path.read_bytes()
    assert again == {**info, "bytes": again["bytes"]} and again["sha256"] == info["sha256"]
    other = snapshot.write_snapshot(H4_SAMPLE, tmp_path / "other.jsonl.gz", rows=1200, seed=1)
    assert other["sha256"] != info["sha256"]


def test_planted_faults_are_the_papers_table_9_at_full_size():
    counts = snapshot.planted_counts(snapshot.PAPER_ROWS)
    assert counts == {"duplicate_prompt_id": 11, "empty_chosen": 37, "empty_rejected": 75, "both_empty": 11}


def test_fetch_and_filter_read_the_snapshot_and_drop_exactly_the_planted_rows(tmp_path):
    from sp2dpo.core.config import DataConfig, FilterConfig
    from sp2dpo.data import FetchPaths, FilterPaths, run_fetch, run_filter

    path = tmp_path / "train_prefs.jsonl.gz"
    info = snapshot.write_snapshot(H4_SAMPLE, path, rows=6000, seed=0)
    planted = info["planted"]
    assert planted == {"duplicate_prompt_id": 1, "empty_chosen": 4, "empty_rejected": 7, "both_empty": 1}
    fetched = run_fetch(DataConfig(source="local", path=str(path)),
                        FetchPaths(out=tmp_path / "fetched.parquet", report=tmp_path / "fetch.json"))
    assert fetched["rows"] == fetched["with_scores"] == 6000
    report = run_filter(FilterConfig(), FilterPaths(pairs=tmp_path / "fetched.parquet",
                                                    out=tmp_path / "filtered.parquet",
                                                    report=tmp_path / "filter.json"))
    assert report["rules"] == {"duplicate_prompt_id": 1, "empty_prompt": 0, "empty_chosen": 4,
                               "empty_rejected": 7}
    assert report["kept"] == info["expected_kept"] == 6000 - 1 - 4 - 7 + 1
    assert report["identical_replies_seen"] == info["identical_replies"] > 0
    assert info["unique_prompts"] == 5999


# ------------------------------------------------------------------------------ the students

MODEL_TYPES = {"qwen3": "qwen3", "gemma3": "gemma3_text", "mistral": "mistral", "llama": "llama"}
CLASSES = {"qwen3": "Qwen3ForCausalLM", "gemma3": "Gemma3ForCausalLM",
           "mistral": "MistralForCausalLM", "llama": "LlamaForCausalLM"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return students.build_students(tmp_path_factory.mktemp("students"), source=H4_SAMPLE)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(students.PAPER_STUDENTS))
def test_each_student_loads_as_its_architecture_with_the_lora_targets(built, name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = students.PAPER_STUDENTS[name]
    model = AutoModelForCausalLM.from_pretrained(built[name])
    tokenizer = AutoTokenizer.from_pretrained(built[name])
    assert model.config.model_type == MODEL_TYPES[arch]
    assert type(model).__name__ == CLASSES[arch]
    assert model.config.vocab_size == len(tokenizer) == students.VOCAB_SIZE
    layers = model.config.num_hidden_layers
    leaves = [n.rsplit(".", 1)[-1] for n, _ in model.named_modules()]
    for target in students.LORA_TARGETS:
        assert leaves.count(target) == layers, target
    # a forward pass and a few greedy tokens, through the chat template
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Name a primary colour."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert logits.shape == (1, ids["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_the_chat_template_renders_system_user_and_assistant_turns(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built["llama31_8b"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
                    "<|im_start|>assistant\nHello.<|im_end|>\n")
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_end|>")) == 3
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_the_tokenizer_gives_a_few_characters_per_token_on_the_shipped_texts(built):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built["qwen3_4b"])
    texts = students.source_texts(H4_SAMPLE)
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    assert 3.0 < sum(map(len, texts)) / tokens < 4.5


def test_building_again_gives_the_same_bytes_and_skips_a_current_folder(built, tmp_path):
    again = students.build_students(tmp_path / "again", source=H4_SAMPLE)
    for name, folder in built.items():
        assert _hashes(again[name]) == _hashes(folder), name
    mtimes = {p: p.stat().st_mtime_ns for p in again["mistral7b"].iterdir()}
    students.build_students(tmp_path / "again", ["mistral7b"], source=H4_SAMPLE)
    assert {p: p.stat().st_mtime_ns for p in again["mistral7b"].iterdir()} == mtimes
    # a changed file is noticed and the folder rebuilt to the same bytes
    (again["mistral7b"] / "config.json").write_text("{}")
    students.build_students(tmp_path / "again", ["mistral7b"], source=H4_SAMPLE)
    assert _hashes(again["mistral7b"]) == _hashes(built["mistral7b"])
    other = students.build_students(tmp_path / "seed1", ["mistral7b"], seed=1, source=H4_SAMPLE)
    assert _hashes(other["mistral7b"])["model.safetensors"] != _hashes(built["mistral7b"])["model.safetensors"]


def test_tokenizer_training_is_the_same_in_a_fresh_process(built):
    code = ("import hashlib, sys; from pathlib import Path; from sp2dpo.rehearse import students; "
            "t = students.train_tokenizer(Path(sys.argv[1])); "
            "print(hashlib.sha256(t.backend_tokenizer.to_str().encode()).hexdigest())")
    fresh = subprocess.run([sys.executable, "-c", code, str(H4_SAMPLE)], capture_output=True, text=True,
                           check=True, timeout=300, cwd=ROOT).stdout.strip()
    saved = json.loads((built["qwen3_4b"] / "tokenizer.json").read_text(encoding="utf-8"))
    from tokenizers import Tokenizer

    here = Tokenizer.from_str(json.dumps(saved)).to_str()
    assert fresh == hashlib.sha256(here.encode()).hexdigest()


def test_real_size_configs_have_the_published_sizes():
    import torch
    from transformers import AutoModelForCausalLM

    billions = {"qwen3": 4.02, "gemma3": 3.88, "mistral": 7.25, "llama": 8.03}
    for arch, expected in billions.items():
        config = students.real_size_config(arch)
        assert config.model_type == MODEL_TYPES[arch]
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        count = sum(p.numel() for p in model.parameters()) / 1e9
        assert count == pytest.approx(expected, abs=0.01), arch
    assert students.real_size_config("llama").rope_parameters["rope_type"] == "llama3"


def test_a_tiny_student_trains_through_the_train_stage(built, tmp_path):
    """The real train stage on the tiny Gemma 3 (sliding and full attention layers), LoRA on the
    paper's seven targets, reference log-probs precomputed."""
    from sp2dpo import train
    from sp2dpo.core import config
    from sp2dpo.core.config import DataConfig, FilterConfig
    from sp2dpo.data import FetchPaths, FilterPaths, run_fetch, run_filter

    path = tmp_path / "train_prefs.jsonl.gz"
    snapshot.write_snapshot(H4_SAMPLE, path, rows=24, seed=0)
    run_fetch(DataConfig(source="local", path=str(path)), FetchPaths(out=tmp_path / "f.parquet", report=tmp_path / "f.json"))
    run_filter(FilterConfig(), FilterPaths(pairs=tmp_path / "f.parquet", out=tmp_path / "p.parquet",
                                           report=tmp_path / "p.json"))
    ids = pd.read_parquet(tmp_path / "p.parquet")["prompt_id"]
    beta = pd.DataFrame({"prompt_id": ids, "prompt_variant_count": 3,
                         "beta_annotators_mean_ens": np.linspace(0.05, 0.25, len(ids))})
    beta.to_csv(tmp_path / "beta.csv", index=False)
    cfg = config.TrainConfig(
        students=[config.StudentConfig(name="gemma3_4b", model=str(built["gemma3_4b"]),
                                       per_device_train_batch_size=4, gradient_accumulation_steps=1)],
        methods=[config.MethodConfig(name="sp2dpo", beta_column="beta_annotators_mean_ens")],
        lora=dataclasses.replace(config.TrainConfig().lora, target_modules=list(students.LORA_TARGETS)),
        max_steps=2, max_length=192, max_prompt_length=96, precision="fp32", optim="adamw_torch",
        precompute_ref_log_probs=True, gradient_checkpointing=True, limit=8, seed=0,
    )
    paths = train.TrainPaths(pairs=tmp_path / "p.parquet", beta=tmp_path / "beta.csv",
                             adapter=tmp_path / "adapter", report=tmp_path / "r.json", curve=tmp_path / "c.csv")
    metrics = train.run(cfg, config.BetaConfig(), "gemma3_4b", "sp2dpo", paths, track=False)
    assert metrics["global_step"] == 2 and np.isfinite(metrics["train_loss"])
    adapter = json.loads((paths.adapter / "adapter_config.json").read_text())
    assert adapter["target_modules"] == sorted(students.LORA_TARGETS)
    assert adapter["base_model_name_or_path"] == str(built["gemma3_4b"])
