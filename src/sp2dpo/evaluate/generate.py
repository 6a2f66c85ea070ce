"""Student answers to evaluation instructions, in AlpacaEval's model-outputs format.

:func:`load_student` loads the student (a ``train.students[]`` entry or a model spec)'s base model (a model spec at a pinned revision, through
:func:`sp2dpo.llm.models.load_causal_lm`) and optionally a trained PEFT LoRA adapter folder
(``models/<student>/<method>/``), merged into the weights for inference. The tokenizer is the
adapter folder's when it holds one (the tokenizer and chat template used in training), else the
base model's; ``train.students[].chat_template`` (a Jinja string or a ``.jinja`` path) overrides
the template. Device: CUDA in bfloat16 when available, else CPU in float32 (the default
everywhere tests run).

:func:`generate` answers each instruction as a single user turn rendered with the chat template
and its generation prompt. Prompts are left-padded and batched by ``batch_size``; decoding is
greedy when ``temperature == 0``, else sampling seeded with ``seed`` (re-seeded per batch, with
``seed + batch index``, so a run reproduces itself). An instruction longer than the prompt budget
keeps its first tokens: the instruction itself is cut, never the chat framing or the generation
prompt, so the rendered prompt has at most ``max_input_tokens`` tokens. The answer is the decoded
continuation without special tokens, stripped of surrounding white space.

Batch composition: with left padding, the padded rows see masked keys and shifted positions
(position ids follow the attention mask), so greedy answers equal unbatched ones up to float
noise in the attention sums; on CPU fp32 the tests find them identical for short instructions,
but a near-tie between two tokens may in principle flip. Use ``batch_size: 1`` for strict
batch-independence.

:func:`model_outputs` builds the records ``{"instruction", "output", "generator", "dataset"}``
in the order given; :func:`generator_name` names them ``<student>-<method>`` (``smollm2-base``
for the base model).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sp2dpo.core.config import GenerationConfig, StudentConfig
from sp2dpo.llm import models

log = logging.getLogger(__name__)

#: The method name of the untrained student.
BASE_METHOD = "base"


def generator_name(student: str, method: str = BASE_METHOD) -> str:
    """The AlpacaEval ``generator`` of a student and method.

    >>> generator_name("smollm2", "sp2dpo")
    'smollm2-sp2dpo'
    """
    return f"{student}-{method}"


def _device_and_dtype(device: str | None) -> tuple[str, str]:
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device, ("bfloat16" if device.startswith("cuda") else "float32")


def load_student(
    student: StudentConfig | str,
    adapter: str | Path | None = None,
    *,
    revision: str | None = None,
    chat_template: str | None = None,
    device: str | None = None,
    merge: bool = True,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` ready for :func:`generate` (eval mode, left padding).

    Args:
        student: a ``train.students[]`` entry (its model, revision and chat template), or a model
            spec (``local:smollm2-135m-instruct``, an HF id or a folder).
        adapter: a PEFT adapter folder (``models/<student>/<method>``); None: the base model.
        revision: pinned revision of an HF id (default: the entry's).
        chat_template: a Jinja string or ``.jinja`` path overriding the tokenizer's template
            (default: the entry's).
        device: ``cpu`` or ``cuda[:i]``; None: CUDA when available.
        merge: merge the LoRA weights into the base model (faster inference).

    Raises:
        FileNotFoundError: ``adapter`` is not a PEFT adapter folder.
        ValueError: no chat template (neither the tokenizer's nor an override).
    """
    from transformers import AutoTokenizer

    if isinstance(student, StudentConfig):
        spec = student.model
        revision = student.revision if revision is None else revision
        chat_template = student.chat_template if chat_template is None else chat_template
    else:
        spec = student
    device, dtype = _device_and_dtype(device)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")
    model, tokenizer = models.load_causal_lm(spec, revision=revision, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        adapter = Path(adapter)
        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
        if (adapter / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    if chat_template:
        tokenizer.chat_template = models.chat_template_text(chat_template)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{spec}: the tokenizer has no chat template; set train.students[].chat_template"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.to(device)
    model.eval()
    return model, tokenizer


def render_prompt(tokenizer: Any, instruction: str, max_input_tokens: int) -> list[int]:
    """Token ids of one instruction as a single user turn with the generation prompt, the
    instruction cut to its first tokens when the whole would exceed ``max_input_tokens``."""

    def ids(text: str) -> list[int]:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]

    full = ids(instruction)
    if len(full) <= max_input_tokens:
        return full
    offsets = tokenizer(instruction, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    keep = max(0, len(offsets) - (len(full) - max_input_tokens))
    while True:  # re-tokenising at the cut may merge differently: shrink until it fits
        cut = instruction[: offsets[keep - 1][1]] if keep else ""
        out = ids(cut)
        if len(out) <= max_input_tokens or keep == 0:
            break
        keep -= 1
    if len(out) > max_input_tokens:
        raise ValueError(
            f"max_input_tokens={max_input_tokens} is smaller than the chat framing ({len(out)} tokens)"
        )
    log.debug("instruction cut to %d tokens to fit %d", keep, max_input_tokens)
    return out


def generate(
    model: Any,
    tokenizer: Any,
    instructions: Sequence[str],
    settings: GenerationConfig,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Answer each instruction; answers in the order of ``instructions``.

    Args:
        model: a causal LM (from :func:`load_student`).
        tokenizer: its tokenizer, with a chat template.
        instructions: the user messages.
        settings: ``eval.generation`` (batch size, greedy or seeded sampling, prompt budget).
        max_new_tokens: overrides ``settings.max_new_tokens`` (IFEval has its own cap).

    Returns:
        The decoded continuations, special tokens removed, stripped.
    """
    import torch

    cap = settings.max_new_tokens if max_new_tokens is None else max_new_tokens
    pad_id = tokenizer.pad_token_id
    device = next(model.parameters()).device
    do_sample = settings.temperature > 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": cap,
        "do_sample": do_sample,
        "pad_token_id": pad_id,
        "repetition_penalty": settings.repetition_penalty,
    }
    if do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    answers: list[str] = []
    started = time.perf_counter()
    for index, start in enumerate(range(0, len(instructions), settings.batch_size)):
        batch = instructions[start : start + settings.batch_size]
        rows = [render_prompt(tokenizer, text, settings.max_input_tokens) for text in batch]
        width = max(len(row) for row in rows)
        input_ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows])
        attention = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        torch.manual_seed(settings.seed + index)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs
            )
        for sequence in out[:, width:]:
            answers.append(tokenizer.decode(sequence, skip_special_tokens=True).strip())
    log.info(
        "generated %d answers in %.1fs (batch %d)",
        len(answers),
        time.perf_counter() - started,
        settings.batch_size,
    )
    return answers


def model_outputs(
    records: Sequence[Mapping[str, Any]], outputs: Sequence[str], generator: str
) -> list[dict[str, Any]]:
    """AlpacaEval model-outputs records ``{"instruction", "output", "generator", "dataset"}``.

    Args:
        records: the evaluation items (``instruction`` and, when known, ``dataset``), in order.
        outputs: one answer per item.
        generator: the generator name (:func:`generator_name`).
    """
    if len(records) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(records)} instructions")
    return [
        {
            "instruction": record["instruction"],
            "output": output,
            "generator": generator,
            "dataset": record.get("dataset"),
        }
        for record, output in zip(records, outputs, strict=True)
    ]


def generate_outputs(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    settings: GenerationConfig,
    generator: str,
    max_new_tokens: int | None = None,
) -> list[dict[str, Any]]:
    """:func:`generate` over ``records`` (``instruction``, ``dataset``) into model outputs."""
    answers = generate(
        model, tokenizer, [r["instruction"] for r in records], settings, max_new_tokens
    )
    return model_outputs(records, answers, generator)
