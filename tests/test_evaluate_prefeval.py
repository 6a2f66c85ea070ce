"""Tests of sp2dpo/evaluate/prefeval.py and ``sp2dpo prefeval``: the base model scores exactly
accuracy 0.5 with zero margins; a LoRA adapter's per-pair log-ratios equal an independent
plain transformers + peft computation; the scored tokens are what TRL and the trainer train on;
the seeded bootstrap; the pairs reader (Hub layout, degenerate rows, errors naming file, row
and field); a bad chat template, device or output path is refused before the model loads."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from sp2dpo.core.errors import OutputPathError
from sp2dpo.evaluate import prefeval, prefpairs
from sp2dpo.evaluate.answers import generate
from sp2dpo.evaluate.benchmarks.evalfiles import BenchmarkInputError
from sp2dpo.llm import models
from tests.conftest import EVALSETS, ROOT, tool_env

SPEC = "local:smollm2-135m-instruct"
HELD_OUT = EVALSETS / "ultrafeedback" / "uf_binarized_h4_test_prefs_500.jsonl.gz"
SP2DPO = Path(sys.executable).parent / "sp2dpo"
#: Short budgets keep the forward passes cheap; the long shipped rows get truncated by them.
MAX_LENGTH, MAX_PROMPT = 64, 40

#: Short pairs that fit whole in MAX_LENGTH (their end-of-turn tokens are scored).
SHORT_PAIRS = [
    ("What is 2 + 2?", "2 + 2 = 4.", "It is 5."),
    ("Name a colour.", "Blue.", "I cannot answer that."),
    ("Say hello in French.", "Bonjour!", "Hola!"),
    ("Is the sun a star?", "Yes, the Sun is a star.", "No."),
]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``sp2dpo ARGS`` with one torch thread (the shared CPU runs faster that way)."""
    return subprocess.run([str(SP2DPO), *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=timeout, env={**tool_env(), "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in this process too, restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return generate.load_tokenizer(SPEC)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """The short pairs, then the first shipped row (long: prompt and replies get truncated)."""
    rows = [{"prompt_id": f"short-{i}", "prompt": p, "chosen": c, "rejected": r}
            for i, (p, c, r) in enumerate(SHORT_PAIRS)]
    first = prefeval.read_pairs(HELD_OUT, limit=1).pairs[0]
    rows.append({"prompt_id": first.prompt_id, "prompt": first.prompt, "chosen": first.chosen,
                 "rejected": first.rejected})
    return _write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", rows)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A LoRA adapter with non-zero, seeded weights (A and B random), saved as train saves one."""
    import torch
    from peft import LoraConfig, get_peft_model

    folder = tmp_path_factory.mktemp("adapter")
    base, tok = models.load_causal_lm(SPEC)
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------ the base model


@pytest.mark.slow
def test_base_model_gives_accuracy_one_half_and_zero_margins(tmp_path):
    out = tmp_path / "pairs.jsonl"
    proc = cli("prefeval", "--model", SPEC, "--pairs", str(HELD_OUT.relative_to(ROOT)),
               "--limit", "6", "--max-length", "256", "--max-prompt-length", "128",
               "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n"] == 6 and result["n_ties"] == 6 and result["adapter"] is None
    assert result["accuracy"] == 0.5 and result["accuracy_ci"] == [0.5, 0.5]
    for key in ("mean_margin", "mean_chosen_logratio", "mean_rejected_logratio"):
        assert result[key] == 0.0 and result[f"{key}_ci"] == [0.0, 0.0], key
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt_id"] for r in records] == [
        p.prompt_id for p in prefeval.read_pairs(HELD_OUT, limit=6).pairs]
    assert all(r["margin"] == 0.0 and r["chosen_logratio"] == 0.0
               and r["rejected_logratio"] == 0.0 for r in records)
    wins = [1.0 if r["policy_chosen_logp"] > r["policy_rejected_logp"] else
            0.5 if r["policy_chosen_logp"] == r["policy_rejected_logp"] else 0.0 for r in records]
    assert 0.0 <= result["likelihood_accuracy"] <= 1.0
    assert result["likelihood_accuracy"] == pytest.approx(sum(wins) / 6, abs=1e-12)
    assert all(r["policy_chosen_logp"] < 0 and r["policy_rejected_logp"] < 0 for r in records)


# ------------------------------------------------------------------------------ an adapter


def _independent_logp(model, tok, prompt: str, reply: str) -> float:
    """Sum of the reply's token log-probs after the prompt, written from scratch: the chat
    template as text, tokens without extra specials, the trainer's truncation, log-softmax (in
    float64, so that this reference adds no rounding of its own)."""
    import torch

    user = [{"role": "user", "content": prompt}]
    prompt_text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full_text = tok.apply_chat_template(
        [*user, {"role": "assistant", "content": reply}], tokenize=False)
    assert full_text.startswith(prompt_text)
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tok(full_text, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    completion = full_ids[len(prompt_ids):]
    prompt_ids = prompt_ids[-MAX_PROMPT:]
    completion = completion[: MAX_LENGTH - len(prompt_ids)]
    ids = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logps = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    per_token = logps[torch.arange(len(targets)), targets]
    return float(per_token[len(prompt_ids) - 1:].sum())


@pytest.mark.slow
def test_adapter_log_ratios_equal_an_independent_computation(adapter, pairs_file, tmp_path):
    from peft import PeftModel

    out = tmp_path / "records.jsonl"
    result = prefeval.run(SPEC, adapter, pairs_file, max_length=MAX_LENGTH,
                          max_prompt_length=MAX_PROMPT, batch_size=2, rounds=200, out=out)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    pairs = prefeval.read_pairs(pairs_file).pairs
    assert result["n"] == len(records) == len(pairs) == 5  # batches of 2, 2 and 1 pairs
    assert [r["truncated"] for r in records] == [False] * 4 + [True]

    tok = generate.load_tokenizer(SPEC, adapter)
    reference = models.load_causal_lm(SPEC)[0].eval()
    policy = PeftModel.from_pretrained(models.load_causal_lm(SPEC)[0], str(adapter)).eval()
    margins, likelihood = [], []
    for pair, rec in zip(pairs, records, strict=True):
        pw, pl = (_independent_logp(policy, tok, pair.prompt, y) for y in (pair.chosen, pair.rejected))
        rw, rl = (_independent_logp(reference, tok, pair.prompt, y)
                  for y in (pair.chosen, pair.rejected))
        assert rec["policy_chosen_logp"] == pytest.approx(pw, abs=1e-4)
        assert rec["policy_rejected_logp"] == pytest.approx(pl, abs=1e-4)
        assert rec["chosen_logratio"] == pytest.approx(pw - rw, abs=1e-4)
        assert rec["rejected_logratio"] == pytest.approx(pl - rl, abs=1e-4)
        assert rec["margin"] == pytest.approx((pw - rw) - (pl - rl), abs=1e-4)
        margins.append((pw - rw) - (pl - rl))
        likelihood.append(pw - pl)
    margins_arr = np.asarray(margins)
    assert (np.abs(margins_arr) > 1e-3).all()  # a real adapter: no margin is 0
    assert result["n_ties"] == 0
    assert result["accuracy"] == pytest.approx(np.mean(margins_arr > 0), abs=1e-12)
    assert result["likelihood_accuracy"] == pytest.approx(np.mean(np.asarray(likelihood) > 0))
    assert result["mean_margin"] == pytest.approx(margins_arr.mean(), abs=1e-4)
    assert result["reference"] == "adapter disabled"


def test_scored_tokens_are_what_trl_and_the_trainer_train_on(tokenizer, pairs_file, tmp_path):
    """The prompt/completion split equals TRL's own ``_prepare_dataset``, and the truncated
    sequences equal what the trainer's dataset preparation and collator produce."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from sp2dpo.train.collate import BetaCollator
    from sp2dpo.train.trainer import PerPairBetaTrainer

    pairs = prefeval.read_pairs(pairs_file).pairs
    data = Dataset.from_dict({
        "prompt": [[{"role": "user", "content": p.prompt}] for p in pairs],
        "chosen": [[{"role": "assistant", "content": p.chosen}] for p in pairs],
        "rejected": [[{"role": "assistant", "content": p.rejected}] for p in pairs],
    })
    untruncated = DPOConfig(output_dir=str(tmp_path / "unused"), max_length=None,
                            report_to="none", bf16=False, use_cpu=True, save_strategy="no")
    stub = types.SimpleNamespace(_tokenizer=tokenizer)
    trl_rows = DPOTrainer._prepare_dataset(stub, data, tokenizer, untruncated, "held-out")
    for pair, row in zip(pairs, trl_rows, strict=True):
        ours = prefeval.tokenize_pair(tokenizer, pair, max_length=10**6, max_prompt_length=10**6 - 1)
        assert (ours.prompt_ids, ours.chosen_ids, ours.rejected_ids) == (
            row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])
        assert ours.chosen_ids[-2:] == tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]

    # The trainer: prompts keep their last max_prompt_length tokens, the collator the first
    # max_length tokens of prompt + completion.
    trainer = object.__new__(PerPairBetaTrainer)
    trainer.max_prompt_length, trainer._tokenizer = MAX_PROMPT, tokenizer
    args = DPOConfig(output_dir=str(tmp_path / "unused"), max_length=MAX_LENGTH,
                     report_to="none", bf16=False, use_cpu=True, save_strategy="no")
    prepared = trainer._prepare_dataset(data, tokenizer, args, "held-out")
    collator = BetaCollator(pad_token_id=tokenizer.pad_token_id, max_length=MAX_LENGTH)
    batch = collator([{**row, "beta": 0.1} for row in prepared])
    ours = [prefeval.tokenize_pair(tokenizer, p, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT)
            for p in pairs]
    mine = prefeval._collate(ours, tokenizer.pad_token_id)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert mine[key].tolist() == batch[key].tolist(), key


# ------------------------------------------------------------------------------ metrics


def _scores(margins, likelihood=None, seed=0) -> prefeval.PairScores:
    """Scores whose margins (and policy differences) are the given numbers."""
    margins = np.asarray(margins, dtype=float)
    n = len(margins)
    rng = np.random.default_rng(seed)
    policy_w = rng.normal(-50, 5, n)
    likelihood = rng.normal(0, 3, n) if likelihood is None else np.asarray(likelihood, float)
    policy_l = policy_w - likelihood
    ref_w = policy_w - rng.normal(0, 1, n)
    ref_l = policy_l - ((policy_w - ref_w) - margins)
    return prefeval.PairScores(
        prompt_ids=[str(i) for i in range(n)], policy_chosen=policy_w, policy_rejected=policy_l,
        ref_chosen=ref_w, ref_rejected=ref_l, chosen_tokens=np.ones(n, int),
        rejected_tokens=np.ones(n, int), truncated=np.zeros(n, bool), policy_has_adapter=True,
    )


def test_ties_count_one_half_and_the_bootstrap_is_seeded():
    exact = prefeval.summarize(_scores([1.0, 0.0, -1.0, 2.0], likelihood=[0.0, 1.0, 0.0, -1.0]),
                               rounds=0)
    assert exact["accuracy"] == 0.625 and exact["n_ties"] == 1
    assert exact["likelihood_accuracy"] == 0.5 and exact["n_likelihood_ties"] == 2
    assert exact["accuracy_ci"] is None

    scores = _scores(np.random.default_rng(1).normal(0.3, 1.0, 40))
    first = prefeval.summarize(scores, rounds=500, seed=42)
    assert first == prefeval.summarize(scores, rounds=500, seed=42)
    other = prefeval.summarize(scores, rounds=500, seed=7)
    keys = [k for k in first if k.endswith("_ci")]
    assert len(keys) == 7
    for key in keys:
        point = first[key.removesuffix("_ci")]
        low, high = first[key]
        assert low <= point <= high and low < high, key
    assert any(first[k] != other[k] for k in keys)
    assert first["accuracy"] == pytest.approx(np.mean(_win_count(scores.margins)))


def _win_count(diff: np.ndarray) -> np.ndarray:
    return np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0))


# ------------------------------------------------------------------------------ reading pairs


def test_shipped_sample_drops_identical_and_empty_pairs_and_limit_keeps_file_order():
    full = prefeval.read_pairs(HELD_OUT)
    assert (full.n_rows, full.n_dropped_identical, full.n_dropped_empty) == (500, 11, 2)
    assert len(full.pairs) == 487
    assert all(p.chosen != p.rejected and p.chosen.strip() for p in full.pairs)
    first = prefeval.read_pairs(HELD_OUT, limit=20)
    assert first.pairs == full.pairs[:20] and first.n_rows == 21  # row 19: identical replies
    assert first.pairs[0].prompt.startswith("You are given a sentence in Spanish")


def test_canonical_csv_and_parquet_read_like_jsonl(tmp_path, pairs_file):
    import pandas as pd

    frame = pd.read_json(pairs_file, lines=True, dtype=False)
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_parquet(tmp_path / "p.parquet", index=False)
    expected = prefeval.read_pairs(pairs_file).pairs
    assert prefeval.read_pairs(tmp_path / "p.csv").pairs == expected
    assert prefeval.read_pairs(tmp_path / "p.parquet").pairs == expected


def test_duplicate_json_key_in_a_pairs_file_names_file_line_and_key(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"prompt": "x", "chosen": "y", "rejected": "z"}\n'
                    '{"prompt": "x", "chosen": "y", "rejected": "z", "chosen": "w"}\n')
    with pytest.raises(BenchmarkInputError) as info:
        prefpairs.read_pairs(path)
    assert str(info.value) == f"{path}:2: invalid JSON: duplicate key 'chosen'"


def test_truncated_gzip_is_an_error_even_when_limit_stops_reading_early(tmp_path):
    import gzip

    rows = [{"prompt": f"question {i}", "chosen": f"good answer {i} " * 40,
             "rejected": f"bad answer {i} " * 40} for i in range(200)]
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    intact = tmp_path / "intact.jsonl.gz"
    intact.write_bytes(whole)
    assert [p.prompt for p in prefpairs.read_pairs(intact, limit=1).pairs] == ["question 0"]
    for cut_bytes in (3, 12, 200):
        cut = tmp_path / f"cut{cut_bytes}.jsonl.gz"
        cut.write_bytes(whole[:-cut_bytes])
        with pytest.raises(BenchmarkInputError) as info:
            prefpairs.read_pairs(cut, limit=1)
        assert str(info.value).startswith(f"{cut}: cannot read: ")
        assert "end-of-stream marker" in str(info.value)


def test_bad_pairs_file_is_one_error_line_naming_file_row_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt_id": "a", "prompt": "x", "chosen": "y", "rejected": "z"},
        {"prompt_id": "b", "prompt": "x", "rejected": "z"},
    ])
    proc = cli("prefeval", "--model", SPEC, "--pairs", str(path), "--json", timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"sp2dpo: error: {path} row 2 (line 2): missing field 'chosen'"]

    hub = _write_jsonl(tmp_path / "hub.jsonl", [
        {"prompt": "x", "chosen": [{"role": "user", "content": "x"}], "rejected": "z"}])
    with pytest.raises(BenchmarkInputError, match=r"hub.jsonl row 1 \(line 1\): field 'chosen' "
                       "has no assistant message"):
        prefeval.read_pairs(hub)
    pd_csv = tmp_path / "bad.csv"
    pd_csv.write_text("prompt_id,prompt,rejected\na,x,z\n")
    with pytest.raises(BenchmarkInputError, match=r"bad.csv row 1: missing field 'chosen'"):
        prefeval.read_pairs(pd_csv)
    with pytest.raises(ValueError, match="max_prompt_length"):
        prefeval.tokenize_pair(None, prefeval.Pair("a", "x", "y", "z"), max_length=32,
                               max_prompt_length=32)


# ------------------------------------------------------------------------------ bad options


@pytest.fixture
def no_model(monkeypatch):
    """A tripwire: the options below must be refused before any weights load."""
    def load_student(*args, **kwargs):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(generate, "load_student", load_student)


def test_missing_or_non_jinja_chat_template_is_refused_before_the_model_loads(pairs_file, no_model):
    hint = "(give a .jinja file or Jinja text)"
    cases = {"nonexist.jinja": f"chat template nonexist.jinja: no such file {hint}",
             "chatml": f"chat template chatml: no such file {hint}"}
    for value, message in cases.items():
        with pytest.raises(models.ModelOptionError) as refused:
            prefeval.run(SPEC, None, pairs_file, chat_template=value)
        assert str(refused.value) == message


def test_bad_device_is_refused_before_the_model_loads(pairs_file, no_model, monkeypatch):
    import torch

    with pytest.raises(models.ModelOptionError) as refused:
        prefeval.run(SPEC, None, pairs_file, device="bogus")
    assert str(refused.value) == "device 'bogus': not a torch device (cpu, cuda, cuda:0, ...)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(models.ModelOptionError, match=r"^device 'cuda:0': not available here"):
        prefeval.run(SPEC, None, pairs_file, device="cuda:0")


def test_out_that_is_the_pairs_a_folder_or_under_a_file_is_refused_before_the_model_loads(
    pairs_file, no_model, tmp_path
):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(pairs_file.read_bytes())
    folder = tmp_path / "records"
    folder.mkdir()
    cases = {
        tmp_path / "." / "pairs.jsonl": f"is the input {pairs}; write elsewhere",
        folder: "is a folder; give a file path",
        pairs / "records.jsonl": f"cannot be created, {pairs} is a file",
    }
    for out, reason in cases.items():
        with pytest.raises(OutputPathError) as refused:
            prefeval.run(SPEC, None, pairs, out=out)
        assert str(refused.value) == f"--out {out}: {reason}"
    assert pairs.read_bytes() == pairs_file.read_bytes() and not any(folder.iterdir())


def test_a_jinja_file_chat_template_is_the_one_scored(tokenizer, pairs_file, tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}\n{% endfor %}"
                        "{% if add_generation_prompt %}<<assistant>>{% endif %}")
    out = tmp_path / "records.jsonl"
    result = prefeval.run(SPEC, None, pairs_file, chat_template=str(template), limit=2,
                          max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT, rounds=0, out=out)
    assert result["n"] == 2 and result["accuracy"] == 0.5
    custom = generate.load_tokenizer(SPEC, chat_template=str(template))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for pair, record in zip(prefeval.read_pairs(pairs_file, 2).pairs, records, strict=True):
        ours = prefeval.tokenize_pair(custom, pair, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT)
        default = prefeval.tokenize_pair(tokenizer, pair, max_length=MAX_LENGTH,
                                         max_prompt_length=MAX_PROMPT)
        assert custom.decode(ours.chosen_ids) == pair.chosen + "\n"  # the reply and the template's end
        assert record["chosen_tokens"] == len(ours.chosen_ids) != len(default.chosen_ids)
        assert record["rejected_tokens"] == len(ours.rejected_ids) > 0
