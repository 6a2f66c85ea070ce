"""Student answers to evaluation instructions, in AlpacaEval's model-outputs format.

:func:`load_student` loads the student (a ``train.students[]`` entry or a model spec)'s base model (a model spec at a pinned revision, through
:func:`sp2dpo.llm.models.load_causal_lm`) and optionally a trained PEFT LoRA adapter folder
(``models/<student>/<method>/``), merged into the weights for inference. The tokenizer is the
adapter folder's when it holds one (the tokenizer and chat template used in training), else the
base model's; ``train.students[].chat_template`` (a Jinja string or a ``.jinja`` path) overrides
the template. Device: CUDA in bfloat16 when available, else CPU in float32 (the default
everywhere tests run).

:func:`generate_conversations` answers conversations (lists of ``{"role", "content"}`` messages
ending with a user turn; MT-Bench's second turn is ``[user 1, assistant 1, user 2]``) rendered with
the chat template and its generation prompt, one batch at a time, with the token counts and why
each answer stopped; :func:`generate` answers single instructions (one user turn each) and returns
the texts. Prompts are left-padded and batched by ``batch_size``; decoding is greedy when
``temperature == 0``, else sampling seeded with ``seed`` (re-seeded per batch, with
``seed + batch index``, so a run reproduces itself). A conversation longer than the prompt budget
has its last user message cut to its first tokens (:func:`fit_conversation`), never the chat
framing, the earlier turns or the generation prompt, so the rendered prompt has at most
``max_input_tokens`` tokens. The answer is the decoded continuation without special tokens,
stripped of surrounding white space.

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

import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
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
    spec, revision, chat_template = _student_spec(student, revision, chat_template)
    device, dtype = _device_and_dtype(device)
    _check_adapter(adapter)
    model, tokenizer = models.load_causal_lm(spec, revision=revision, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
    tokenizer = _finish_tokenizer(tokenizer, spec, adapter, chat_template)
    model.to(device)
    model.eval()
    return model, tokenizer


def load_tokenizer(
    student: StudentConfig | str,
    adapter: str | Path | None = None,
    *,
    revision: str | None = None,
    chat_template: str | None = None,
) -> Any:
    """The tokenizer :func:`load_student` would give, without loading the weights.

    The server backend needs it to apply the same prompt budget (:func:`fit_conversation`)
    before sending a conversation; the arguments are :func:`load_student`'s.
    """
    from transformers import AutoTokenizer

    spec, revision, chat_template = _student_spec(student, revision, chat_template)
    _check_adapter(adapter)
    location = models.resolve(spec)
    rev = None if models.is_local_spec(spec) or Path(location).exists() else revision
    tokenizer = AutoTokenizer.from_pretrained(location, revision=rev)
    return _finish_tokenizer(tokenizer, spec, adapter, chat_template)


def _student_spec(
    student: StudentConfig | str, revision: str | None, chat_template: str | None
) -> tuple[str, str | None, str | None]:
    """Model spec, revision and chat template of a student entry or a bare spec."""
    if isinstance(student, StudentConfig):
        revision = student.revision if revision is None else revision
        chat_template = student.chat_template if chat_template is None else chat_template
        return student.model, revision, chat_template
    return student, revision, chat_template


def _check_adapter(adapter: str | Path | None) -> None:
    if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter}: not a PEFT adapter folder (no adapter_config.json)")


def _finish_tokenizer(
    tokenizer: Any, spec: str, adapter: str | Path | None, chat_template: str | None
) -> Any:
    """The adapter folder's tokenizer when it holds one, the template override, left padding."""
    from transformers import AutoTokenizer

    if adapter is not None and (Path(adapter) / "tokenizer_config.json").exists():
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
    return tokenizer


def user_turn(text: str) -> list[dict[str, str]]:
    """A conversation of one user message (an AlpacaEval instruction, an IFEval prompt)."""
    return [{"role": "user", "content": text}]


def _last_user(messages: Sequence[Mapping[str, str]]) -> int:
    """Index of the conversation's last message, which must be a user turn to be answered."""
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("a conversation to answer must end with a user message")
    return len(messages) - 1


