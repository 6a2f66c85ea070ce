"""Tests for sp2dpo.llm.models: the packaged SmolLM2 GGUF converts to a trainable safetensors folder."""

from __future__ import annotations

import json

import pytest
import torch

from sp2dpo.llm import models

NAME = "smollm2-135m-instruct"


def test_cached_conversion_is_a_plain_trainable_folder():
    folder = models.ensure_converted(NAME)
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer.json").exists()
    model, tok = models.load_causal_lm(f"local:{NAME}")
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    assert tok.chat_template and tok.pad_token is not None
    # Trainable: a loss backpropagates into the weights.
    ids = tok("Hello there", return_tensors="pt").input_ids
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and model.get_input_embeddings().weight.grad is not None


def test_unknown_local_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="choose one of"):
        models.ensure_converted("nope")


@pytest.mark.slow
def test_convert_gguf_for_real(tmp_path):
    """The real conversion (GGUF -> dequantised safetensors) into a fresh folder."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    gguf = models.LOCAL_MODELS[NAME].gguf_path()
    out = models.convert_gguf(gguf, tmp_path / "smollm2")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert not list(tmp_path.glob(".smollm2.*"))  # the temporary folder was renamed, not left behind
    fresh = load_file(out / "model.safetensors")
    cached = load_file(models.ensure_converted(NAME) / "model.safetensors")
    assert fresh.keys() == cached.keys()
    for key in list(fresh)[:5]:
        torch.testing.assert_close(fresh[key], cached[key])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.float32
