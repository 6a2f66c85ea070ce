"""Tests for sp2dpo.llm.models: the packaged SmolLM2 GGUF converts to a trainable safetensors folder;
a chat template is a template file or Jinja text, anything else one error line; a device is checked
before any model loads."""

from __future__ import annotations

import json

import pytest
import torch

from sp2dpo.llm import models
from tests.conftest import SHORT_TEMPLATE

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


def test_chat_template_is_a_template_file_or_jinja_text(tmp_path):
    jinja = tmp_path / "t.jinja"
    jinja.write_text(SHORT_TEMPLATE)
    plain = tmp_path / "chatml.txt"  # an existing file is read whatever its suffix
    plain.write_text("{{ messages[0]['content'] }}")
    assert models.chat_template_text(str(jinja)) == SHORT_TEMPLATE
    assert models.chat_template_text(str(plain)) == "{{ messages[0]['content'] }}"
    assert models.chat_template_text(SHORT_TEMPLATE) == SHORT_TEMPLATE
    assert models.chat_template_text("{{ messages[0]['content'] }}") == "{{ messages[0]['content'] }}"


def test_chat_template_that_is_neither_a_file_nor_jinja_text_is_refused(tmp_path):
    folder = tmp_path / "t.jinja"
    folder.mkdir()
    hint = "(give a .jinja file or Jinja text)"
    cases = {
        "nonexist.jinja": f"chat template nonexist.jinja: no such file {hint}",
        "templates/chatml": f"chat template templates/chatml: no such file {hint}",
        str(folder): f"chat template {folder}: is a folder, not a file {hint}",
        "Hello {name}": f"chat template Hello {{name}}: not a file and no Jinja syntax ({{{{ or {{%) {hint}",
    }
    for value, message in cases.items():
        with pytest.raises(models.ModelOptionError) as refused:
            models.chat_template_text(value)
        assert str(refused.value) == message
        assert isinstance(refused.value, ValueError)


def test_check_device_accepts_torch_devices_and_refuses_the_rest(monkeypatch):
    for device in (None, "cpu", "cpu:0"):
        models.check_device(device)
    hint = "not a torch device (cpu, cuda, cuda:0, ...)"
    for device in ("bogus", "cuda:x", "CUDA", ""):
        with pytest.raises(models.ModelOptionError) as refused:
            models.check_device(device)
        assert str(refused.value) == f"device {device!r}: {hint}"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.mps, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", "mps", "meta"):
        with pytest.raises(models.ModelOptionError, match=f"^device '{device}': not available here"):
            models.check_device(device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    models.check_device("cuda")
    models.check_device("cuda:0")
    with pytest.raises(models.ModelOptionError) as refused:
        models.check_device("cuda:1")
    assert str(refused.value) == "device 'cuda:1': this machine has 1 cuda device(s) (cuda:0 to cuda:0)"


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
