"""The paper's four students as tiny random-weight models of their real architectures.

The rehearsal trains and evaluates the paper's students (Qwen3-4B, Gemma-3-4B, Mistral-7B,
Llama-3.1-8B) through the real train and eval code, on one CPU machine, over every one of the
~60k pairs at ``max_length`` 2048. :func:`build_students` writes, per student, a model folder of
the same architecture class as the real model (``Qwen3ForCausalLM``, ``Gemma3ForCausalLM``,
``MistralForCausalLM``, ``LlamaForCausalLM``), with the real model's structural settings (rotary
embedding type and base, grouped-query attention, Gemma's sliding-window and full-attention
layers, tied or untied output embeddings, activation, norm epsilon) and every size made tiny
(:data:`TINY_DIMS`, :data:`TINY_LAYERS`). Each layer has the seven LoRA targets of the paper
(``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj``).

All four share one small tokenizer (:func:`train_tokenizer`): a byte-level BPE of
:data:`VOCAB_SIZE` tokens trained with the ``tokenizers`` library on the texts of the shipped
500 UltraFeedback rows (about 3.4 characters per token on them, against about 4 for the real
models' 32k-262k vocabularies, so sequence lengths in tokens stay close to the real ones), plus
three special tokens and a ChatML chat template (:data:`CHAT_TEMPLATE`: system, user and
assistant turns; ``<|im_end|>`` ends a turn and is the EOS). The training is deterministic: the
same texts in the same order give the same ``tokenizer.json`` bytes in any process (checked by
the tests).

**Cost.** At this size the weights cost nothing; the reference pass is bounded by what TRL does
per position on CPU: its fused LM head scores every position of the padded batch (prompt and
padding included) over the whole vocabulary, in chunks of 32,768 positions x vocabulary floats,
and attention runs with a padding mask. glibc hands each of those large temporaries back to the
kernel and faults it in again on the next chunk; a process started with
``MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TRIM_THRESHOLD_=2147483647`` keeps them, which made the
reference pass 2 to 2.6 times faster on 2 CPU cores (the same numbers; resident memory about
2 GiB instead of 1.3 at length 2048). Measured there, with those variables, one thread, the
paper's lengths: 54 s per 1,000 pairs for the tiny Qwen3 at one pair per batch, 70 s for the
two-layer Gemma 3, 80 to 110 s at the paper's batches of 4 and 8 (padding to the batch's
longest pair). A smaller ``vocab_size`` is cheaper but gives fewer characters per token (1,024
tokens: about 2.4, and about 30% less time).

A folder is an ordinary ``from_pretrained`` folder (``model.safetensors``, ``config.json``,
``generation_config.json``, the tokenizer files, ``chat_template.jinja``), usable anywhere a model
spec goes (``train.students[].model``: its path), plus ``rehearse-student.json``, the manifest
that lets a second build with the same inputs skip the work (:func:`build_students`). The same
seed, source file and library versions give the same bytes.

:func:`real_size_config` gives the real models' published dimensions, for sizing the GPU run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sp2dpo.core import artifacts, jsonio
from sp2dpo.core.config import DataConfig

#: The paper's students (``train.students[].name`` of profiles/paper-students.yaml) and the
#: architecture each one is.
PAPER_STUDENTS: dict[str, str] = {
    "qwen3_4b": "qwen3",
    "gemma3_4b": "gemma3",
    "mistral7b": "mistral",
    "llama31_8b": "llama",
}
#: The real model behind each student name (profiles/paper-students.yaml).
PAPER_MODELS: dict[str, str] = {
    "qwen3_4b": "Qwen/Qwen3-4B-Instruct-2507",
    "gemma3_4b": "google/gemma-3-4b-it",
    "mistral7b": "mistralai/Mistral-7B-Instruct-v0.3",
    "llama31_8b": "meta-llama/Llama-3.1-8B-Instruct",
}
#: The LoRA targets of the paper (``train.lora.target_modules``); every tiny model has them all.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

#: The shipped texts the tokenizer is trained on (``data.path``'s default).
DEFAULT_SOURCE = Path(DataConfig().path)
#: Tokens of the shared tokenizer, special tokens included.
VOCAB_SIZE = 4096
#: End of text (the pad token), start of a turn, end of a turn (the EOS).
PAD_TOKEN, TURN_START, TURN_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, TURN_START, TURN_END)
#: ChatML: ``<|im_start|>ROLE\\nTEXT<|im_end|>\\n`` per message (system, user, assistant alike),
#: and ``<|im_start|>assistant\\n`` as the generation prompt.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
#: The tiny sizes of every architecture: hidden size 32, 2 query heads sharing 1 key/value head
#: (grouped-query attention, as in all four real models), head size 16, MLP size 64.
TINY_DIMS: dict[str, int] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
}
#: Layers of each tiny model: one, except Gemma 3's two (one sliding-window layer, one
#: full-attention layer, so both of its attention paths run). A second layer costs about a
#: quarter more time in the reference pass at length 2048.
TINY_LAYERS: dict[str, int] = {"qwen3": 1, "gemma3": 2, "mistral": 1, "llama": 1}
#: Name of the manifest written into every student folder.
MANIFEST = "rehearse-student.json"
#: Bumped whenever the construction changes, so older folders are rebuilt.
BUILD_VERSION = 1

# The real models' dimensions and structural settings, from each model's published config.json
# on the Hugging Face Hub (the `text_config` of google/gemma-3-4b-it; keys the file leaves out
# take the transformers defaults, which are that model's: Gemma 3's head_dim 256,
# query_pre_attn_scalar 256, local rope base 10,000, vocabulary 262,208, one full-attention layer
# in 6; Mistral's head_dim 128 = 4096 / 32). Rope settings in transformers 5's `rope_parameters`
# form (`rope_theta` and `rope_scaling` of the file).
_REAL: dict[str, dict[str, Any]] = {
    # Qwen/Qwen3-4B-Instruct-2507
    "qwen3": {
        "vocab_size": 151_936, "hidden_size": 2560, "intermediate_size": 9728,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "hidden_act": "silu", "max_position_embeddings": 262_144, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0},
        "tie_word_embeddings": True, "attention_bias": False, "use_sliding_window": False,
        "sliding_window": None, "max_window_layers": 36,
    },
    # google/gemma-3-4b-it, text_config (Gemma3ForCausalLM is its text model)
    "gemma3": {
        "vocab_size": 262_208, "hidden_size": 2560, "intermediate_size": 10_240,
        "num_hidden_layers": 34, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131_072,
        "rms_norm_eps": 1e-6, "query_pre_attn_scalar": 256, "sliding_window": 1024,
        "rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        "final_logit_softcapping": None, "attn_logit_softcapping": None,
        "tie_word_embeddings": True, "attention_bias": False,
    },
    # mistralai/Mistral-7B-Instruct-v0.3
    "mistral": {
        "vocab_size": 32_768, "hidden_size": 4096, "intermediate_size": 14_336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "hidden_act": "silu", "max_position_embeddings": 32_768, "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "sliding_window": None, "tie_word_embeddings": False,
    },
    # meta-llama/Llama-3.1-8B-Instruct
    "llama": {
        "vocab_size": 128_256, "hidden_size": 4096, "intermediate_size": 14_336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "hidden_act": "silu", "max_position_embeddings": 131_072, "rms_norm_eps": 1e-5,
        "rope_parameters": {
            "rope_type": "llama3", "rope_theta": 500_000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        },
        "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    },
}
#: Gemma 3's layer pattern at tiny size: one sliding-window layer, one full-attention layer (the
#: real model has five sliding layers per full one), so both attention paths run.
_TINY_GEMMA_LAYERS = ["sliding_attention", "full_attention"]


def _config_class(arch: str) -> type:
    import transformers

    names = {"qwen3": "Qwen3Config", "gemma3": "Gemma3TextConfig", "mistral": "MistralConfig",
             "llama": "LlamaConfig"}
    if arch not in names:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(names)}")
    return getattr(transformers, names[arch])


def real_size_config(arch: str) -> Any:
    """The transformers config of the real model of ``arch`` (``qwen3``, ``gemma3``, ``mistral``,
    ``llama``: the values of :data:`PAPER_STUDENTS`), with its published dimensions.

    >>> real_size_config("llama").hidden_size
    4096
    """
    settings = json.loads(json.dumps(_REAL.get(arch, {})))  # a deep copy: configs keep the dicts
    return _config_class(arch)(**settings)


def tiny_config(arch: str, tokenizer: Any) -> Any:
    """The tiny config of ``arch``: the real model's settings with :data:`TINY_DIMS`, the shared
    tokenizer's vocabulary and special token ids."""
    settings = json.loads(json.dumps(_REAL.get(arch, {})))
    _config_class(arch)  # refuses an unknown name
    settings.update(TINY_DIMS, num_hidden_layers=TINY_LAYERS[arch])
    settings.update(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids(TURN_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
    )
    if arch == "gemma3":
        settings.update(query_pre_attn_scalar=TINY_DIMS["head_dim"], layer_types=list(_TINY_GEMMA_LAYERS))
    if arch == "qwen3":
        settings["max_window_layers"] = TINY_LAYERS[arch]
    return _config_class(arch)(**settings)


# ------------------------------------------------------------------------------ the tokenizer


def source_texts(source: Path) -> list[str]:
    """The texts the tokenizer learns from: each row's prompt, chosen and rejected reply, in file
    order (blank ones left out)."""
    texts: list[str] = []
    for _, record in jsonio.iter_jsonl(source):
        for field in ("prompt", "chosen", "rejected"):
            value = record.get(field)
            if isinstance(value, list):
                value = value[-1]["content"] if value else ""
            if isinstance(value, str) and value.strip():
                texts.append(value)
    if not texts:
        raise ValueError(f"{source}: no text to train a tokenizer on")
    return texts


def train_tokenizer(source: Path = DEFAULT_SOURCE, vocab_size: int = VOCAB_SIZE) -> Any:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``source``'s texts, as a
    transformers fast tokenizer with the ChatML template, ``<|im_end|>`` as EOS and
    ``<|endoftext|>`` as pad.

    Byte-level: every text encodes (no unknown token). Deterministic: merges are learnt from
    counts, ties broken by the pair itself, so the same texts give the same ``tokenizer.json``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(source_texts(Path(source)), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=TURN_END,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=131_072,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )


# ------------------------------------------------------------------------------ the students


def _build_key(arch: str, seed: int, source_sha: str, vocab_size: int) -> str:
    """What a folder's bytes depend on: the construction, the architecture, the seed, the
    source texts and the library versions."""
    import tokenizers
    import torch
    import transformers

    parts = {
        "build_version": BUILD_VERSION, "arch": arch, "seed": seed, "source_sha256": source_sha,
        "tiny_dims": TINY_DIMS, "layers": TINY_LAYERS[arch], "vocab_size": vocab_size,
        "chat_template": CHAT_TEMPLATE,
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: artifacts.sha256_file(p) for p in sorted(folder.iterdir())
            if p.is_file() and p.name != MANIFEST}


def _is_current(folder: Path, key: str) -> bool:
    """The folder holds a finished build with this key, every file as the manifest lists it."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("build_key") == key and manifest.get("files") == _file_hashes(folder)


def _write_model(folder: Path, arch: str, tokenizer: Any, seed: int) -> None:
    """Save the tiny random-weight model of ``arch`` and the tokenizer into ``folder`` (files
    with the mode a plain ``open()`` gives, as every artifact)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.utils import logging as hf_logging

    config = tiny_config(arch, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per tiny file
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(folder)
    for path in folder.iterdir():
        os.chmod(path, artifacts.FILE_MODE)


@contextlib.contextmanager
def _scratch(parent: Path, name: str) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_folder(new: Path, target: Path) -> None:
    """Put the finished folder ``new`` at ``target``: renamed in, the old one renamed away first."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.chmod(new, 0o777 & ~(0o666 & ~artifacts.FILE_MODE))  # as mkdir gives (mkdtemp: 0700)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def build_students(
    out_dir: Path,
    names: list[str] | None = None,
    seed: int = 0,
    *,
    source: Path = DEFAULT_SOURCE,
    vocab_size: int = VOCAB_SIZE,
) -> dict[str, Path]:
    """Write one tiny student folder per name into ``out_dir`` (``out_dir/<name>``).

    Args:
        out_dir: the parent folder.
        names: student names, keys of :data:`PAPER_STUDENTS` (default: all four).
        seed: the weights' seed (``torch.manual_seed`` before each model is made).
        source: the texts the shared tokenizer is trained on (default: the shipped 500 rows at
            ``data.path``'s default, relative to the working folder as every params path).
        vocab_size: tokens of the shared tokenizer (:data:`VOCAB_SIZE`; smaller is cheaper).

    Returns:
        The folder of each student, by name: pass it as ``train.students[].model``.

    A folder whose manifest has this build's key (:func:`_build_key`) and whose files still have
    the listed sha256 is left untouched, without training the tokenizer or making a model; any
    other is rebuilt in a scratch folder beside it and renamed in (a half-written folder is never
    seen). A full build of the four takes a few seconds.
    """
    out_dir = Path(out_dir)
    names = list(PAPER_STUDENTS) if names is None else list(names)
    unknown = [n for n in names if n not in PAPER_STUDENTS]
    if unknown:
        raise ValueError(f"unknown student(s) {unknown}; choose from {', '.join(PAPER_STUDENTS)}")
    source_sha = artifacts.sha256_file(artifacts.check_input(source))
    folders = {name: out_dir / name for name in names}
    keys = {name: _build_key(PAPER_STUDENTS[name], seed, source_sha, vocab_size) for name in names}
    stale = [name for name in names if not _is_current(folders[name], keys[name])]
    if not stale:
        return folders
    tokenizer = train_tokenizer(Path(source), vocab_size)
    for name in stale:
        arch = PAPER_STUDENTS[name]
        with _scratch(out_dir, name) as tmp:
            _write_model(tmp, arch, tokenizer, seed)
            manifest = {
                "student": name, "architecture": arch, "real_model": PAPER_MODELS[name],
                "seed": seed, "build_key": keys[name],
                "tiny_dims": {**TINY_DIMS, "num_hidden_layers": TINY_LAYERS[arch]},
                "vocab_size": len(tokenizer), "files": _file_hashes(tmp),
            }
            artifacts.write_json(manifest, tmp / MANIFEST)
            _replace_folder(tmp, folders[name])
    return folders