def fit_conversation(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], max_input_tokens: int
) -> tuple[list[dict[str, str]], list[int]]:
    """The conversation as answered and its prompt's token ids, within ``max_input_tokens``.

    The prompt is the chat template with its generation prompt. When it is too long, the last
    user message keeps its first tokens (cut at a token boundary of its own text): the chat
    framing, the earlier turns and the generation prompt are never cut, so the caller sees the
    exact messages the answer was generated from (the server backend sends those).

    Raises:
        ValueError: the conversation does not end with a user message, or the framing and the
            earlier turns alone exceed ``max_input_tokens``.
    """
    last = _last_user(messages)
    head = [{"role": m["role"], "content": m["content"]} for m in messages[:last]]
    text = messages[last]["content"]

    def with_last(content: str) -> list[dict[str, str]]:
        return [*head, {"role": "user", "content": content}]

    def ids(content: str) -> list[int]:
        rendered = tokenizer.apply_chat_template(
            with_last(content), tokenize=False, add_generation_prompt=True
        )
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]

    full = ids(text)
    if len(full) <= max_input_tokens:
        return with_last(text), full
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)[
        "offset_mapping"
    ]
    keep = max(0, len(offsets) - (len(full) - max_input_tokens))
    while True:  # re-tokenising at the cut may merge differently: shrink until it fits
        cut = text[: offsets[keep - 1][1]] if keep else ""
        out = ids(cut)
        if len(out) <= max_input_tokens or keep == 0:
            break
        keep -= 1
    if len(out) > max_input_tokens:
        earlier = " and the earlier turns" if head else ""
        raise ValueError(
            f"max_input_tokens={max_input_tokens} is smaller than the chat framing{earlier} "
            f"({len(out)} tokens)"
        )
    log.debug("last user message cut to %d tokens to fit %d", keep, max_input_tokens)
    return with_last(cut), out


def render_conversation(
    tokenizer: Any, messages: Sequence[Mapping[str, str]], max_input_tokens: int
) -> list[int]:
    """Token ids of a conversation's prompt within ``max_input_tokens``
    (:func:`fit_conversation`)."""
    return fit_conversation(tokenizer, messages, max_input_tokens)[1]


def render_prompt(tokenizer: Any, instruction: str, max_input_tokens: int) -> list[int]:
    """Token ids of one instruction as a single user turn with the generation prompt, the
    instruction cut to its first tokens when the whole would exceed ``max_input_tokens``."""
    return render_conversation(tokenizer, user_turn(instruction), max_input_tokens)


@dataclasses.dataclass(frozen=True)
class Generation:
    """One generated answer: the text, the prompt and answer token counts, and why it ended
    (``stop``: an end-of-sequence token; ``length``: the token cap)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends an answer (the generation config's and the tokenizer's)."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def generate_conversations(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, str]]],
    settings: GenerationConfig,
    max_new_tokens: int | None = None,
) -> Iterator[list[Generation]]:
    """Answer each conversation, one batch of ``settings.batch_size`` at a time, in order.

    A generator: each batch's answers are yielded as soon as they exist, so a caller can store
    them before the next batch runs (a crash loses at most one batch).

    Args:
        model: a causal LM (from :func:`load_student`).
        tokenizer: its tokenizer, with a chat template.
        conversations: message lists, each ending with the user turn to answer.
        settings: ``eval.generation`` (batch size, greedy or seeded sampling, prompt budget).
        max_new_tokens: overrides ``settings.max_new_tokens`` (IFEval has its own cap).

    Yields:
        The answers of one batch (decoded continuations, special tokens removed, stripped).
    """
    import torch

    cap = settings.max_new_tokens if max_new_tokens is None else max_new_tokens
    pad_id = tokenizer.pad_token_id
    eos = _eos_ids(model, tokenizer)
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
    for index, start in enumerate(range(0, len(conversations), settings.batch_size)):
        batch = conversations[start : start + settings.batch_size]
        rows = [render_conversation(tokenizer, messages, settings.max_input_tokens)
                for messages in batch]
        width = max(len(row) for row in rows)
        input_ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows])
        attention = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        torch.manual_seed(settings.seed + index)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs
            )
        answers = []
        for row, sequence in zip(rows, out[:, width:].tolist(), strict=True):
            ended = next((i for i, token in enumerate(sequence) if token in eos), None)
            answers.append(Generation(
                text=tokenizer.decode(sequence, skip_special_tokens=True).strip(),
                prompt_tokens=len(row),
                completion_tokens=len(sequence) if ended is None else ended + 1,
                finish_reason="length" if ended is None else "stop",
            ))
        yield answers


def generate(
    model: Any,
    tokenizer: Any,
    instructions: Sequence[str],
    settings: GenerationConfig,
    max_new_tokens: int | None = None,
) -> list[str]:
    """Answer each instruction as a single user turn; answers in the order of ``instructions``.

    Args:
        model: a causal LM (from :func:`load_student`).
        tokenizer: its tokenizer, with a chat template.
        instructions: the user messages.
        settings: ``eval.generation`` (batch size, greedy or seeded sampling, prompt budget).
        max_new_tokens: overrides ``settings.max_new_tokens`` (IFEval has its own cap).

    Returns:
        The decoded continuations, special tokens removed, stripped.
    """
    started = time.perf_counter()
    conversations = [user_turn(text) for text in instructions]
    answers = [
        answer.text
        for batch in generate_conversations(
            model, tokenizer, conversations, settings, max_new_tokens
        )
        for answer in batch
    ]
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
