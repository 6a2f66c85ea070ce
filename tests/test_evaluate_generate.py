"""Tests of student generation (`sp2dpo.evaluate.answers.generate`) with the real SmolLM2-135M-Instruct.

The slow tests load the packaged student once per module; the adapter test builds a tiny LoRA
adapter in a temporary folder (as `train` saves one: adapter + tokenizer + chat template)
instead of relying on `models/`, which are DVC outputs absent from a fresh clone.
"""

from __future__ import annotations

import dataclasses

import pytest

from sp2dpo.core.config import GenerationConfig, StudentConfig
from sp2dpo.evaluate.answers import generate as gen
from sp2dpo.llm import models

INSTRUCTIONS = [
    "What is the capital of France?",
    "Give two tips for sleeping better.",
    "Translate 'good morning' into Spanish.",
    "Name a prime number greater than 10.",
]
SETTINGS = GenerationConfig(max_new_tokens=12, batch_size=4, max_input_tokens=256)


def test_generator_name_and_model_outputs_format():
    assert gen.generator_name("smollm2") == "smollm2-base"
    assert gen.generator_name("smollm2", "sp2dpo") == "smollm2-sp2dpo"
    records = [{"instruction": "b?", "dataset": "koala"}, {"instruction": "a?"}]
    out = gen.model_outputs(records, ["B", "A"], "smollm2-dpo")
    assert out == [
        {"instruction": "b?", "output": "B", "generator": "smollm2-dpo", "dataset": "koala"},
        {"instruction": "a?", "output": "A", "generator": "smollm2-dpo", "dataset": None},
    ]
    assert list(out[0]) == ["instruction", "output", "generator", "dataset"]
    with pytest.raises(ValueError, match="1 outputs for 2 instructions"):
        gen.model_outputs(records, ["x"], "g")


@pytest.fixture(scope="module")
def student():
    return gen.load_student("local:smollm2-135m-instruct", device="cpu")


@pytest.mark.slow
def test_prompt_uses_chat_template_and_keeps_the_instruction_start(student):
    _, tokenizer = student
    ids = gen.render_prompt(tokenizer, "What is 2 + 2?", 256)
    text = tokenizer.decode(ids)
    assert "<|im_start|>user\nWhat is 2 + 2?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    long = " ".join(f"word{i}" for i in range(400))
    ids = gen.render_prompt(tokenizer, long, 64)
    text = tokenizer.decode(ids)
    assert len(ids) <= 64 and "word0 word1" in text and "word399" not in text
    assert text.endswith("<|im_start|>assistant\n")  # the framing is never cut
    with pytest.raises(ValueError, match="smaller than the chat framing"):
        gen.render_prompt(tokenizer, long, 8)


def test_conversation_prompt_cuts_only_the_last_user_message():
    """Multi-turn prompts (MT-Bench turn 2): the budget cuts the last user message from its end;
    the framing, the earlier turns and the generation prompt are kept."""
    tokenizer = gen.load_tokenizer("local:smollm2-135m-instruct")
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    one = gen.user_turn("What is 2 + 2?")
    single = gen.render_prompt(tokenizer, "What is 2 + 2?", 256)
    assert gen.render_conversation(tokenizer, one, 256) == single
    long = " ".join(f"word{i}" for i in range(400))
    talk = [
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello there!"},
        {"role": "user", "content": long},
    ]
    fitted, ids = gen.fit_conversation(tokenizer, talk, 96)
    text = tokenizer.decode(ids)
    assert len(ids) <= 96 and fitted[:2] == talk[:2]
    kept = fitted[2]["content"]
    assert kept == long[: len(kept)] and "word0 word1" in kept
    assert "word399" not in text and "<|im_start|>assistant\nHello there!<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    short = [*talk[:2], {"role": "user", "content": "Hi"}]
    assert gen.fit_conversation(tokenizer, short, 96)[0] == short  # nothing cut when it fits
    with pytest.raises(ValueError, match="smaller than the chat framing and the earlier turns"):
        gen.fit_conversation(tokenizer, [{"role": "user", "content": long}, *talk[1:]], 96)
    with pytest.raises(ValueError, match="must end with a user message"):
        gen.fit_conversation(tokenizer, talk[:2], 96)


@pytest.mark.slow
def test_conversations_are_answered_with_counts_and_equal_single_turn_generate(student):
    model, tokenizer = student
    talks = [gen.user_turn(INSTRUCTIONS[0]), gen.user_turn(INSTRUCTIONS[1]), [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And of Spain?"},
    ]]
    settings = dataclasses.replace(SETTINGS, batch_size=2)
    batches = list(gen.generate_conversations(model, tokenizer, talks, settings, max_new_tokens=5))
    assert [len(b) for b in batches] == [2, 1]  # yielded one batch at a time, in order
    answers = [a for batch in batches for a in batch]
    assert all(1 <= a.completion_tokens <= 5 for a in answers)
    assert all(a.finish_reason in ("stop", "length") for a in answers)
    assert answers[0].prompt_tokens == len(gen.render_prompt(tokenizer, INSTRUCTIONS[0], 256))
    assert answers[2].prompt_tokens == len(gen.render_conversation(tokenizer, talks[2], 256))
    # Single-turn conversations give what generate gives for the instructions (same batch).
    plain = gen.generate(model, tokenizer, INSTRUCTIONS[:2], settings, max_new_tokens=5)
    assert [answers[0].text, answers[1].text] == plain


@pytest.mark.slow
def test_greedy_generation_is_deterministic_and_batch_invariant(student):
    model, tokenizer = student
    batched = gen.generate(model, tokenizer, INSTRUCTIONS, SETTINGS)
    assert len(batched) == len(INSTRUCTIONS) and all(isinstance(a, str) and a for a in batched)
    assert all(a == a.strip() and "<|im_end|>" not in a for a in batched)
    assert "Paris" in batched[0]
    assert gen.generate(model, tokenizer, INSTRUCTIONS, SETTINGS) == batched
    single = gen.generate(model, tokenizer, INSTRUCTIONS, dataclasses.replace(SETTINGS, batch_size=1))
    assert single == batched
    # The per-call cap overrides the settings' (IFEval uses its own).
    short = gen.generate(model, tokenizer, INSTRUCTIONS[:1], SETTINGS, max_new_tokens=2)
    assert len(tokenizer(short[0], add_special_tokens=False)["input_ids"]) <= 2


@pytest.mark.slow
def test_sampling_is_seeded(student):
    model, tokenizer = student
    sampled = dataclasses.replace(SETTINGS, temperature=1.0, top_p=0.95, max_new_tokens=8)
    first = gen.generate(model, tokenizer, INSTRUCTIONS[:2], sampled)
    assert gen.generate(model, tokenizer, INSTRUCTIONS[:2], sampled) == first
    other = gen.generate(model, tokenizer, INSTRUCTIONS[:2], dataclasses.replace(sampled, seed=7))
    assert other != first


@pytest.mark.slow
def test_generate_outputs_keeps_order_and_alpaca_eval_format(student):
    model, tokenizer = student
    records = [{"instruction": t, "dataset": f"d{i}"} for i, t in enumerate(INSTRUCTIONS[:3])]
    settings = dataclasses.replace(SETTINGS, max_new_tokens=4)
    out = gen.generate_outputs(model, tokenizer, records, settings, "smollm2-base")
    assert [r["instruction"] for r in out] == INSTRUCTIONS[:3]
    assert [r["dataset"] for r in out] == ["d0", "d1", "d2"]
    assert {r["generator"] for r in out} == {"smollm2-base"}
    assert all(set(r) == {"instruction", "output", "generator", "dataset"} for r in out)


@pytest.mark.slow
def test_adapter_is_loaded_merged_and_its_tokenizer_used(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    base, tokenizer = models.load_causal_lm("local:smollm2-135m-instruct")
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, lora)
    adapter = tmp_path / "smollm2-test"
    peft_model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)  # as train does: tokenizer + chat_template.jinja
    assert (adapter / "adapter_config.json").exists()

    plain, _ = gen.load_student("local:smollm2-135m-instruct", device="cpu")
    tuned, tuned_tok = gen.load_student("local:smollm2-135m-instruct", adapter=adapter, device="cpu")
    assert not hasattr(tuned, "peft_config")  # merged into a plain model
    ids = torch.tensor([gen.render_prompt(tuned_tok, "Hello!", 64)])
    with torch.inference_mode():
        assert not torch.allclose(plain(ids).logits, tuned(ids).logits)
    out = gen.generate(tuned, tuned_tok, INSTRUCTIONS[:2], dataclasses.replace(SETTINGS, max_new_tokens=4))
    assert len(out) == 2 and all(isinstance(a, str) for a in out)

    # The student's chat-template override (a .jinja path) replaces the saved one.
    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<<assistant>>{% endif %}"
    )
    student_cfg = StudentConfig(chat_template=str(template))
    _, custom_tok = gen.load_student(student_cfg, adapter, device="cpu")
    assert custom_tok.decode(gen.render_prompt(custom_tok, "Hi", 64)) == "<<user>>Hi\n<<assistant>>"
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter"):
        gen.load_student("local:smollm2-135m-instruct", adapter=tmp_path, device="cpu")
